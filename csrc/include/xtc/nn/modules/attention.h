// The multi-head attention block.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/modules/positional.h>
#include <xtc/nn/modules/torch_layers.h>
#include <xtc/nn/options/attention.h>

namespace xtc::nn {

/// x-transformers' CoPE: `pos_emb` (max_pos, dim_head) zeros, with talking_heads a 1x1 convolution of the
/// heads (`talking_heads`), with soft_onehot the persistent long buffer `positions` (0 .. max_pos - 1).
class CoPEImpl : public torch::nn::Cloneable<CoPEImpl> {
 public:
  CoPEImpl(int64_t dim, int64_t heads, int64_t max_pos, bool soft_onehot = false, bool talking_heads = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t dim, heads, max_pos;
  bool soft_onehot, use_talking_heads;
  at::Tensor pos_emb, positions;
  Conv2d talking_heads{nullptr};
};
TORCH_MODULE(CoPE);

/// x-transformers' Attend: what the softmax itself learns, the per-head sink logits `head_attn_sink` (zeros)
/// and the talking-heads 1x1 convolutions (Shazeer et al. 2020, arXiv 2003.02436), initialised to the
/// identity mix.
class AttendImpl : public torch::nn::Cloneable<AttendImpl> {
 public:
  /// `cope`: built by the attention block first (x-transformers draws it before the rest), held here.
  AttendImpl(int64_t heads, AttentionOptions options, CoPE cope = nullptr);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  int64_t heads;
  AttentionOptions options;
  at::Tensor head_attn_sink;
  Conv2d pre_softmax_talking_heads{nullptr}, post_softmax_talking_heads{nullptr},
      pre_scale_post_talking_heads{nullptr};
  CoPE cope{nullptr};
};
TORCH_MODULE(Attend);

/// x-transformers' Attention: `to_q`, `to_k`, `to_v`, `to_out` without bias (no `to_out` with one head), plus
/// the optional `qk_norm_{q,k}_scale`, `head_scale_params`, `mem_k`/`mem_v` and the gates. The attention
/// itself runs in xtc::flash_attention.
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  /// `learned_value_mix`: a ResFormer value-residual mix (`to_value_residual_mix`), as x-transformers gives
  /// the self-attention layers after the first under add_value_residual.
  AttentionImpl(int64_t dim, int64_t heads, AttentionOptions options = {}, bool causal = false,
                bool learned_value_mix = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// reset()'s steps, in x-transformers' registration order: qk-norm scales, head scale and memory
  /// key/values; the latents and q, k, v; the value and output gates; the per-head RMSNorms;
  /// data_dependent_alibi and use_rel_proj_pos_bias; Attend (sink, talking heads, CoPE); the hybrid module;
  /// to_out.
  void register_own_parameters();
  void register_projections();
  void register_gates();
  void register_head_norms();
  void register_learned_biases();
  void register_attend(const CoPE& cope);
  void register_hybrid();
  void register_output_projection();
  /// x (b, n, dim); mask (b, n) bool, True = keep; context (b, m, dim) for cross-attention with context_mask
  /// (b, m). Undefined tensors mean "none".
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {}, const at::Tensor& context = {},
                     const at::Tensor& context_mask = {});

  int64_t dim, heads;
  AttentionOptions options;
  bool causal, learned_value_mix;
  Linear to_latent_q{nullptr}, to_latent_kv{nullptr}, to_rotateable_k{nullptr};  // multi-latent attention
  Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};
  functional::LowRankLinearWeights to_v_gate, to_output_gate;  // gate_values, output_gate
  Linear to_v_head_gate{nullptr};                              // gate_value_heads
  at::Tensor qk_norm_q_scale, qk_norm_k_scale, head_scale_params, mem_k, mem_v;
  at::Tensor to_out_glu, pre_talking_heads, post_talking_heads, pre_scale_post_talking_heads;
  at::Tensor q_rmsnorm, k_rmsnorm, value_rmsnorm;  // per-head RMSNorm gains (heads or kv heads, 1, dim_head)
  at::Tensor head_attn_sink;                       // (heads) learned sink logits
  at::Tensor cope_pos_emb, cope_talking_heads;     // CoPE's (max_pos, dim_head) and (heads, heads, 1, 1)
  Linear to_value_residual_mix{nullptr};
  at::Tensor forget_gate_weight, forget_gate_bias;  // data_dependent_alibi's gate projection
  std::shared_ptr<RelativeProjPositionalBiasImpl> rel_proj_pos_bias;
  functional::HybridWeights
      hybrid;  // hybrid_module: `hybrid_module.fn` (FoldAxially's), `hybrid_norms`, `hybrid_mix`

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())}, {2, torch::nn::AnyValue(at::Tensor())},
                           {3, torch::nn::AnyValue(at::Tensor())})
};
TORCH_MODULE(Attention);

}  // namespace xtc::nn
