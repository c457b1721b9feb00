// Positional modules, as x-transformers: RotaryEmbedding (with xPos), RelativePositionBias (T5) and
// DynamicPositionBias. They hold the tensors; xtc/nn/functional/positional.h computes from them.
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

}  // namespace xtc::nn
