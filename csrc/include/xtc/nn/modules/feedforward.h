// The feed-forward block.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/modules/torch_layers.h>
#include <xtc/nn/options/feedforward.h>

namespace xtc::nn {

/// x-transformers' SoLU activation: LayerNorm(softmax(x) * x) over the last dim, its gain as `norm.gamma`.
class SoLUImpl : public torch::nn::Cloneable<SoLUImpl> {
 public:
  explicit SoLUImpl(int64_t dim);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  std::shared_ptr<torch::nn::Module> norm;
};
TORCH_MODULE(SoLU);

/// value * tanh(x / value): x-transformers' Lambda(softclamp) in the feed-forward's input, a slot without
/// tensors.
class SoftclampImpl : public torch::nn::Cloneable<SoftclampImpl> {
 public:
  explicit SoftclampImpl(double value) : value(value) {}
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  double value;
};
TORCH_MODULE(Softclamp);

/// x-transformers' GLU input projection: `proj` to 2 x inner, up * act(gate) [* mult_bias]; with SoLU as the
/// activation, `act` holds its norm (registered first, as x-transformers does).
class GLUImpl : public torch::nn::Cloneable<GLUImpl> {
 public:
  GLUImpl(int64_t dim_in, int64_t dim_out, bool mult_bias, bool solu = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  int64_t dim_in, dim_out;
  bool has_mult_bias, solu;
  at::Tensor mult_bias;
  SoLU act{nullptr};
  Linear proj{nullptr};
};
TORCH_MODULE(GLU);

/// x-transformers' FeedForward. `ff` mirrors its Sequential with the None entries dropped:
/// [proj_in, (post-activation LayerNorm), Dropout, proj_out, (sublayer Dropout)], proj_in being [Linear,
/// (Softclamp), activation] or a GLU, so the parameters are named `ff.0.0.weight` ... `ff.2.bias` (`ff.3.*`
/// with post_act_ln) as in x-transformers.
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
  SoLU solu{nullptr};
  std::shared_ptr<torch::nn::Module> post_act_norm;
};
TORCH_MODULE(FeedForward);

}  // namespace xtc::nn
