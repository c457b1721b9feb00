// The feed-forward block.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/modules/torch_layers.h>
#include <xtc/nn/options/feedforward.h>

namespace xtc::nn {

/// x-transformers' GLU input projection: `proj` to 2 x inner, up * act(gate) [* mult_bias].
class GLUImpl : public torch::nn::Cloneable<GLUImpl> {
 public:
  GLUImpl(int64_t dim_in, int64_t dim_out, bool mult_bias);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t dim_in, dim_out;
  bool has_mult_bias;
  at::Tensor mult_bias;
  Linear proj{nullptr};
};
TORCH_MODULE(GLU);

/// x-transformers' FeedForward. `ff` mirrors its Sequential with the None entries dropped:
/// [proj_in, (post-activation LayerNorm), Dropout, proj_out], proj_in being [Linear, activation] or a GLU, so
/// the parameters are named `ff.0.0.weight` ... `ff.2.bias` (`ff.3.*` with post_act_ln) as in x-transformers.
class FeedForwardImpl : public torch::nn::Cloneable<FeedForwardImpl> {
 public:
  FeedForwardImpl(int64_t dim, FeedForwardOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  FeedForwardOptions options;
  torch::nn::ModuleList ff{nullptr};
  Linear proj_in{nullptr}, proj_out{nullptr};
  GLU glu{nullptr};
  std::shared_ptr<torch::nn::Module> post_act_norm;
};
TORCH_MODULE(FeedForward);

}  // namespace xtc::nn
