#include "src/nn/functional/stack_parameters.h"

namespace xtc::nn::functional::detail {

StackParameters::StackParameters(const AttentionLayersPlan& plan, at::TensorList params, const at::Tensor& x)
    : plan_(plan), params_(params) {
  const auto& specs = plan.parameters();
  TORCH_CHECK_VALUE(params.size() == specs.size(), "AttentionLayers: expected ", specs.size(),
                    " parameters for these options, got ", params.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& p = params[i];
    TORCH_CHECK_VALUE(p.sizes() == c10::IntArrayRef(specs[i].shape), "AttentionLayers: expected ",
                      specs[i].buffer ? "buffer " : "parameter ", specs[i].name, " of shape ",
                      c10::IntArrayRef(specs[i].shape), ", got ", p.sizes());
    // Integral buffers (CoPE's positions) keep their dtype, as torch's Module.to leaves them.
    TORCH_CHECK_VALUE(p.scalar_type() == x.scalar_type() || (specs[i].buffer && !p.is_floating_point()),
                      "AttentionLayers: expected x of the parameters' dtype ", p.scalar_type(), ", got ",
                      x.scalar_type(), " (parameter ", specs[i].name, ")");
    TORCH_CHECK_VALUE(p.device() == x.device(), "AttentionLayers: expected x on the parameters' device ",
                      p.device(), ", got ", x.device(), " (parameter ", specs[i].name, ")");
  }
}

at::Tensor StackParameters::get(const std::string& name) const {
  const int64_t i = plan_.index(name);
  return i < 0 ? at::Tensor() : params_[i];
}

// hybrid_module's: the network's weights in torch's order (RecurrentSpec::weights()), the norms, the mix.
HybridWeights hybrid_weights(const StackParameters& p, const std::string& prefix, const AttentionOptions& a) {
  HybridWeights w;
  if (!a.hybrid_module().has_value()) return w;
  w.out_norm = p.get(prefix + "hybrid_norms.0.gamma");
  w.hybrid_norm = p.get(prefix + "hybrid_norms.1.gamma");
  w.mix = p.get(prefix + "hybrid_mix.weight");
  for (const auto& [name, shape] : parse_recurrent_spec("hybrid_module", *a.hybrid_module()).weights())
    w.recurrent.push_back(p.get(prefix + "hybrid_module.fn." + name));
  return w;
}

AttentionWeights attention_weights(const StackParameters& p, const std::string& prefix,
                                   const AttentionOptions& a) {
  AttentionWeights w;
  w.to_latent_q = p.get(prefix + "to_latent_q.weight");
  w.to_latent_kv = p.get(prefix + "to_latent_kv.weight");
  w.to_rotateable_k = p.get(prefix + "to_rotateable_k.weight");
  w.to_q = p.get(prefix + "to_q.weight");
  w.to_k = p.get(prefix + "to_k.weight");
  w.to_v = p.get(prefix + "to_v.weight");
  const auto low_rank = [&](const std::string& name) {
    return LowRankLinearWeights{p.get(prefix + name + ".weight"), p.get(prefix + name + ".down.weight"),
                                p.get(prefix + name + ".up.weight")};
  };
  w.to_v_gate = low_rank("to_v_gate");
  w.to_output_gate = low_rank("to_output_gate");
  w.v_head_gate_weight = p.get(prefix + "to_v_head_gate.weight");
  w.v_head_gate_bias = p.get(prefix + "to_v_head_gate.bias");
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
  w.cope_pos_emb = p.get(prefix + "attend.cope.pos_emb");
  w.cope_talking_heads = p.get(prefix + "attend.cope.talking_heads.weight");
  w.q_rmsnorm = p.get(prefix + "q_rmsnorm.gamma");
  w.k_rmsnorm = p.get(prefix + "k_rmsnorm.gamma");
  w.value_rmsnorm = p.get(prefix + "value_rmsnorm.gamma");
  w.forget_gate_weight = p.get(prefix + "data_dependent_alibi.to_forget_gates.0.weight");
  w.forget_gate_bias = p.get(prefix + "data_dependent_alibi.to_forget_gates.0.bias");
  w.distance_weight = p.get(prefix + "rel_proj_pos_bias.to_distance_weights.0.weight");
  w.distance_bias = p.get(prefix + "rel_proj_pos_bias.to_distance_weights.0.bias");
  w.distance_bank = p.get(prefix + "rel_proj_pos_bias.distance_bank");
  w.hybrid = hybrid_weights(p, prefix, a);
  return w;
}

FeedForwardWeights feed_forward_weights(const StackParameters& p, const std::string& prefix,
                                        const FeedForwardOptions& f) {
  FeedForwardWeights w;
  if (f.glu()) {
    w.proj_in_weight = p.get(prefix + "ff.0.proj.weight");
    w.proj_in_bias = p.get(prefix + "ff.0.proj.bias");
    w.glu_mult_bias = p.get(prefix + "ff.0.mult_bias");
    w.solu_gamma = p.get(prefix + "ff.0.act.norm.gamma");
  } else {
    w.proj_in_weight = p.get(prefix + "ff.0.0.weight");
    w.proj_in_bias = p.get(prefix + "ff.0.0.bias");
    // [Linear, softclamp, activation] with softclamp_value, else [Linear, activation].
    w.solu_gamma =
        p.get(prefix + (f.softclamp_value().has_value() ? "ff.0.2.norm.gamma" : "ff.0.1.norm.gamma"));
  }
  w.post_act_gamma = p.get(prefix + "ff.1.gamma");
  const std::string out = prefix + (f.post_act_ln() ? "ff.3." : "ff.2.");
  w.proj_out_weight = p.get(out + "weight");
  w.proj_out_bias = p.get(out + "bias");
  return w;
}

ResidualWeights residual_weights(const StackParameters& p, const std::string& prefix) {
  // mv_split_residual: learned vectors, or the to_alpha / to_beta linears (below).
  ResidualWeights w{p.get(prefix + "residual_scale"),
                    p.get(prefix + "gru.weight_ih"),
                    p.get(prefix + "gru.weight_hh"),
                    p.get(prefix + "gru.bias_ih"),
                    p.get(prefix + "gru.bias_hh"),
                    p.get(prefix + "alpha"),
                    p.get(prefix + "beta"),
                    at::Tensor(),
                    at::Tensor()};
  if (!w.alpha.defined()) {
    w.alpha = p.get(prefix + "to_alpha.weight");
    w.alpha_bias = p.get(prefix + "to_alpha.bias");
    w.beta = p.get(prefix + "to_beta.weight");
    w.beta_bias = p.get(prefix + "to_beta.bias");
  }
  return w;
}

HyperConnectionWeights hyper_connection_weights(const StackParameters& p, const std::string& prefix) {
  return {p.get(prefix + "static_alpha"),     p.get(prefix + "static_beta"),
          p.get(prefix + "dynamic_alpha_fn"), p.get(prefix + "dynamic_alpha_scale"),
          p.get(prefix + "dynamic_beta_fn"),  p.get(prefix + "dynamic_beta_scale"),
          p.get(prefix + "norm.weight")};
}

GatedMultiResidualWeights gated_multi_residual_weights(const StackParameters& p, const std::string& prefix) {
  return {p.get(prefix + "read_gain"),
          p.get(prefix + "static_read_logit"),
          p.get(prefix + "static_write_logit"),
          p.get(prefix + "dynamic_gate_scale"),
          p.get(prefix + "to_bottleneck.weight"),
          p.get(prefix + "to_read_gate.weight"),
          p.get(prefix + "to_write_gate.weight")};
}

DynamicLIMeWeights dynamic_lime_weights(const StackParameters& p, const std::string& prefix) {
  return {p.get(prefix + "to_weights.0.g"), p.get(prefix + "to_weights.1.weight"),
          p.get(prefix + "to_weights.1.bias")};
}

AttentionResidualWeights attention_residual_weights(const StackParameters& p, const std::string& prefix) {
  return {p.get(prefix + "to_keys.weight"), p.get(prefix + "to_query.0.weight"),
          p.get(prefix + "norm.weight"), p.get(prefix + "to_query.1.down.weight"),
          p.get(prefix + "to_query.1.up.weight")};
}

NormWeights norm_weights(const StackParameters& p, const std::string& prefix, NormKind kind) {
  NormWeights w;
  if (kind == NormKind::AdaptiveLayerNorm || kind == NormKind::AdaptiveRMSNorm) {
    w.gain = p.get(prefix + "to_gamma.weight");
  } else if (kind == NormKind::Derf) {
    w.pre_tanh_scale = p.get(prefix + "alpha");
    w.shift = p.get(prefix + "s");
    w.gain = p.get(prefix + "gamma");
    w.beta = p.get(prefix + "beta");
  } else if (kind == NormKind::DynamicTanh) {
    w.gain = p.get(prefix + "gamma");
    w.pre_tanh_scale = p.get(prefix + "pre_tanh_scale");
    w.beta = p.get(prefix + "beta");
  } else {
    w.gain = kind == NormKind::LayerNorm ? p.get(prefix + "gamma") : p.get(prefix + "g");
  }
  return w;
}

DynamicPositionBiasWeights dynamic_position_bias_weights(const StackParameters& p,
                                                         const AttentionLayersOptions& o) {
  // x-transformers' Sequentials drop the None norms, so the names shift with dynamic_pos_bias_norm.
  DynamicPositionBiasWeights w;
  const int64_t depth = o.dynamic_pos_bias_mlp_depth();
  for (int64_t l = 0; l < depth; ++l) {
    const std::string prefix = "rel_pos.mlp." + std::to_string(l) + ".";
    w.weights.push_back(p.get(prefix + "0.weight"));
    w.biases.push_back(p.get(prefix + "0.bias"));
    if (o.dynamic_pos_bias_norm() && l == 0) w.first_norm_gamma = p.get(prefix + "1.gamma");
    if (o.dynamic_pos_bias_norm() && l > 0) {
      w.norm_weights.push_back(p.get(prefix + "1.weight"));
      w.norm_biases.push_back(p.get(prefix + "1.bias"));
    }
  }
  const std::string last = "rel_pos.mlp." + std::to_string(depth) + ".";
  w.weights.push_back(p.get(last + "weight"));
  w.biases.push_back(p.get(last + "bias"));
  return w;
}

}  // namespace xtc::nn::functional::detail
