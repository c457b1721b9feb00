#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/packing.h>
#include <xtc/nn/functional/residual.h>
#include "src/symbolic_sizes.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace xtc::nn::functional {
namespace {

// ------------------------------------------------------------------------------------------------ layout

using Specs = std::vector<ParameterSpec>;

void add_norm(Specs& specs, const std::string& prefix, const AttentionLayersOptions& o) {
  switch (o.norm_kind()) {
    case NormKind::LayerNorm: specs.push_back({prefix + "gamma", {o.dim()}}); break;
    case NormKind::RMSNorm: specs.push_back({prefix + "g", {o.dim()}}); break;
    case NormKind::ScaleNorm: specs.push_back({prefix + "g", {1}}); break;
    case NormKind::SimpleRMSNorm: break;
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
void add_attention(Specs& specs, const std::string& p, const AttentionOptions& a, const AttentionLayersOptions& o,
                   bool learned_value_mix) {
  const int64_t h = o.heads(), hk = o.resolved_kv_heads(a), dh = a.dim_head(), dv = a.value_dim_head().value_or(dh);
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
  if (a.head_learned_sink()) specs.push_back({p + "attend.head_attn_sink", {h}});  // Attend's own parameter first
  if (a.pre_talking_heads()) specs.push_back({p + "attend.pre_softmax_talking_heads.weight", {h, h, 1, 1}});
  if (a.post_talking_heads()) specs.push_back({p + "attend.post_softmax_talking_heads.weight", {h, h, 1, 1}});
  if (a.pre_scale_post_talking_heads())
    specs.push_back({p + "attend.pre_scale_post_talking_heads.weight", {h, h, 1, 1}});
  if (learned_value_mix) {
    specs.push_back({p + "to_value_residual_mix.0.weight", {h, o.dim()}});
    specs.push_back({p + "to_value_residual_mix.0.bias", {h}});
  }
  if (a.on_attn()) specs.push_back({p + "to_out.0.weight", {2 * o.dim(), h * dv}});
  else if (h > 1) specs.push_back({p + "to_out.weight", {o.dim(), h * dv}});
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

// Where the block of a layer sits: LayerScale adds `gamma` and a `.fn` level, ShiftTokens and macaron's Scale a
// `.fn` level each (x-transformers wraps layer -> Scale -> ShiftTokens -> LayerScale).
std::string block_prefix(size_t index, char type, const AttentionLayersOptions& o) {
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
    const std::string block = block_prefix(i, types[i], o);
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
  if (o.uses_rotary()) specs.push_back({"rotary_pos_emb.inv_freq", {o.resolved_rotary_dim() / 2}, /*buffer=*/true});
  if (o.rotary_xpos()) specs.push_back({"rotary_pos_emb.scale", {o.resolved_rotary_dim() / 2}, /*buffer=*/true});
  if (o.rel_pos_bias())
    specs.push_back({"rel_pos.relative_attention_bias.weight", {o.rel_pos_num_buckets(), o.heads()}});
  if (o.dynamic_pos_bias()) {
    // x-transformers' DynamicPositionBias MLP; its Sequentials drop the None norms, so names shift with `norm`.
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

// x-transformers' AlibiPositionalBias._get_slopes: a geometric series, interleaved for non-powers of 2.
std::vector<double> geometric_alibi_slopes(int64_t heads) {
  const auto power_of_2 = [](int64_t n) {
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3)));
    std::vector<double> s;
    for (int64_t i = 0; i < n; ++i) s.push_back(start * std::pow(start, static_cast<double>(i)));
    return s;
  };
  const double log2_heads = std::log2(static_cast<double>(heads));
  if (log2_heads == std::floor(log2_heads)) return power_of_2(heads);
  const int64_t closest = int64_t(1) << static_cast<int64_t>(std::floor(log2_heads));
  auto slopes = power_of_2(closest);
  const auto extra = power_of_2(2 * closest);
  for (int64_t i = 0; i < 2 * closest && static_cast<int64_t>(slopes.size()) < heads; i += 2) slopes.push_back(extra[i]);
  return slopes;
}

// ------------------------------------------------------------------------------------------------ forward

// The parameters of one call, checked against the plan and fetched by state_dict name.
class Parameters {
 public:
  Parameters(const AttentionLayersPlan& plan, at::TensorList params, const at::Tensor& x) : plan_(plan), params_(params) {
    const auto& specs = plan.parameters();
    TORCH_CHECK_VALUE(params.size() == specs.size(), "AttentionLayers: expected ", specs.size(),
                      " parameters for these options, got ", params.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& p = params[i];
      TORCH_CHECK_VALUE(p.sizes() == c10::IntArrayRef(specs[i].shape), "AttentionLayers: expected ",
                        specs[i].buffer ? "buffer " : "parameter ",
                        specs[i].name, " of shape ", c10::IntArrayRef(specs[i].shape), ", got ", p.sizes());
      TORCH_CHECK_VALUE(p.scalar_type() == x.scalar_type(), "AttentionLayers: expected x of the parameters' dtype ",
                        p.scalar_type(), ", got ", x.scalar_type(), " (parameter ", specs[i].name, ")");
      TORCH_CHECK_VALUE(p.device() == x.device(), "AttentionLayers: expected x on the parameters' device ", p.device(),
                        ", got ", x.device(), " (parameter ", specs[i].name, ")");
    }
  }

  at::Tensor get(const std::string& name) const {
    const int64_t i = plan_.index(name);
    return i < 0 ? at::Tensor() : params_[i];
  }

 private:
  const AttentionLayersPlan& plan_;
  at::TensorList params_;
};

void check_sequence(const char* name, const at::Tensor& t, const c10::SymInt& batch, int64_t dim,
                    const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "AttentionLayers: expected a dense (strided) ", name, ", got layout ",
                    t.layout());
  TORCH_CHECK_VALUE(t.dim() == 3 && t.sym_size(0) == batch && t.sym_size(2) == dim, "AttentionLayers: expected ", name,
                    " of shape (", batch, ", seq, ", dim, "), got ", t.sym_sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "AttentionLayers: expected ", name, " of x's dtype ",
                    x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "AttentionLayers: expected ", name, " on x's device ", x.device(),
                    ", got ", t.device());
}

// A (b, length) key mask; `length` is the sequence's, or with a cache the cached and new keys together.
void check_mask(const char* name, const std::optional<at::Tensor>& mask, const at::Tensor& seq,
                std::optional<c10::SymInt> length = std::nullopt) {
  if (!mask.has_value()) return;
  const c10::SymInt keys = length.value_or(seq.sym_size(1));
  TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "AttentionLayers: expected ", name,
                    " of dtype bool (True = keep), got ", mask->scalar_type());
  TORCH_CHECK_VALUE(mask->dim() == 2 && mask->sym_size(0) == seq.sym_size(0) && mask->sym_size(1) == keys,
                    "AttentionLayers: expected ", name, " of shape (", seq.sym_size(0), ", ", keys, ")",
                    length.has_value() ? " (cached and new keys)" : "", ", got ", mask->sym_sizes());
  TORCH_CHECK_VALUE(mask->device() == seq.device(), "AttentionLayers: expected ", name, " on x's device ",
                    seq.device(), ", got ", mask->device());
}

void check_inputs(const at::Tensor& x, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& context,
                  const std::optional<at::Tensor>& context_mask, const AttentionLayersOptions& o,
                  std::optional<c10::SymInt> key_length) {
  TORCH_CHECK_VALUE(x.layout() == at::kStrided, "AttentionLayers: expected a dense (strided) x, got layout ",
                    x.layout());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.sym_size(2) == o.dim(), "AttentionLayers: expected x of shape (batch, seq, ", o.dim(),
                    "), got ", x.sym_sizes());
  TORCH_CHECK_VALUE(x.is_floating_point(), "AttentionLayers: expected x of a floating dtype, got ", x.scalar_type());
  check_mask("mask", mask, x, key_length);
  TORCH_CHECK_VALUE(context.has_value() == o.cross_attend(),
                    o.cross_attend() ? "AttentionLayers: context must be passed in when cross_attend is set"
                                     : "AttentionLayers: context was passed in, but cross_attend is not set");
  TORCH_CHECK_VALUE(!context_mask.has_value() || context.has_value(),
                    "AttentionLayers: context_mask was passed in without context");
  if (context.has_value()) {
    check_sequence("context", *context, x.sym_size(0), o.cross_attn().dim_context().value_or(o.dim()), x);
    check_mask("context_mask", context_mask, *context);
  }
}

