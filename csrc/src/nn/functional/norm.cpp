#include <xtc/nn/functional/norm.h>

#include <ATen/ops/layer_norm.h>

namespace xtc::nn::functional {

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& gamma) {
  return at::layer_norm(x, {x.size(-1)}, gamma + 1, /*bias=*/{}, /*eps=*/1e-5);
}

}  // namespace xtc::nn::functional
