#include <xtc/nn/functional/norm.h>
#include <xtc/nn/modules/norm.h>

#include <ATen/ops/zeros.h>
#include <torch/nn/init.h>

namespace xtc::nn {

LayerNormImpl::LayerNormImpl(int64_t dim) : dim(dim) { reset(); }

void LayerNormImpl::reset() {
  TORCH_CHECK_VALUE(dim > 0, "LayerNorm: expected dim > 0, got ", dim);
  gamma = register_parameter("gamma", at::zeros({dim}));
  reset_parameters();
}

void LayerNormImpl::reset_parameters() { torch::nn::init::zeros_(gamma); }

void LayerNormImpl::pretty_print(std::ostream& stream) const { stream << "xtc::nn::LayerNorm(" << dim << ")"; }

at::Tensor LayerNormImpl::forward(const at::Tensor& x) { return functional::layer_norm(x, gamma); }

}  // namespace xtc::nn