// x-transformers' attn_mask shapes (i, j), (h, i, j) and (b|1, h|1, i, j), as a 4-D bool mask.
std::optional<at::Tensor> normalized_attn_mask(const std::optional<at::Tensor>& attn_mask, const at::Tensor& x,
                                               int64_t heads) {
  if (!attn_mask.has_value()) return std::nullopt;
  const auto& a = *attn_mask;
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  TORCH_CHECK_VALUE(a.scalar_type() == at::kBool, "AttentionLayers: expected attn_mask of dtype bool (True = may "
                    "attend), got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.device() == x.device(), "AttentionLayers: expected attn_mask on x's device ", x.device(),
                    ", got ", a.device());
  TORCH_CHECK_VALUE(a.dim() >= 2 && a.dim() <= 4, "AttentionLayers: expected attn_mask of shape (", n, ", ", n,
                    "), (heads, ", n, ", ", n, ") or (batch, heads, ", n, ", ", n, "), got ", a.sym_sizes());
  const auto full = a.dim() == 2 ? a.unsqueeze(0).unsqueeze(0) : a.dim() == 3 ? a.unsqueeze(0) : a;
  TORCH_CHECK_VALUE(full.sym_size(2) == n && full.sym_size(3) == n &&
                        (full.sym_size(1) == 1 || full.sym_size(1) == heads) &&
                        (full.sym_size(0) == 1 || full.sym_size(0) == b),
                    "AttentionLayers: expected attn_mask of shape (", n, ", ", n, "), (", heads, ", ", n, ", ", n,
                    ") or (", b, " or 1, ", heads, " or 1, ", n, ", ", n, "), got ", a.sym_sizes());
  return full;
}

// x-transformers' ShiftTokens: feature segments shifted along the sequence by -s..s (0..s when causal), zeros
// shifted in; positions the mask drops are zeroed first (attention layers only, as there the mask is passed).
at::Tensor shift_tokens(const at::Tensor& x, int64_t s, bool causal, const std::optional<at::Tensor>& mask) {
  std::vector<int64_t> shifts;
  for (int64_t amount = causal ? 0 : -s; amount <= s; ++amount) shifts.push_back(amount);
  const int64_t per_shift = xtc::detail::static_size(x, -1) / static_cast<int64_t>(shifts.size());
  const c10::SymInt n = x.sym_size(1);
  const auto position = at::arange(n, x.options().dtype(at::kLong));
  auto pieces = x.split(per_shift, -1);
  for (size_t i = 0; i < shifts.size() && i < pieces.size(); ++i) {
    if (shifts[i] == 0) continue;
    auto piece = mask.has_value() ? pieces[i].masked_fill(mask->logical_not().unsqueeze(-1), 0) : pieces[i];
    // Position t takes t - shift, zero where that falls outside the sequence. A gather keeps every intermediate
    // at length n (slices of n - shift would make torch.compile guard on their sizes).
    const auto source = position - shifts[i];
    const auto outside = source.lt(0).logical_or(source.ge(n));
    pieces[i] = piece.index_select(1, source.clamp(0, n - 1)).masked_fill(outside.view({1, -1, 1}), 0);
  }
  return at::cat(pieces, -1);
}

// x-transformers' attn_bias: (h, i, j) or (b|1, h, i, j), added to self-attention's logits; as one (b|1, h, n, n)
// tensor. x-transformers refuses it beside a position-bias module (ALiBi, T5, dynamic).
at::Tensor normalized_attn_bias(const at::Tensor& bias, const at::Tensor& x, const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(!(o.alibi_pos_bias() || o.rel_pos_bias() || o.dynamic_pos_bias()),
                    "AttentionLayers: attn_bias clashes with alibi_pos_bias, rel_pos_bias and dynamic_pos_bias");
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  const int64_t h = o.heads();
  TORCH_CHECK_VALUE(bias.scalar_type() == x.scalar_type() && bias.device() == x.device(),
                    "AttentionLayers: expected attn_bias of x's dtype ", x.scalar_type(), " on ", x.device(), ", got ",
                    bias.scalar_type(), " on ", bias.device());
  const auto full = bias.dim() == 3 ? bias.unsqueeze(0) : bias;
  TORCH_CHECK_VALUE(full.dim() == 4 && (full.sym_size(0) == 1 || full.sym_size(0) == b) && full.sym_size(1) == h &&
                        full.sym_size(2) == n && full.sym_size(3) == n,
                    "AttentionLayers: expected attn_bias of shape (", h, ", ", n, ", ", n, ") or (", b, " or 1, ", h,
                    ", ", n, ", ", n, "), got ", bias.sym_sizes());
  return full;
}

// Transformer-XL memories: one (b, M, dim) per self-attention layer at most, masks (b, M) bool.
void check_memories(const std::vector<at::Tensor>& mems, const std::vector<std::optional<at::Tensor>>& mem_masks,
                    const at::Tensor& x, const AttentionLayersPlan& plan, bool dense_pattern) {
  const auto& o = plan.options();
  if (mems.empty()) {
    TORCH_CHECK_VALUE(mem_masks.empty(), "AttentionLayers: mem_masks were passed in without mems");
    return;
  }
  TORCH_CHECK_VALUE(!dense_pattern, "AttentionLayers: mems are not supported with attn_mask or attn_bias (their "
                    "(query, key) tensors do not cover memory keys)");
  if (o.rel_pos_bias() || o.dynamic_pos_bias()) {
    // One (query, key) bias serves every layer, so every self-attention layer needs a memory of one length.
    const auto& types = plan.executed_attention_types();
    const auto self_layers = static_cast<size_t>(std::count(types.begin(), types.end(), 'a'));
    bool same = mems.size() == self_layers;
    for (const auto& mem : mems) same = same && mem.dim() == 3 && mem.sym_size(1) == mems.front().sym_size(1);
    TORCH_CHECK_VALUE(same, "AttentionLayers: with rel_pos_bias or dynamic_pos_bias, expected one mem per "
                      "self-attention layer (", self_layers, "), all of one length, got ", mems.size());
  }
  TORCH_CHECK_VALUE(mem_masks.size() <= mems.size(), "AttentionLayers: expected at most one mem_mask per mem, got ",
                    mem_masks.size(), " for ", mems.size());
  for (size_t i = 0; i < mems.size(); ++i) {
    const auto& mem = mems[i];
    TORCH_CHECK_VALUE(mem.dim() == 3 && mem.sym_size(0) == x.sym_size(0) && mem.size(2) == o.dim() &&
                          mem.scalar_type() == x.scalar_type() && mem.device() == x.device(),
                      "AttentionLayers: expected mems[", i, "] of shape (", x.sym_size(0), ", mem_len, ", o.dim(),
                      ") like x (", x.scalar_type(), " on ", x.device(), "), got ", mem.sym_sizes(), " ",
                      mem.scalar_type(), " on ", mem.device());
    TORCH_CHECK_VALUE(!o.uses_rotary() || mem.sym_size(1) == mems.front().sym_size(1),
                      "AttentionLayers: with rotary_pos_emb every mem must have the first one's length (",
                      mems.front().sym_size(1), "), got ", mem.sym_size(1), " for mems[", i, "]");
    if (i < mem_masks.size() && mem_masks[i].has_value()) {
      const auto& m = *mem_masks[i];
      TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.sym_size(0) == mem.sym_size(0) &&
                            m.sym_size(1) == mem.sym_size(1) && m.device() == x.device(),
                        "AttentionLayers: expected mem_masks[", i, "] of shape (", mem.sym_size(0), ", ",
                        mem.sym_size(1), ") and dtype bool, got ", m.sym_sizes(), " ", m.scalar_type());
    }
  }
}

