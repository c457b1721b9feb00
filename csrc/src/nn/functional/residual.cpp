#include <ATen/ops/gru_cell.h>
#include <xtc/nn/functional/residual.h>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual_in,
                    const ResidualWeights& w, double scale_constant) {
  at::Tensor residual = residual_in;
  if (w.residual_scale.defined()) residual = residual * w.residual_scale;
  if (kind == ResidualKind::GRUGating) {
    const int64_t dim = xtc::detail::static_size(branch, -1);
    return at::gru_cell(branch.reshape({-1, dim}), residual.reshape({-1, dim}), w.weight_ih, w.weight_hh,
                        w.bias_ih, w.bias_hh)
        .reshape_as(branch);
  }
  if (scale_constant != 1.0) residual = residual * scale_constant;
  return branch + residual;
}

}  // namespace xtc::nn::functional
