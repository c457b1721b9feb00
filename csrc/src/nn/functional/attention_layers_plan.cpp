// AttentionLayersPlan: what a stack's options imply, worked out once per construction (and cached by the
// ops): the layer kinds and their execution order, each layer's block options and state_dict prefix, the
// parameter layout in x-transformers' names and order, and ALiBi's slopes.
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/positional.h>

#include <string>

namespace xtc::nn::functional {
namespace {

using Specs = std::vector<ParameterSpec>;

void add_norm(Specs& specs, const std::string& prefix, const AttentionLayersOptions& o) {
  switch (o.norm_kind()) {
    case NormKind::LayerNorm:
      specs.push_back({prefix + "gamma", {o.dim()}});
      break;
    case NormKind::RMSNorm:
      specs.push_back({prefix + "g", {o.dim()}});
      break;
    case NormKind::ScaleNorm:
      specs.push_back({prefix + "g", {1}});
      break;
    case NormKind::SimpleRMSNorm:
      break;
    case NormKind::AdaptiveLayerNorm:
    case NormKind::AdaptiveRMSNorm:
      specs.push_back({prefix + "to_gamma.weight", {o.dim(), o.conditioning_width()}});
      break;
    case NormKind::DynamicTanh:
      specs.push_back({prefix + "pre_tanh_scale", {}});
      specs.push_back({prefix + "gamma", {o.dim()}});
      specs.push_back({prefix + "beta", {o.dim()}});
      break;
  }
}

// Attention's own parameters come first (registration order), then its linear layers.
void add_attention(Specs& specs, const std::string& p, const AttentionOptions& a,
                   const AttentionLayersOptions& o, bool learned_value_mix) {
  const int64_t h = o.heads(), hk = o.resolved_kv_heads(a), dh = a.dim_head(),
                dv = a.value_dim_head().value_or(dh);
  if (a.qk_norm() && a.qk_norm_dim_scale()) {
    specs.push_back({p + "qk_norm_q_scale", {h, 1, dh}});
    specs.push_back({p + "qk_norm_k_scale", {hk, 1, dh}});
  }
  if (a.head_scale()) specs.push_back({p + "head_scale_params", {1, h, 1, 1}});
  if (a.num_mem_kv() > 0) {
    specs.push_back({p + "mem_k", {hk, a.num_mem_kv(), dh}});
    specs.push_back({p + "mem_v", {hk, a.num_mem_kv(), dh}});
  }
  specs.push_back({p + "to_q.weight", {h * dh, o.dim()}});
  const int64_t dim_kv = a.dim_context().value_or(o.dim());
  specs.push_back({p + "to_k.weight", {hk * dh, dim_kv}});
  specs.push_back({p + "to_v.weight", {hk * dv, dim_kv}});
  if (a.gate_values()) specs.push_back({p + "to_v_gate.weight", {h * dv, o.dim()}});
  if (a.qk_rmsnorm()) specs.push_back({p + "q_rmsnorm.gamma", {h, 1, dh}});
  if (a.qk_rmsnorm() || a.k_rmsnorm()) specs.push_back({p + "k_rmsnorm.gamma", {hk, 1, dh}});
  if (a.value_rmsnorm()) specs.push_back({p + "value_rmsnorm.gamma", {h, 1, dh}});
  if (a.head_learned_sink())
    specs.push_back({p + "attend.head_attn_sink", {h}});  // Attend's own parameter first
  if (a.pre_talking_heads()) specs.push_back({p + "attend.pre_softmax_talking_heads.weight", {h, h, 1, 1}});
  if (a.post_talking_heads()) specs.push_back({p + "attend.post_softmax_talking_heads.weight", {h, h, 1, 1}});
  if (a.pre_scale_post_talking_heads())
    specs.push_back({p + "attend.pre_scale_post_talking_heads.weight", {h, h, 1, 1}});
  if (learned_value_mix) {
    specs.push_back({p + "to_value_residual_mix.0.weight", {h, o.dim()}});
    specs.push_back({p + "to_value_residual_mix.0.bias", {h}});
  }
  if (a.on_attn())
    specs.push_back({p + "to_out.0.weight", {2 * o.dim(), h * dv}});
  else if (h > 1)
    specs.push_back({p + "to_out.weight", {o.dim(), h * dv}});
}

void add_feed_forward(Specs& specs, const std::string& p, const FeedForwardOptions& f,
                      const AttentionLayersOptions& o) {
  const int64_t inner = static_cast<int64_t>(o.dim() * f.mult());
  if (f.glu()) {
    if (f.glu_mult_bias()) specs.push_back({p + "ff.0.mult_bias", {inner}});
    specs.push_back({p + "ff.0.proj.weight", {2 * inner, o.dim()}});
    specs.push_back({p + "ff.0.proj.bias", {2 * inner}});
  } else {
    specs.push_back({p + "ff.0.0.weight", {inner, o.dim()}});
    if (!f.no_bias()) specs.push_back({p + "ff.0.0.bias", {inner}});
  }
  if (f.post_act_ln()) specs.push_back({p + "ff.1.gamma", {inner}});
  const std::string out = p + (f.post_act_ln() ? "ff.3." : "ff.2.");
  specs.push_back({out + "weight", {o.dim(), inner}});
  if (!f.no_bias()) specs.push_back({out + "bias", {o.dim()}});
}

void add_residual(Specs& specs, const std::string& p, const AttentionLayersOptions& o) {
  if (o.scale_residual()) specs.push_back({p + "residual_scale", {o.dim()}});
  if (o.residual_kind() == ResidualKind::GRUGating) {
    const int64_t d = o.dim();
    specs.push_back({p + "gru.weight_ih", {3 * d, d}});
    specs.push_back({p + "gru.weight_hh", {3 * d, d}});
    specs.push_back({p + "gru.bias_ih", {3 * d}});
    specs.push_back({p + "gru.bias_hh", {3 * d}});
  }
}

// Where the block of a layer sits: LayerScale adds `gamma` and a `.fn` level, ShiftTokens and macaron's Scale
// a
// `.fn` level each (x-transformers wraps layer -> Scale -> ShiftTokens -> LayerScale).
std::string layer_block_prefix(size_t index, char type, const AttentionLayersOptions& o) {
  std::string p = "layers." + std::to_string(index) + ".1.";
  if (o.use_layerscale() || o.use_adaptive_layerscale()) p += "fn.";
  if (o.layer_shift_tokens(index) > 0) p += "fn.";
  if (o.macaron() && type == 'f') p += "fn.";
  return p;
}

Specs layout(const AttentionLayersOptions& o, const std::vector<char>& types) {
  Specs specs;
  bool first_self_attention = true;
  for (size_t i = 0; i < types.size(); ++i) {
    const std::string layer = "layers." + std::to_string(i) + ".";
    if (o.pre_norm()) add_norm(specs, layer + "0.0.", o);
    if (o.sandwich_norm()) add_norm(specs, layer + "0.1.", o);
    if (o.applies_post_norm()) add_norm(specs, layer + "0.2.", o);
    if (o.use_layerscale()) specs.push_back({layer + "1.gamma", {o.dim()}});
    const std::string block = layer_block_prefix(i, types[i], o);
    if (types[i] == 'f') {
      add_feed_forward(specs, block, o.layer_feed_forward(i), o);
    } else {
      // Self-attention layers after the first learn their value-residual mix.
      const bool learned_mix = types[i] == 'a' && !first_self_attention && o.add_value_residual() &&
                               o.learned_value_residual_mix();
      add_attention(specs, block, o.layer_attention(i), o, learned_mix);
      if (types[i] == 'a') first_self_attention = false;
    }
    if (o.use_adaptive_layerscale()) {
      // AdaptiveLayerScale registers its wrapped block first, then to_gamma.
      specs.push_back({layer + "1.to_gamma.weight", {o.dim(), o.conditioning_width()}});
      specs.push_back({layer + "1.to_gamma.bias", {o.dim()}});
    }
    add_residual(specs, layer + "2.", o);
  }
  if (o.uses_rotary())
    specs.push_back({"rotary_pos_emb.inv_freq", {o.resolved_rotary_dim() / 2}, /*buffer=*/true});
  if (o.rotary_xpos())
    specs.push_back({"rotary_pos_emb.scale", {o.resolved_rotary_dim() / 2}, /*buffer=*/true});
  if (o.rel_pos_bias())
    specs.push_back({"rel_pos.relative_attention_bias.weight", {o.rel_pos_num_buckets(), o.heads()}});
  if (o.dynamic_pos_bias()) {
    // x-transformers' DynamicPositionBias MLP; its Sequentials drop the None norms, so names shift with
    // `norm`.
    const int64_t d = o.dim() / 4, depth = o.dynamic_pos_bias_mlp_depth();
    specs.push_back({"rel_pos.mlp.0.0.weight", {d, 1}});
    specs.push_back({"rel_pos.mlp.0.0.bias", {d}});
    if (o.dynamic_pos_bias_norm()) specs.push_back({"rel_pos.mlp.0.1.gamma", {d}});
    for (int64_t l = 1; l < depth; ++l) {
      const std::string p = "rel_pos.mlp." + std::to_string(l) + ".";
      specs.push_back({p + "0.weight", {d, d}});
      specs.push_back({p + "0.bias", {d}});
      if (o.dynamic_pos_bias_norm()) {
        specs.push_back({p + "1.weight", {d}});
        specs.push_back({p + "1.bias", {d}});
      }
    }
    const std::string last = "rel_pos.mlp." + std::to_string(depth) + ".";
    specs.push_back({last + "weight", {o.heads(), d}});
    specs.push_back({last + "bias", {o.heads()}});
  }
  if (o.needs_condition() && o.adaptive_condition_mlp())
    specs.push_back({"adaptive_mlp.0.weight", {o.conditioning_width(), o.resolved_dim_condition()}});
  if (o.has_final_norm()) add_norm(specs, "final_norm.", o);
  const auto sources = o.unet_skip_sources();
  for (size_t i = 0; i < sources.size(); ++i)
    if (sources[i] >= 0)
      specs.push_back({"skip_combines." + std::to_string(i) + ".combine.weight", {o.dim(), 2 * o.dim()}});
  if (o.reinject_input()) specs.push_back({"reinject_input_proj.weight", {o.dim(), o.dim()}});
  if (o.learned_reinject_input_gate()) specs.push_back({"learned_reinject_input_gate.weight", {1, o.dim()}});
  return specs;
}

}  // namespace

AttentionLayersPlan::AttentionLayersPlan(AttentionLayersOptions options) : options_(std::move(options)) {
  options_.validate();
  layer_types_ = options_.layer_types();
  execution_order_ = options_.execution_order();
  for (size_t i = 0; i < layer_types_.size(); ++i) {
    const bool feed_forward = layer_types_[i] == 'f';
    layer_attention_.push_back(feed_forward ? options_.attn() : options_.layer_attention(i));
    layer_feed_forward_.push_back(feed_forward ? options_.layer_feed_forward(i) : options_.ff());
  }
  for (const int64_t i : execution_order_)
    if (layer_types_[i] != 'f') executed_attention_types_.push_back(layer_types_[i]);
  for (size_t i = 0; i < layer_types_.size(); ++i)
    block_prefixes_.push_back(layer_block_prefix(i, layer_types_[i], options_));
  parameters_ = layout(options_, layer_types_);
  for (size_t i = 0; i < parameters_.size(); ++i)
    index_.emplace(parameters_[i].name, static_cast<int64_t>(i));
  if (options_.alibi_pos_bias()) {
    alibi_slopes_ = geometric_alibi_slopes(options_.alibi_num_heads().value_or(options_.heads()));
    alibi_slopes_.resize(options_.heads(), 0.0);  // heads past alibi_num_heads get no bias
  }
}

int64_t AttentionLayersPlan::index(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

}  // namespace xtc::nn::functional