// Incremental decoding: x-transformers allows it for causal stacks without attn_mask; we also refuse what would
// silently differ from a full forward (shift_tokens, attn_bias, layer dropout in training). Transformer-XL
// memories stay in front of the cached keys (x-transformers' XL generation). The cache holds
// one (k, v) pair per executed attention layer, (b, hk, N, dh) and (b, hk, N, dv); returns the cached length of
// the self-attention keys.
int64_t check_cache(const std::vector<at::Tensor>& cache_kv, const at::Tensor& x, const AttentionLayersInputs& in,
                    const AttentionLayersPlan& plan, bool training) {
  const auto& o = plan.options();
  TORCH_CHECK_VALUE(x.dim() == 3, "AttentionLayers: expected x of shape (batch, seq, ", o.dim(), "), got ",
                    x.sym_sizes());
  TORCH_CHECK_VALUE(o.causal(), "AttentionLayers: a cache (incremental decoding) needs a causal stack (Decoder)");
  TORCH_CHECK_VALUE(!in.attn_mask.has_value() && !in.attn_bias.has_value(),
                    "AttentionLayers: a cache cannot be combined with attn_mask or attn_bias");
  TORCH_CHECK_VALUE(!o.any_shift_tokens(), "AttentionLayers: a cache cannot be combined with shift_tokens "
                    "(x-transformers would shift within the new tokens only)");
  TORCH_CHECK_VALUE(!(training && o.layer_dropout() > 0),
                    "AttentionLayers: a cache cannot be combined with layer_dropout in training");
  const std::string& types = plan.executed_attention_types();
  TORCH_CHECK_VALUE(cache_kv.size() == 2 * types.size(), "AttentionLayers: expected a cache of ", types.size(),
                    " (k, v) pairs, one per executed attention layer, got ", cache_kv.size(), " tensors");
  std::vector<size_t> attention_layers;  // the executed attention layers' indices, in order
  for (const int64_t i : plan.execution_order())
    if (plan.layer_types()[i] != 'f') attention_layers.push_back(static_cast<size_t>(i));
  int64_t past = -1;
  for (size_t l = 0; l < types.size(); ++l) {
    const auto& a = plan.layer_attention(attention_layers[l]);
    const int64_t hk = o.resolved_kv_heads(a), dh = a.dim_head(), dv = a.value_dim_head().value_or(dh);
    const auto &k = cache_kv[2 * l], &v = cache_kv[2 * l + 1];
    const int64_t len = k.dim() == 4 ? xtc::detail::static_size(k, 2) : -1;
    // Any one floating dtype: under autocast the cached keys are bf16 beside a float32 x.
    TORCH_CHECK_VALUE(k.dim() == 4 && k.sym_size(0) == x.sym_size(0) && k.sym_size(1) == hk && k.sym_size(3) == dh &&
                          v.dim() == 4 && v.sym_size(0) == x.sym_size(0) && v.sym_size(1) == hk && v.sym_size(2) == len &&
                          v.sym_size(3) == dv && k.is_floating_point() && v.scalar_type() == k.scalar_type() &&
                          k.device() == x.device() && v.device() == x.device(),
                      "AttentionLayers: expected cached (k, v) of attention layer ", l, " of shapes (", x.sym_size(0),
                      ", ", hk, ", N, ", dh, ") and (", x.sym_size(0), ", ", hk, ", N, ", dv,
                      "), of one floating dtype, on x's device, got ", k.sym_sizes(), " ", k.scalar_type(), " and ",
                      v.sym_sizes(), " ", v.scalar_type(), " on ", k.device());
    if (types[l] == 'a') {
      TORCH_CHECK_VALUE(past < 0 || past == len, "AttentionLayers: cached keys of different lengths, ", past, " and ",
                        len);
      past = len;
    }
  }
  return std::max<int64_t>(past, 0);
}

AttentionWeights attention_weights(const Parameters& p, const std::string& prefix) {
  AttentionWeights w;
  w.to_q = p.get(prefix + "to_q.weight");
  w.to_k = p.get(prefix + "to_k.weight");
  w.to_v = p.get(prefix + "to_v.weight");
  w.to_v_gate = p.get(prefix + "to_v_gate.weight");
  w.to_out = p.get(prefix + "to_out.weight");
  w.to_out_glu = p.get(prefix + "to_out.0.weight");
  w.pre_talking_heads = p.get(prefix + "attend.pre_softmax_talking_heads.weight");
  w.post_talking_heads = p.get(prefix + "attend.post_softmax_talking_heads.weight");
  w.pre_scale_post_talking_heads = p.get(prefix + "attend.pre_scale_post_talking_heads.weight");
  w.value_mix_weight = p.get(prefix + "to_value_residual_mix.0.weight");
  w.value_mix_bias = p.get(prefix + "to_value_residual_mix.0.bias");
  w.head_scale = p.get(prefix + "head_scale_params");
  w.mem_k = p.get(prefix + "mem_k");
  w.mem_v = p.get(prefix + "mem_v");
  w.qk_q_scale = p.get(prefix + "qk_norm_q_scale");
  w.qk_k_scale = p.get(prefix + "qk_norm_k_scale");
  w.head_attn_sink = p.get(prefix + "attend.head_attn_sink");
  w.q_rmsnorm = p.get(prefix + "q_rmsnorm.gamma");
  w.k_rmsnorm = p.get(prefix + "k_rmsnorm.gamma");
  w.value_rmsnorm = p.get(prefix + "value_rmsnorm.gamma");
  return w;
}

FeedForwardWeights feed_forward_weights(const Parameters& p, const std::string& prefix, const FeedForwardOptions& f) {
  FeedForwardWeights w;
  if (f.glu()) {
    w.proj_in_weight = p.get(prefix + "ff.0.proj.weight");
    w.proj_in_bias = p.get(prefix + "ff.0.proj.bias");
    w.glu_mult_bias = p.get(prefix + "ff.0.mult_bias");
  } else {
    w.proj_in_weight = p.get(prefix + "ff.0.0.weight");
    w.proj_in_bias = p.get(prefix + "ff.0.0.bias");
  }
  w.post_act_gamma = p.get(prefix + "ff.1.gamma");
  const std::string out = prefix + (f.post_act_ln() ? "ff.3." : "ff.2.");
  w.proj_out_weight = p.get(out + "weight");
  w.proj_out_bias = p.get(out + "bias");
  return w;
}

ResidualWeights residual_weights(const Parameters& p, const std::string& prefix) {
  return {p.get(prefix + "residual_scale"), p.get(prefix + "gru.weight_ih"), p.get(prefix + "gru.weight_hh"),
          p.get(prefix + "gru.bias_ih"), p.get(prefix + "gru.bias_hh")};
}

NormWeights norm_weights(const Parameters& p, const std::string& prefix, NormKind kind) {
  if (kind == NormKind::AdaptiveLayerNorm || kind == NormKind::AdaptiveRMSNorm)
    return {p.get(prefix + "to_gamma.weight")};
  if (kind == NormKind::DynamicTanh)
    return {p.get(prefix + "gamma"), p.get(prefix + "pre_tanh_scale"), p.get(prefix + "beta")};
  return {kind == NormKind::LayerNorm ? p.get(prefix + "gamma") : p.get(prefix + "g")};
}

AttentionConfig attention_config(const AttentionOptions& a, const AttentionLayersOptions& o, bool causal,
                                 const at::Tensor& slopes, const at::Tensor& rotary_freqs) {
  return AttentionConfig{o.heads(), o.resolved_kv_heads(a), a.dim_head(), a.value_dim_head().value_or(a.dim_head()),
                         causal, a, slopes, rotary_freqs};
}

// A layer's config under a layer schedule: the stack's (positions, biases, causality) with its own options.
AttentionConfig with_options(AttentionConfig config, const AttentionOptions& a, const AttentionLayersOptions& o) {
  config.kv_heads = o.resolved_kv_heads(a);
  config.dim_head = a.dim_head();
  config.value_dim_head = a.value_dim_head().value_or(a.dim_head());
  config.options = a;
  return config;
}

// x-transformers' RelativePositionBias (T5): bucketed relative positions -> learned per-head bias, (1, h, i, j);
// the i queries are the last of the j key positions.
at::Tensor t5_position_bias(const at::Tensor& weight, const c10::SymInt& i, const c10::SymInt& j,
                            const AttentionLayersOptions& o) {
  const auto key_pos = at::arange(j, weight.options().dtype(at::kLong));
  auto distance = key_pos.narrow_symint(0, j - i, i).unsqueeze(1) - key_pos.unsqueeze(0);  // query - key
  int64_t buckets = o.rel_pos_num_buckets();
  at::Tensor bucket = at::zeros_like(distance);
  if (!o.causal()) {
    buckets /= 2;
    bucket = bucket + (distance < 0).to(at::kLong) * buckets;
    distance = distance.abs();
  } else {
    distance = distance.clamp_min(0);
  }
  const int64_t max_exact = buckets / 2;
  const auto is_small = distance < max_exact;
  auto large = max_exact + (at::log(distance.to(at::kFloat) / static_cast<double>(max_exact)) /
                            std::log(static_cast<double>(o.rel_pos_max_distance()) / max_exact) *
                            static_cast<double>(buckets - max_exact))
                               .to(at::kLong);
  large = at::minimum(large, at::full_like(large, buckets - 1));
  bucket = bucket + at::where(is_small, distance, large);
  const double scale = std::sqrt(static_cast<double>(o.attn().dim_head()));
  return (at::embedding(weight, bucket).permute({2, 0, 1}) * scale).unsqueeze(0);
}

