#include <ATen/ops/erf.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <xtc/nn/functional/norm.h>

#include <cmath>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& gamma, bool unit_offset) {
  return at::layer_norm_symint(x, {x.sym_size(-1)}, unit_offset ? gamma + 1 : gamma, /*bias=*/{},
                               /*eps=*/1e-5);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& g, bool unit_offset) {
  const double scale = std::sqrt(static_cast<double>(xtc::detail::static_size(x, -1)));
  auto normed = x / at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
  if (!g.defined()) return normed * scale;
  return normed * (unit_offset ? (g + 1) * scale : g * scale);
}

at::Tensor multihead_rms_norm(const at::Tensor& t, const at::Tensor& gamma) {
  return rms_norm(t, at::Tensor()) * (gamma.transpose(0, 1) + 1);
}

at::Tensor dynamic_tanh(const at::Tensor& x, const NormWeights& w, bool unit_offset, double init_alpha) {
  const auto alpha = unit_offset ? w.pre_tanh_scale + init_alpha : w.pre_tanh_scale;
  const auto gamma = unit_offset ? w.gain + 1.0 : w.gain;
  return (x * alpha).tanh() * gamma + w.beta;
}

at::Tensor derf(const at::Tensor& x, const NormWeights& w, bool unit_offset) {
  const double offset = unit_offset ? 1.0 : 0.0;
  return at::erf(x * (w.pre_tanh_scale + offset) + w.shift) * (w.gain + offset) + w.beta;
}

at::Tensor adaptive_norm(NormKind kind, const at::Tensor& x, const at::Tensor& gamma) {
  const auto normed =
      kind == NormKind::AdaptiveLayerNorm
          ? at::layer_norm_symint(x, {x.sym_size(-1)}, /*weight=*/{}, /*bias=*/{}, /*eps=*/1e-5)
          : rms_norm(x, at::Tensor());
  return normed * (gamma + 1.0);
}

at::Tensor norm(NormKind kind, const at::Tensor& x, const NormWeights& w, bool unit_offset,
                double dynamic_tanh_init_alpha) {
  switch (kind) {
    case NormKind::LayerNorm:
      return layer_norm(x, w.gain, unit_offset);
    case NormKind::DynamicTanh:
      return dynamic_tanh(x, w, unit_offset, dynamic_tanh_init_alpha);
    case NormKind::Derf:
      return derf(x, w, unit_offset);
    default:
      return rms_norm(x, w.gain, unit_offset);
  }
}

}  // namespace xtc::nn::functional
