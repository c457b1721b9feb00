#include <xtc/nn/functional/norm.h>

#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linalg_vector_norm.h>

#include <cmath>

namespace xtc::nn::functional {

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& gamma, bool unit_offset) {
  return at::layer_norm(x, {x.size(-1)}, unit_offset ? gamma + 1 : gamma, /*bias=*/{}, /*eps=*/1e-5);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& g, bool unit_offset) {
  const double scale = std::sqrt(static_cast<double>(x.size(-1)));
  auto normed = x / at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
  if (!g.defined()) return normed * scale;
  return normed * (unit_offset ? (g + 1) * scale : g * scale);
}

at::Tensor norm(NormKind kind, const at::Tensor& x, const at::Tensor& gain, bool unit_offset) {
  return kind == NormKind::LayerNorm ? layer_norm(x, gain, unit_offset) : rms_norm(x, gain, unit_offset);
}

}  // namespace xtc::nn::functional