// x-transformers' DynamicPositionBias: an MLP over the 2j - 1 relative distances, gathered to (1, h, i, j) for
// the last i of j positions.
at::Tensor dynamic_position_bias(const Parameters& p, const c10::SymInt& i, const c10::SymInt& j, const at::Tensor& like,
                                 const AttentionLayersOptions& o) {
  auto pos = at::arange(1 - j, j, like.options()).unsqueeze(1);
  if (o.dynamic_pos_bias_log_distance()) pos = at::sign(pos) * at::log(pos.abs() + 1);
  const int64_t depth = o.dynamic_pos_bias_mlp_depth();
  pos = at::linear(pos, p.get("rel_pos.mlp.0.0.weight"), p.get("rel_pos.mlp.0.0.bias"));
  if (o.dynamic_pos_bias_norm()) pos = layer_norm(pos, p.get("rel_pos.mlp.0.1.gamma"), /*unit_offset=*/false);
  pos = at::silu(pos);
  for (int64_t l = 1; l < depth; ++l) {
    const std::string prefix = "rel_pos.mlp." + std::to_string(l) + ".";
    pos = at::linear(pos, p.get(prefix + "0.weight"), p.get(prefix + "0.bias"));
    if (o.dynamic_pos_bias_norm())
      pos = at::layer_norm_symint(pos, {pos.sym_size(-1)}, p.get(prefix + "1.weight"), p.get(prefix + "1.bias"), 1e-5);
    pos = at::silu(pos);
  }
  const std::string last = "rel_pos.mlp." + std::to_string(depth) + ".";
  pos = at::linear(pos, p.get(last + "weight"), p.get(last + "bias"));  // (2n - 1, h)
  const auto index = at::arange(j, like.options().dtype(at::kLong));
  const auto indices = index.narrow_symint(0, j - i, i).unsqueeze(1) - index.unsqueeze(0) + (j - 1);
  return pos.index({indices}).permute({2, 0, 1}).unsqueeze(0);
}

// x-transformers' RotaryEmbedding.forward over integer positions t, (N) or (b, N): (N, r) or (b, N, r) angles,
// each frequency twice in a row.
at::Tensor rotary_angles(const at::Tensor& inv_freq, const at::Tensor& t, double interpolation_factor) {
  const auto freqs = t.to(inv_freq.scalar_type()).unsqueeze(-1) * inv_freq / interpolation_factor;
  return freqs.repeat_interleave(2, -1);
}

// x-transformers' xPos scales over the same positions: scale^((t - max_pos // 2) / scale_base), each twice in a
// row, max_pos = the largest position + 1 (over the whole batch); q is multiplied by them, k divided.
at::Tensor xpos_scales(const at::Tensor& scale, const at::Tensor& t, int64_t scale_base) {
  const auto max_pos = t.max() + 1;
  const auto power = (t - at::floor_divide(max_pos, 2)).to(scale.scalar_type()) / static_cast<double>(scale_base);
  return at::pow(scale, power.unsqueeze(-1)).repeat_interleave(2, -1);
}

// Custom positions: integers, (N) or (b, N) with N the self-attention keys (cached and memory keys included);
// ALiBi takes them as a dense (n, n) bias, so there they must be exactly the sequence's and come without a cache
// or memories, as in x-transformers.
void check_positions(const at::Tensor& pos, const at::Tensor& x, const AttentionLayersOptions& o,
                     const c10::SymInt& keys, bool extra_keys) {
  TORCH_CHECK_VALUE(!pos.is_floating_point() && !pos.is_complex() && pos.scalar_type() != at::kBool &&
                        (pos.dim() == 1 || (pos.dim() == 2 && pos.sym_size(0) == x.sym_size(0))) &&
                        pos.device() == x.device(),
                    "AttentionLayers: expected pos of shape (", keys, ") or (", x.sym_size(0), ", ", keys,
                    ") and an integer dtype on x's device, got ", pos.sym_sizes(), " ", pos.scalar_type(), " on ",
                    pos.device());
  TORCH_CHECK_VALUE(pos.sym_size(-1) >= keys, "AttentionLayers: expected pos to cover the ", keys,
                    " self-attention keys, got ", pos.sym_size(-1), " positions");
  TORCH_CHECK_VALUE(!(o.rel_pos_bias() || o.dynamic_pos_bias()),
                    "AttentionLayers: pos is not supported with rel_pos_bias or dynamic_pos_bias (x-transformers "
                    "allows only ALiBi and rotary with custom positions)");
  TORCH_CHECK_VALUE(!o.alibi_pos_bias() || (!extra_keys && pos.sym_size(-1) == x.sym_size(1)),
                    "AttentionLayers: pos with alibi_pos_bias needs exactly one position per token (", x.sym_size(1),
                    "), and no cache or mems, got ", pos.sym_size(-1));
}

// A per-call tensor read at every token (condition, in_attn_cond, a kv residual): (b, width) where a per-sequence
// one is allowed, else (b, 1 | n, width) with n the tokens of x; like x in dtype and device. Returns
// (b, 1 | n', width), n' the tokens this call runs (with a cache, the last of them).
at::Tensor per_token_input(const char* name, const at::Tensor& t, const at::Tensor& x_in, const c10::SymInt& n_in,
                           int64_t width, bool per_sequence) {
  const bool shape_ok =
      (per_sequence && t.dim() == 2) || (t.dim() == 3 && (t.sym_size(1) == 1 || t.sym_size(1) == n_in));
  TORCH_CHECK_VALUE(shape_ok && t.sym_size(0) == x_in.sym_size(0) && t.sym_size(-1) == width &&
                        t.scalar_type() == x_in.scalar_type() && t.device() == x_in.device(),
                    "AttentionLayers: expected ", name, " of shape ",
                    per_sequence ? "(" + std::to_string(xtc::detail::static_size(x_in, 0)) + ", " +
                                       std::to_string(width) + ") or "
                                 : std::string(),
                    "(", x_in.sym_size(0), ", 1 or ", n_in, ", ", width, ") like x (", x_in.scalar_type(), " on ",
                    x_in.device(), "), got ", t.sym_sizes(), " ", t.scalar_type(), " on ", t.device());
  const auto rows = t.dim() == 2 ? t.unsqueeze(1) : t;
  if (rows.sym_size(1) == 1 || rows.sym_size(1) == x_in.sym_size(1)) return rows;
  return rows.narrow_symint(1, rows.sym_size(1) - x_in.sym_size(1), x_in.sym_size(1));
}

// x-transformers' kv residuals of one kind: (b, n, d) for the first layer only, or (L, b, n, d) for the first L.
std::vector<at::Tensor> kv_residual_list(const char* name, const std::optional<at::Tensor>& residuals) {
  if (!residuals.has_value()) return {};
  TORCH_CHECK_VALUE(residuals->dim() == 3 || residuals->dim() == 4, "AttentionLayers: expected ", name,
                    " of shape (b, seq, dim) or (layers, b, seq, dim), got ", residuals->sym_sizes());
  if (residuals->dim() == 3) return {*residuals};
  return residuals->unbind(0);
}

