// The multi-head attention block.
#pragma once

#include <xtc/nn/options/attention.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace xtc::nn {

/// x-transformers' Attention: `to_q`, `to_k`, `to_v` and `to_out` without bias; no `to_out` when heads == 1.
/// Attention itself runs in xtc::flash_attention.
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  AttentionImpl(int64_t dim, int64_t heads, AttentionOptions options = {}, bool causal = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x (b, n, dim), mask (b, n) bool, True = keep (undefined = no mask).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {});

  int64_t dim, heads;
  AttentionOptions options;
  bool causal;
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())})
};
TORCH_MODULE(Attention);

}  // namespace xtc::nn
