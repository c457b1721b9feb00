// Positional modules, as x-transformers: RotaryEmbedding (with xPos), RelativePositionBias (T5),
// DynamicPositionBias, and the attention block's own DataDependentAlibi, PerRowDataDependentAlibi and
// RelativeProjPositionalBias. They hold the tensors; xtc/nn/functional/positional.h computes from them.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/modules/torch_layers.h>

namespace xtc::nn {

/// x-transformers' RotaryEmbedding (RoFormer, Su et al. 2021, arXiv 2104.09864): persistent buffers
/// `inv_freq` (base 10000, NTK-rescaled by base_rescale_factor) and, with xPos (Sun et al. 2022, arXiv
/// 2212.10554), `scale`.
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  RotaryEmbeddingImpl(int64_t dim, bool use_xpos = false, double base_rescale_factor = 1.0);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  int64_t dim;
  bool use_xpos;
  double base_rescale_factor;
  at::Tensor inv_freq, scale;
};
TORCH_MODULE(RotaryEmbedding);

/// x-transformers' PolarEmbedding (PoPE, arXiv 2509.10534): the persistent buffer `inv_freq` (dim of them,
/// base 10000) and the keys' per-head angle shift `learned_bias` (heads, 1, dim), zeros or uniform in
/// [-2 pi, 0].
class PolarEmbeddingImpl : public torch::nn::Cloneable<PolarEmbeddingImpl> {
 public:
  PolarEmbeddingImpl(int64_t dim, int64_t heads, bool bias_uniform_init = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t dim, heads;
  bool bias_uniform_init;
  at::Tensor inv_freq, learned_bias;
};
TORCH_MODULE(PolarEmbedding);

/// x-transformers' RelativePositionBias (T5, Raffel et al. 2019, arXiv 1910.10683): a learned per-head bias
/// of bucketed relative positions, `relative_attention_bias` (num_buckets, heads).
class RelativePositionBiasImpl : public torch::nn::Cloneable<RelativePositionBiasImpl> {
 public:
  RelativePositionBiasImpl(int64_t heads, int64_t num_buckets);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t heads, num_buckets;
  Embedding relative_attention_bias{nullptr};
};
TORCH_MODULE(RelativePositionBias);

/// x-transformers' DynamicPositionBias (SwinV2, Liu et al. 2021, arXiv 2111.09883): an MLP of `depth` hidden
/// layers of width dim / 4 over the relative distances, one bias per head.
class DynamicPositionBiasImpl : public torch::nn::Cloneable<DynamicPositionBiasImpl> {
 public:
  DynamicPositionBiasImpl(int64_t dim, int64_t heads, int64_t depth, bool norm);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t dim, heads, depth;
  bool norm;
  torch::nn::ModuleList mlp{nullptr};
};
TORCH_MODULE(DynamicPositionBias);

/// x-transformers' DataDependentAlibi (the forgetting transformer): `to_forget_gates.0`, a linear dim ->
/// heads (2 heads without causality), its bias at `bias_init`. forward(x) gives the (b, h, n, n) bias.
class DataDependentAlibiImpl : public torch::nn::Cloneable<DataDependentAlibiImpl> {
 public:
  DataDependentAlibiImpl(int64_t dim, int64_t heads, bool causal, double bias_init = 5.0,
                         double post_log_scale = 1.0);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim, heads;
  bool causal;
  double bias_init, post_log_scale;
  Linear to_forget_gates{nullptr};  // registered as `to_forget_gates.0`
};
TORCH_MODULE(DataDependentAlibi);

/// x-transformers' PerRowDataDependentAlibi: `to_forget_gates.0`, a bias-less linear dim -> 2 heads
/// dim_head (small queries and keys). Causal; forward(x) gives the (b, h, n, n) bias.
class PerRowDataDependentAlibiImpl : public torch::nn::Cloneable<PerRowDataDependentAlibiImpl> {
 public:
  PerRowDataDependentAlibiImpl(int64_t dim, int64_t heads, int64_t dim_head = 8, double post_log_scale = 1.0);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim, heads, dim_head;
  double post_log_scale;
  Linear to_forget_gates{nullptr};  // registered as `to_forget_gates.0`
};
TORCH_MODULE(PerRowDataDependentAlibi);

/// x-transformers' RelativeProjPositionalBias (Inkling): `to_distance_weights.0` (dim -> heads
/// num_distance_basis) and `distance_bank` (num_distance_basis, max_dist) ~ N(0, 0.02^2). forward(x, keys)
/// gives the (b, h, n, keys) bias.
class RelativeProjPositionalBiasImpl : public torch::nn::Cloneable<RelativeProjPositionalBiasImpl> {
 public:
  RelativeProjPositionalBiasImpl(int64_t dim, int64_t heads, int64_t num_distance_basis = 16,
                                 int64_t max_dist = 1024);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x, int64_t keys);

  int64_t dim, heads, num_distance_basis, max_dist;
  Linear to_distance_weights{nullptr};  // registered as `to_distance_weights.0`
  at::Tensor distance_bank;
};
TORCH_MODULE(RelativeProjPositionalBias);

}  // namespace xtc::nn