// self_attn_additional_kv as pairs, one per executed self-attention layer in order (undefined pairs: none),
// x-transformers' routing: the given pairs go to the last layers (route_additional_kv_to_top, the surplus first
// ones dropped) or to the first.
std::vector<std::pair<at::Tensor, at::Tensor>> additional_kv_per_layer(const AttentionLayersInputs& in,
                                                                       const AttentionLayersPlan& plan,
                                                                       const at::Tensor& x) {
  const auto& flat = in.self_attn_additional_kv;
  if (flat.empty()) return {};
  const auto& o = plan.options();
  TORCH_CHECK_VALUE(flat.size() % 2 == 0, "AttentionLayers: expected self_attn_additional_kv as (k, v) pairs "
                    "flattened [k0, v0, k1, v1, ...], got ", flat.size(), " tensors");
  const auto& types = plan.executed_attention_types();
  const int64_t layers = std::count(types.begin(), types.end(), 'a');
  const int64_t pairs = static_cast<int64_t>(flat.size() / 2);
  const int64_t dim_head = o.attn().dim_head(), value_dim_head = o.attn().value_dim_head().value_or(dim_head);
  for (int64_t i = 0; i < pairs; ++i) {
    const auto &k = flat[2 * i], &v = flat[2 * i + 1];
    TORCH_CHECK_VALUE(k.dim() == 4 && v.dim() == 4 && k.sym_size(0) == x.sym_size(0) &&
                          v.sym_size(0) == x.sym_size(0) && k.sym_size(1) == v.sym_size(1) &&
                          k.sym_size(2) == v.sym_size(2) && k.sym_size(3) == dim_head &&
                          v.sym_size(3) == value_dim_head && xtc::detail::static_size(k, 1) > 0 &&
                          o.heads() % xtc::detail::static_size(k, 1) == 0 && k.is_floating_point() &&
                          v.is_floating_point() && k.device() == x.device() && v.device() == x.device(),
                      "AttentionLayers: expected self_attn_additional_kv pair ", i, " as k (", x.sym_size(0),
                      ", kv heads dividing ", o.heads(), ", length, ", dim_head, ") and v (", x.sym_size(0),
                      ", the same heads and length, ", value_dim_head, "), float on x's device, got ", k.sym_sizes(),
                      " and ", v.sym_sizes());
  }
  if (in.additional_kv_mask.has_value()) {
    const auto& m = *in.additional_kv_mask;
    TORCH_CHECK_VALUE(m.dim() == 2 && m.scalar_type() == at::kBool && m.sym_size(0) == x.sym_size(0) &&
                          m.sym_size(1) == flat.front().sym_size(2),
                      "AttentionLayers: expected additional_kv_mask of shape (", x.sym_size(0), ", ",
                      flat.front().sym_size(2), ") bool, got ", m.sym_sizes(), " ", m.scalar_type());
  }
  std::vector<std::pair<at::Tensor, at::Tensor>> per_layer(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t pair = in.route_additional_kv_to_top ? l - layers + pairs : l;
    if (pair >= 0 && pair < pairs) per_layer[l] = {flat[2 * pair], flat[2 * pair + 1]};
  }
  if (o.residual_attn()) {
    // Each layer adds the previous one's scores: every layer needs as many keys.
    bool same = true;
    for (const auto& [k, v] : per_layer)
      same = same && k.defined() && k.sym_size(2) == per_layer.front().first.sym_size(2);
    TORCH_CHECK_VALUE(same, "AttentionLayers: self_attn_additional_kv with residual_attn needs a pair of one length "
                      "for every self-attention layer (", layers, "), since each layer adds the previous one's "
                      "scores; got ", pairs, " pairs");
  }
  return per_layer;
}

// ------------------------------------------------------------------------------------------------ packing

// How one call of the stack packs its tokens (packing.h): x-transformers' flash_pack_seq_kwargs (the caller
// packed x and the context) or the `unpad` option (the stack packs x by its mask, the context by context_mask).
struct StackPacking {
  bool unpad = false;
  std::optional<PackedSequences> tokens;   // x's rows: the queries (and self-attention's keys)
  std::optional<PackedSequences> context;  // cross-attention's keys
  bool self_packed = false, cross_packed = false;  // which attention layers run packed
  bool context_is_packed = false;                  // the context tensor holds packed rows (flash_pack_seq)

  PackedAttention self_attention() const { return {&*tokens, &*tokens, true}; }
  PackedAttention cross_attention() const { return {&*tokens, &*context, context_is_packed}; }
};

// The flash_pack_seq_kwargs of a call, checked as x-transformers' asserts (and what it leaves unchecked).
StackPacking caller_packing(const at::Tensor& x, const AttentionLayersInputs& in, const AttentionLayersPlan& plan) {
  const auto& o = plan.options();
  const auto& types = plan.executed_attention_types();
  const bool has_self = types.find('a') != std::string::npos, has_cross = types.find('c') != std::string::npos;
  StackPacking packing;
  packing.self_packed = has_self && o.attn().flash_pack_seq();
  packing.cross_packed = has_cross && o.cross_attn().flash_pack_seq();
  TORCH_CHECK_VALUE(in.flash_pack_seq.has_value() == packing.self_packed,
                    packing.self_packed
                        ? "AttentionLayers: flash_pack_seq_kwargs must be provided with attn_flash_pack_seq"
                        : "AttentionLayers: flash_pack_seq_kwargs needs self-attention layers with "
                          "attn_flash_pack_seq=True (and attn_flash=True)");
  TORCH_CHECK_VALUE(in.flash_pack_seq_context.has_value() == packing.cross_packed,
                    packing.cross_packed
                        ? "AttentionLayers: flash_pack_seq_context_kwargs must be provided with "
                          "cross_attn_flash_pack_seq (attn_flash_pack_seq routes there too)"
                        : "AttentionLayers: flash_pack_seq_context_kwargs needs cross-attention layers with "
                          "cross_attn_flash_pack_seq=True (or attn_flash_pack_seq=True)");
  TORCH_CHECK_VALUE(x.dim() == 3 && x.sym_size(0) == 1,
                    "AttentionLayers: expected x of shape (1, total, dim) with packed sequences (batch size must be 1 "
                    "for sequence packing), got ", x.sym_sizes());
  TORCH_CHECK_VALUE(!in.mask.has_value() && !in.attn_mask.has_value() && !in.self_attn_kv_mask.has_value() &&
                        !in.seq_start_pos.has_value(),
                    "AttentionLayers: mask, attn_mask, self_attn_kv_mask and seq_start_pos cannot be used with packed "
                    "sequences (flash_pack_seq_kwargs)");
  TORCH_CHECK_VALUE(!in.attn_bias.has_value() && in.mems.empty() && in.cache_kv.empty(),
                    "AttentionLayers: attn_bias, mems and a cache cannot be used with packed sequences "
                    "(flash_pack_seq_kwargs)");
  TORCH_CHECK_VALUE(!o.any_shift_tokens(), "AttentionLayers: shift_tokens cannot be used with packed sequences "
                    "(flash_pack_seq_kwargs): it would shift tokens across the sequences' boundaries");
  TORCH_CHECK_VALUE(!(packing.cross_packed && in.context_mask.has_value()),
                    "AttentionLayers: context_mask cannot be used with flash_pack_seq_context_kwargs");
  const int64_t total = xtc::detail::static_size(x, 1);
  const auto same_offsets = [](const at::Tensor& a, const at::Tensor& b) {
    return a.numel() == b.numel() && a.to(at::kLong).cpu().equal(b.to(at::kLong).cpu());
  };
  if (packing.self_packed) {
    const auto& kw = *in.flash_pack_seq;
    TORCH_CHECK_VALUE(kw.cu_seqlens_q.defined() && kw.cu_seqlens_k.defined() &&
                          same_offsets(kw.cu_seqlens_q, kw.cu_seqlens_k),
                      "AttentionLayers: expected flash_pack_seq_kwargs' cu_seqlens_q and cu_seqlens_k equal "
                      "(self-attention's keys are its queries)");
    packing.tokens = pack_by_offsets(kw.cu_seqlens_q, std::min(kw.max_seqlen_q, kw.max_seqlen_k), total,
                                     "flash_pack_seq_kwargs", "cu_seqlens_q");
  }
  if (packing.cross_packed) {
    const auto& kw = *in.flash_pack_seq_context;
    TORCH_CHECK_VALUE(kw.cu_seqlens_q.defined() && kw.cu_seqlens_k.defined(),
                      "AttentionLayers: expected flash_pack_seq_context_kwargs with cu_seqlens_q and cu_seqlens_k");
    if (packing.tokens.has_value()) {
      TORCH_CHECK_VALUE(same_offsets(kw.cu_seqlens_q, packing.tokens->cu_seqlens),
                        "AttentionLayers: expected flash_pack_seq_context_kwargs' cu_seqlens_q equal to "
                        "flash_pack_seq_kwargs' (both lay out x)");
    } else {
      packing.tokens = pack_by_offsets(kw.cu_seqlens_q, kw.max_seqlen_q, total, "flash_pack_seq_context_kwargs",
                                       "cu_seqlens_q");
    }
    TORCH_CHECK_VALUE(in.context.has_value() && in.context->dim() == 3 && in.context->sym_size(0) == 1,
                      "AttentionLayers: expected a context of shape (1, total_context, dim) with "
                      "flash_pack_seq_context_kwargs");
    packing.context = pack_by_offsets(kw.cu_seqlens_k, kw.max_seqlen_k, xtc::detail::static_size(*in.context, 1),
                                      "flash_pack_seq_context_kwargs", "cu_seqlens_k");
    TORCH_CHECK_VALUE(packing.context->batch() == packing.tokens->batch(),
                      "AttentionLayers: expected flash_pack_seq_context_kwargs' cu_seqlens_k to hold as many sequences "
                      "(", packing.tokens->batch(), ") as its cu_seqlens_q, got ", packing.context->batch());
    packing.context_is_packed = true;
  }
  return packing;
}

