// The feed-forward block.
#pragma once

#include <xtc/nn/options/feedforward.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace xtc::nn {

/// x-transformers' FeedForward: `ff` = [[Linear, GELU], Dropout, Linear], so its parameters are
/// `ff.0.0.weight`, `ff.0.0.bias`, `ff.2.weight`, `ff.2.bias`.
class FeedForwardImpl : public torch::nn::Cloneable<FeedForwardImpl> {
 public:
  FeedForwardImpl(int64_t dim, FeedForwardOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  FeedForwardOptions options;
  torch::nn::ModuleList ff{nullptr};
  torch::nn::Linear proj_in{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(FeedForward);

}  // namespace xtc::nn
