// Norm modules.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace xtc::nn {

/// x-transformers' LayerNorm (Ba et al. 2016, arXiv 1607.06450): no bias, gain `gamma` stored with a unit offset
/// (initialised to 0, effective gain gamma + 1).
class LayerNormImpl : public torch::nn::Cloneable<LayerNormImpl> {
 public:
  explicit LayerNormImpl(int64_t dim);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  at::Tensor gamma;
};
TORCH_MODULE(LayerNorm);

}  // namespace xtc::nn