// The unpad option on a call with a mask: what needs the padded batch between layers is refused by name.
StackPacking unpadding(const AttentionLayersInputs& in, const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(!o.any_shift_tokens(), "AttentionLayers: unpad cannot be combined with shift_tokens (it shifts "
                    "along the padded sequence)");
  TORCH_CHECK_VALUE(in.mems.empty() && in.cache_kv.empty(),
                    "AttentionLayers: unpad cannot be combined with mems or a cache (incremental decoding)");
  TORCH_CHECK_VALUE(!in.self_attn_kv_mask.has_value() && !in.seq_start_pos.has_value(),
                    "AttentionLayers: unpad packs the tokens `mask` keeps, so self_attn_kv_mask and seq_start_pos "
                    "(another key mask) cannot be combined with it");
  StackPacking packing;
  packing.unpad = packing.self_packed = packing.cross_packed = true;
  packing.tokens = pack_by_mask(*in.mask);
  if (in.context.has_value()) {
    const auto& ctx = *in.context;
    packing.context = pack_by_mask(in.context_mask.has_value()
                                       ? *in.context_mask
                                       : at::ones({ctx.size(0), ctx.size(1)}, ctx.options().dtype(at::kBool)));
  }
  return packing;
}

// Self-attention keys and values of a record, (1, hk, total, d) each, back in the padded frame (b, hk, n, d).
void unpack_record(AttentionLayersHiddens& record, const AttentionLayersPlan& plan, const PackedSequences& tokens) {
  for (auto* list : {&record.hiddens, &record.layer_hiddens})
    for (auto& t : *list) t = unpack(t, tokens);
  const auto& types = plan.executed_attention_types();
  for (size_t l = 0; l < types.size() && 2 * l + 1 < record.cached_kv.size(); ++l) {
    if (types[l] != 'a') continue;
    for (auto& t : {&record.cached_kv[2 * l], &record.cached_kv[2 * l + 1]})
      *t = unpack(t->transpose(1, 2), tokens).transpose(1, 2);
  }
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
  parameters_ = layout(options_, layer_types_);
  for (size_t i = 0; i < parameters_.size(); ++i) index_.emplace(parameters_[i].name, static_cast<int64_t>(i));
  if (options_.alibi_pos_bias()) {
    alibi_slopes_ = geometric_alibi_slopes(options_.alibi_num_heads().value_or(options_.heads()));
    alibi_slopes_.resize(options_.heads(), 0.0);  // heads past alibi_num_heads get no bias
  }
}

