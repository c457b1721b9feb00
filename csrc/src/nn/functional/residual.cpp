#include <ATen/ops/gru_cell.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <xtc/nn/functional/residual.h>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

at::Tensor orthogonal_projection(const at::Tensor& x, const at::Tensor& y) {
  const auto flat_x = x.flatten(1).to(at::kDouble), flat_y = y.flatten(1).to(at::kDouble);
  const auto unit = flat_y / at::linalg_vector_norm(flat_y, 2, {-1}, true).clamp_min(1e-12);
  return (flat_x - (flat_x * unit).sum(-1, true) * unit).to(x.scalar_type()).view_as(x);
}

namespace {

// torch_einops_utils' masked_mean over the tokens, keeping the dimension: sum(t * mask) / max(count, 1e-5).
at::Tensor token_mean(const at::Tensor& t, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return t.mean(-2, true);
  const auto keep = mask->unsqueeze(-1).to(t.scalar_type());
  return (t * keep).sum(-2, true) / keep.expand_as(t).sum(-2, true).clamp_min(1e-5);
}

at::Tensor mv_split(const at::Tensor& branch, const at::Tensor& residual, const ResidualWeights& w,
                    const std::optional<at::Tensor>& mask) {
  const auto mean_x = token_mean(branch, mask), mean_residual = token_mean(residual, mask);
  const bool learned = w.alpha_bias.defined();
  const auto alpha = learned ? at::linear(mean_x, w.alpha, w.alpha_bias) : w.alpha;
  const auto beta = learned ? at::linear(mean_x, w.beta, w.beta_bias) : w.beta;
  return residual + (branch - mean_x) * beta + (mean_x - mean_residual) * alpha;
}

}  // namespace

at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual_in,
                    const ResidualWeights& w, double scale_constant, const std::optional<at::Tensor>& mask) {
  if (kind == ResidualKind::MVSplit) return mv_split(branch, residual_in, w, mask);
  at::Tensor residual = residual_in;
  if (w.residual_scale.defined()) residual = residual * w.residual_scale;
  if (kind == ResidualKind::GRUGating) {
    const int64_t dim = xtc::detail::static_size(branch, -1);
    return at::gru_cell(branch.reshape({-1, dim}), residual.reshape({-1, dim}), w.weight_ih, w.weight_hh,
                        w.bias_ih, w.bias_hh)
        .reshape_as(branch);
  }
  if (kind == ResidualKind::Orthogonal) return residual + orthogonal_projection(branch, residual);
  if (scale_constant != 1.0) residual = residual * scale_constant;
  return branch + residual;
}

}  // namespace xtc::nn::functional