int64_t AttentionLayersPlan::index(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

at::Tensor attention_layers(const at::Tensor& x_arg, const AttentionLayersInputs& inputs, at::TensorList params,
                            const AttentionLayersPlan& plan, bool training, AttentionLayersHiddens* record) {
  const auto& o = plan.options();
  const auto& [mask_in, context, context_mask, attn_mask_in, self_attn_kv_mask, seq_start_pos, attn_bias, mems,
               mem_masks, cache_kv, cache_length, cache_age, pos, flash_pack_seq, flash_pack_seq_context,
               causal_override, condition_in, in_attn_cond, context_pos, self_attn_additional_kv, additional_kv_mask,
               route_additional_kv_to_top, self_attn_kv_residuals, cross_attn_kv_residuals] = inputs;
  const bool cached = !cache_kv.empty();
  // With a cache only the last cache_age tokens run (x-transformers' slicing); their keys follow the cached ones.
  const int64_t past = cached ? check_cache(cache_kv, x_arg, inputs, plan, training) : 0;
  // Lengths as SymInts: torch.export and torch.compile keep them symbolic (dynamic shapes).
  const c10::SymInt n_in = x_arg.dim() == 3 ? x_arg.sym_size(1) : c10::SymInt(0);
  const at::Tensor x_in =
      cached && cache_age > 0 && n_in > cache_age ? x_arg.narrow_symint(1, n_in - cache_age, cache_age) : x_arg;
  const std::optional<c10::SymInt> key_length =
      cached ? std::optional<c10::SymInt>(x_in.sym_size(1) + past) : std::nullopt;  // self-attention's keys, with a cache
  check_memories(mems, mem_masks, x_in, plan, attn_mask_in.has_value() || attn_bias.has_value());
  check_inputs(x_in, mask_in, context, context_mask, o, key_length);
  check_mask("self_attn_kv_mask", self_attn_kv_mask, x_in, key_length);
  const c10::SymInt keys = key_length.value_or(x_in.sym_size(1));
  // As x-transformers: self-attention's keys follow self_attn_kv_mask when given (else `mask`), and left padding
  // (seq_start_pos) hides keys before each sequence's start, replacing `mask` for the keys. With a cache `mask`
  // covers the keys only (the queries are the new tokens).
  std::optional<at::Tensor> self_key_mask = self_attn_kv_mask;
  if (cached && !self_key_mask.has_value()) self_key_mask = mask_in;
  const std::optional<at::Tensor> mask = cached ? std::nullopt : mask_in;
  if (seq_start_pos.has_value()) {
    const auto& start = *seq_start_pos;
    TORCH_CHECK_VALUE(start.dim() == 1 && start.sym_size(0) == x_in.sym_size(0) && !start.is_floating_point(),
                      "AttentionLayers: expected seq_start_pos of shape (", x_in.sym_size(0),
                      ") and an integer dtype, got ", start.sym_sizes(), " ", start.scalar_type());
    const auto left_pad = at::arange(keys, start.options()).unsqueeze(0) >= start.unsqueeze(1);
    self_key_mask = self_key_mask.has_value() ? self_key_mask->logical_and(left_pad) : left_pad;
  }
  const auto attn_mask = normalized_attn_mask(attn_mask_in, x_in, o.heads());
  const Parameters p(plan, params, x_in);
  // Packed sequences: the caller's (flash_pack_seq_kwargs) or the mask's (unpad). Position biases are built in
  // the padded frame, where attention runs when the varlen kernel cannot.
  std::optional<StackPacking> packing;
  if (flash_pack_seq.has_value() || flash_pack_seq_context.has_value() || o.attn().flash_pack_seq() ||
      (o.cross_attend() && o.cross_attn().flash_pack_seq()))
    packing = caller_packing(x_in, inputs, plan);
  else if (o.unpad() && mask_in.has_value())
    packing = unpadding(inputs, o);
  const bool caller_packed = packing.has_value() && !packing->unpad;
  const c10::SymInt frame_length = caller_packed ? c10::SymInt(packing->tokens->frame_length()) : x_in.sym_size(1);
  // Position biases span the memory keys in front too (Transformer-XL), as x-transformers' rel_pos(i, j).
  const c10::SymInt mem_len = mems.empty() ? c10::SymInt(0) : mems.front().sym_size(1);
  const c10::SymInt frame_keys = caller_packed ? frame_length : keys + mem_len;
  // The adaptive layers' condition, (b, 1 | n, width) after adaptive_condition_mlp (packed with the tokens below).
  TORCH_CHECK_VALUE(condition_in.has_value() == o.needs_condition(),
                    o.needs_condition() ? "AttentionLayers: condition must be passed in with use_adaptive_layernorm, "
                                          "use_adaptive_rmsnorm or use_adaptive_layerscale"
                                        : "AttentionLayers: condition was passed in, but no adaptive norm or "
                                          "layerscale reads it");
  at::Tensor condition =
      condition_in.has_value()
          ? per_token_input("condition", *condition_in, x_in, n_in, o.resolved_dim_condition(), /*per_sequence=*/true)
          : at::Tensor();
  const NormKind norm_kind = o.norm_kind();
  const bool unit_offset = o.norm_add_unit_offset();
  // The stack's norm with the tensors under `prefix` (a norm slot or final_norm).
  const auto apply_norm = [&](const at::Tensor& t, const std::string& prefix) {
    const auto weights = norm_weights(p, prefix, norm_kind);
    if (norm_kind == NormKind::AdaptiveLayerNorm || norm_kind == NormKind::AdaptiveRMSNorm)
      return adaptive_norm(norm_kind, t, at::linear(condition, weights.gain));
    return norm(norm_kind, t, weights, unit_offset, o.dynamic_tanh_init_alpha());
  };
  at::Tensor slopes;
  if (!plan.alibi_slopes().empty()) {
    // Through factory ops, not by copying host data in: fake tensors (torch.export, torch.compile) have none.
    std::vector<at::Tensor> values;
    for (const double slope : plan.alibi_slopes())
      values.push_back(at::scalar_tensor(slope, x_in.options().dtype(at::kDouble)));
    slopes = at::stack(values).to(at::kFloat);
  }
  if (pos.has_value()) check_positions(*pos, x_in, o, keys + mem_len, cached || mem_len > 0);
  at::Tensor rotary, xpos_scale;
  if (o.uses_rotary()) {
    // With memories the keys reach back to position -M (the first memory's length, as x-transformers). With a
    // cache the positions run to n_in + cache_length (x-transformers' seq_pos_offset), the keys being the last.
    // Custom positions replace the range.
    const c10::SymInt positions = (cached ? n_in + cache_length : x_in.sym_size(1)) + mem_len;
    TORCH_CHECK_VALUE(positions >= keys + mem_len, "AttentionLayers: cache_length ", cache_length,
                      " is shorter than the ",
                      past, " cached keys");
    const auto& inv_freq = p.get("rotary_pos_emb.inv_freq");
    const at::Tensor t = pos.has_value()
                             ? *pos
                             : at::arange(-mem_len, positions - mem_len, inv_freq.options().dtype(at::kLong));
    rotary = rotary_angles(inv_freq, t, o.rotary_interpolation_factor());
    if (o.rotary_xpos()) xpos_scale = xpos_scales(p.get("rotary_pos_emb.scale"), t, o.rotary_xpos_scale_base());
  }
  size_t next_memory = 0;
  // Cross-attention gets neither ALiBi, learned position biases nor rotary (x-transformers passes them to
  // self-attention only).
  if (packing.has_value() && packing->unpad && rotary.defined()) {
    // Each kept token keeps its position's angles (and xPos scales): (total, r).
    const auto packed_rows = [&](const at::Tensor& rows) {
      const int64_t n = packing->tokens->frame_length();
      const auto t = rows.narrow(-2, rows.size(-2) - n, n);  // custom positions may reach further back
      const auto per_token = t.dim() == 2 ? t.unsqueeze(0).expand({packing->tokens->batch(), -1, -1}) : t;
      return pack(per_token, *packing->tokens).squeeze(0);
    };
    rotary = packed_rows(rotary);
    if (xpos_scale.defined()) xpos_scale = packed_rows(xpos_scale);
  }
  auto self_config = attention_config(o.attn(), o, causal_override.value_or(o.causal()), slopes, rotary);
  self_config.rotary_scale = xpos_scale;
  self_config.rotary_heads = o.rotate_num_heads().value_or(-1);
  if (pos.has_value() && slopes.defined()) {
    // x-transformers' Alibi.forward_custom_pos: -|pos_j - pos_i| * slope, a dense bias (heads past
    // alibi_num_heads have slope 0, its zero padding).
    auto t = pos->dim() == 1 ? pos->unsqueeze(0) : *pos;  // (1|b, n)
    if (caller_packed) t = unpack(t, *packing->tokens);  // the packed positions in their sequences' frame
    const auto distance = (t.unsqueeze(1) - t.unsqueeze(2)).abs().unsqueeze(1).to(x_in.scalar_type());
    self_config.position_bias = -distance * slopes.to(x_in.scalar_type()).view({1, o.heads(), 1, 1});
    self_config.alibi_slopes = at::Tensor();
  }
  if (o.rel_pos_bias())
    self_config.position_bias =
        t5_position_bias(p.get("rel_pos.relative_attention_bias.weight"), frame_length, frame_keys, o);
  if (o.dynamic_pos_bias())
    self_config.position_bias = dynamic_position_bias(p, frame_length, frame_keys, x_in, o);
  if (attn_bias.has_value()) self_config.position_bias = normalized_attn_bias(*attn_bias, x_in, o);
  auto cross_config = attention_config(o.cross_attn(), o, /*causal=*/false, at::Tensor(), at::Tensor());
  if (context_pos.has_value()) {
    // x-transformers' context_pos: cross-attention's queries rotate by the tokens' positions (all heads), its keys
    // by the context's.
    const auto& t = *context_pos;
    TORCH_CHECK_VALUE(rotary.defined() && context.has_value(),
                      "AttentionLayers: context_pos sets cross-attention's rotary positions, so it needs "
                      "rotary_pos_emb (or rotary_xpos) and cross-attention with a context");
    const c10::SymInt context_length = context->sym_size(1);
    TORCH_CHECK_VALUE(!t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool &&
                          (t.dim() == 1 || (t.dim() == 2 && t.sym_size(0) == context->sym_size(0))) &&
                          t.sym_size(-1) == context_length && t.device() == x_in.device(),
                      "AttentionLayers: expected context_pos of shape (", context_length, ") or (",
                      context->sym_size(0), ", ", context_length, ") and an integer dtype on x's device, got ",
                      t.sym_sizes(), " ", t.scalar_type(), " on ", t.device());
    const auto& inv_freq = p.get("rotary_pos_emb.inv_freq");
    cross_config.rotary_angles = rotary;
    cross_config.rotary_scale = xpos_scale;
    cross_config.key_rotary_angles = rotary_angles(inv_freq, t, o.rotary_interpolation_factor());
    if (o.rotary_xpos())
      cross_config.key_rotary_scale = xpos_scales(p.get("rotary_pos_emb.scale"), t, o.rotary_xpos_scale_base());
  }
  self_config.residual_scores = o.residual_attn();
  cross_config.residual_scores = o.cross_residual_attn();
  at::Tensor self_scores, cross_scores;  // RealFormer: the previous layer's pre-softmax scores
  at::Tensor first_self_values, first_cross_values;  // ResFormer: the first attention layers' values

  // The cache entry of an attention layer, as our (b, N, hk, d) layout; its keys and values go to `record`.
  size_t next_cache = 0;
  auto layer_cache = [&]() {
    KVCache kv;
    if (cached) {
      kv.k = cache_kv[2 * next_cache].transpose(1, 2);
      kv.v = cache_kv[2 * next_cache + 1].transpose(1, 2);
    }
    ++next_cache;
    return kv;
  };
  auto keep_cache = [&](const KVCache& kv) {
    if (record == nullptr) return;
    record->cached_kv.push_back(kv.k.transpose(1, 2));
    record->cached_kv.push_back(kv.v.transpose(1, 2));
  };
  // Attention maps, when recording, for the layers whose x-transformers counterpart would return them.
  auto maps_for = [&](const AttentionOptions& a, AttentionMaps& maps) -> AttentionMaps* {
    return record != nullptr && !a.flash() && !a.linear() ? &maps : nullptr;
  };
  auto keep_maps = [&](const AttentionMaps& maps) {
    if (record == nullptr) return;
    for (const auto* t : {&maps.qk_similarities, &maps.pre_softmax_attn, &maps.post_softmax_attn})
      record->attn_maps.push_back(t->defined() ? *t : at::empty({0}, x_in.options()));
  };

  if (condition.defined() && o.adaptive_condition_mlp())
    condition = at::silu(at::linear(condition, p.get("adaptive_mlp.0.weight")));
  // A per-token input in the layout x runs in: packed with the tokens under unpad.
  const auto per_token_packed = [&](const at::Tensor& rows) {
    return packing.has_value() && packing->unpad ? pack(rows.expand({-1, x_in.size(1), -1}), *packing->tokens)
                                                 : rows;
  };
  if (condition.defined()) condition = per_token_packed(condition);
  // kv residuals: self-attention's over x's tokens (packed with them), cross-attention's over the context's.
  std::vector<at::Tensor> self_kv_residuals = kv_residual_list("self_attn_kv_residuals", self_attn_kv_residuals);
  for (auto& r : self_kv_residuals)
    r = per_token_packed(per_token_input("self_attn_kv_residuals", r, x_in, n_in, o.dim(), /*per_sequence=*/false));
  const std::vector<at::Tensor> cross_kv_residuals =
      kv_residual_list("cross_attn_kv_residuals", cross_attn_kv_residuals);
  TORCH_CHECK_VALUE(cross_kv_residuals.empty() || context.has_value(),
                    "AttentionLayers: cross_attn_kv_residuals needs cross-attention layers and a context");
  for (const auto& r : cross_kv_residuals) {
    const int64_t width = o.cross_attn().dim_context().value_or(o.dim());
    TORCH_CHECK_VALUE(r.dim() == 3 && (r.sym_size(0) == 1 || r.sym_size(0) == context->sym_size(0)) &&
                          (r.sym_size(1) == 1 || r.sym_size(1) == context->sym_size(1)) && r.sym_size(2) == width,
                      "AttentionLayers: expected cross_attn_kv_residuals of shape (", context->sym_size(0), ", ",
                      context->sym_size(1), ", ", width, ") (the context's), or (layers, ...) of them, got ",
                      r.sym_sizes());
  }
  const auto additional_kv = additional_kv_per_layer(inputs, plan, x_in);
  TORCH_CHECK_VALUE(additional_kv.empty() || !packing.has_value(),
                    "AttentionLayers: self_attn_additional_kv cannot be used with packed sequences or unpad");
  size_t next_self_layer = 0, next_cross_layer = 0;  // executed attention layers that ran so far
  at::Tensor x = packing.has_value() && packing->unpad ? pack(x_in, *packing->tokens) : x_in;
  // Packed layers take their masks from the layouts.
  std::optional<PackedAttention> packed_self, packed_cross;
  if (packing.has_value() && packing->self_packed) packed_self = packing->self_attention();
  if (packing.has_value() && packing->cross_packed && packing->context.has_value())
    packed_cross = packing->cross_attention();
  const std::optional<at::Tensor> layer_mask = packing.has_value() ? std::nullopt : mask;
  const std::optional<at::Tensor> cross_key_mask = packed_cross.has_value() ? std::nullopt : context_mask;
  // reinject_input: each branch also reads W x_in; in_attn_cond: the given tensor instead. Either gated per token
  // with the learned gate.
  at::Tensor reinjected;
  TORCH_CHECK_VALUE(!(o.reinject_input() && in_attn_cond.has_value()),
                    "AttentionLayers: in_attn_cond cannot be combined with reinject_input");
  if (o.reinject_input()) {
    reinjected = at::linear(x, p.get("reinject_input_proj.weight"));
  } else if (in_attn_cond.has_value()) {
    reinjected = per_token_packed(
        per_token_input("in_attn_cond", *in_attn_cond, x_in, n_in, o.dim(), /*per_sequence=*/true));
  }
  if (reinjected.defined() && o.learned_reinject_input_gate())
    reinjected = reinjected * at::sigmoid(at::linear(x, p.get("learned_reinject_input_gate.weight")));
  // U-Net skips: the input of every executed step, for the second half's blocks to join (x-transformers' skip
  // hiddens, kept before layer dropout).
  const auto skip_sources = o.unet_skip_sources();
  std::vector<at::Tensor> skip_hiddens;
  for (const int64_t i : plan.execution_order()) {
    if (o.unet_skips()) {
      skip_hiddens.push_back(x);
      if (const int64_t source = skip_sources[i]; source >= 0) {
        TORCH_CHECK_VALUE(source < static_cast<int64_t>(skip_hiddens.size()),
                          "AttentionLayers: unet_skips needs the execution order to reach step ", source,
                          " before layer ", i);
        x = at::linear(at::cat({skip_hiddens[source], x}, -1),
                       p.get("skip_combines." + std::to_string(i) + ".combine.weight"));
      }
    }
    if (training && o.layer_dropout() > 0 && at::rand({}, at::kDouble).item<double>() < o.layer_dropout()) continue;
    const char type = plan.layer_types()[i];
    if (record != nullptr) {
      if (type == 'a') record->hiddens.push_back(x);
      record->layer_hiddens.push_back(x);
    }
    const std::string layer = "layers." + std::to_string(i) + ".";
    const std::string block = block_prefix(static_cast<size_t>(i), type, o);
    const at::Tensor inner_residual = x;
    const at::Tensor branch_input = reinjected.defined() ? x + reinjected : x;
    at::Tensor h = o.pre_norm() ? apply_norm(branch_input, layer + "0.0.") : branch_input;
    if (const int64_t shift = o.layer_shift_tokens(static_cast<size_t>(i)); shift > 0)
      h = shift_tokens(h, shift, o.causal(), type == 'f' ? std::optional<at::Tensor>() : mask);
    at::Tensor out;
    if (type == 'f') {
      const auto& f = plan.layer_feed_forward(static_cast<size_t>(i));
      out = feed_forward(h, feed_forward_weights(p, block, f), f, training);
      if (o.macaron()) out = out * 0.5;
    } else if (type == 'a') {
      at::Tensor values;
      XLMemory memory;
      if (next_memory < mems.size()) {
        memory.mem = mems[next_memory];
        if (o.pre_norm()) memory.mem = apply_norm(memory.mem, layer + "0.0.");
        if (next_memory < mem_masks.size()) memory.mask = mem_masks[next_memory];
        ++next_memory;
      }
      KVCache kv = layer_cache();
      AttentionMaps maps;
      ExtraKeyValues extra;
      if (next_self_layer < self_kv_residuals.size()) extra.input_residual = self_kv_residuals[next_self_layer];
      if (next_self_layer < additional_kv.size()) {
        std::tie(extra.k, extra.v) = additional_kv[next_self_layer];
        if (extra.k.defined()) extra.mask = additional_kv_mask;
      }
      ++next_self_layer;
      const auto& a = plan.layer_attention(static_cast<size_t>(i));
      out = attention(h, std::nullopt, layer_mask, self_key_mask, attention_weights(p, block),
                      o.attn_per_layer().empty() ? self_config : with_options(self_config, a, o), training,
                      attn_mask, &self_scores,
                      ValueResidual{o.add_value_residual() ? first_self_values : at::Tensor(), &values}, memory,
                      record != nullptr || cached ? &kv : nullptr, maps_for(a, maps),
                      packed_self.has_value() ? &*packed_self : nullptr, extra);
      keep_cache(kv);
      keep_maps(maps);
      if (!first_self_values.defined()) first_self_values = values;
    } else {
      at::Tensor values;
      KVCache kv = layer_cache();
      AttentionMaps maps;
      ExtraKeyValues extra;
      if (next_cross_layer < cross_kv_residuals.size()) extra.input_residual = cross_kv_residuals[next_cross_layer];
      ++next_cross_layer;
      const auto& a = plan.layer_attention(static_cast<size_t>(i));
      out = attention(h, context, layer_mask, cross_key_mask, attention_weights(p, block),
                      o.cross_attn_per_layer().empty() ? cross_config : with_options(cross_config, a, o), training,
                      std::nullopt, &cross_scores,
                      ValueResidual{o.add_value_residual() ? first_cross_values : at::Tensor(), &values}, {},
                      record != nullptr || cached ? &kv : nullptr, maps_for(a, maps),
                      packed_cross.has_value() ? &*packed_cross : nullptr, extra);
      keep_cache(kv);
      keep_maps(maps);
      if (!first_cross_values.defined()) first_cross_values = values;
    }
    if (o.use_layerscale()) {
      const auto gamma = p.get(layer + "1.gamma");
      out = out * (unit_offset ? gamma + 1 : gamma);
    }
    if (o.use_adaptive_layerscale())
      out = out * at::sigmoid(
                      at::linear(condition, p.get(layer + "1.to_gamma.weight"), p.get(layer + "1.to_gamma.bias")));
    if (o.sandwich_norm()) out = apply_norm(out, layer + "0.1.");
    x = residual(o.residual_kind(), out, inner_residual, residual_weights(p, layer + "2."),
                 o.scale_residual_constant());
    if (o.applies_post_norm()) x = apply_norm(x, layer + "0.2.");
  }
  if (record != nullptr) record->layer_hiddens.push_back(x);
  if (o.softclamp_output()) x = at::tanh(x / o.softclamp_output_value()) * o.softclamp_output_value();
  if (o.has_final_norm()) x = apply_norm(x, "final_norm.");
  if (packing.has_value() && packing->unpad) {
    // Back to the padded batch: zeros where the mask drops a token.
    x = unpack(x, *packing->tokens);
    if (record != nullptr) unpack_record(*record, plan, *packing->tokens);
  }
  return x;
}

}  // namespace xtc::nn::functional
