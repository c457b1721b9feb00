// How a branch output joins the residual stream, on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

#include <optional>

namespace xtc::nn::functional {

/// The residual's tensors; undefined where the options leave one out.
struct ResidualWeights {
  at::Tensor residual_scale;                          // (dim), scale_residual
  at::Tensor weight_ih, weight_hh, bias_ih, bias_hh;  // GRU gating: (3 dim, dim) and (3 dim)
  at::Tensor alpha, beta;  // mv_split_residual: (dim) each, or the (dim, dim) weights of to_alpha / to_beta
  at::Tensor alpha_bias, beta_bias;  // (dim): to_alpha / to_beta's biases (mv_split_residual_learned)
};

/// x-transformers' residual updates: Residual (branch + residual * scale * constant), GRUGating
/// (GRUCell(branch, residual)), OrthogonalResidualUpdate (residual + the branch's part orthogonal to it, each
/// sequence one vector) and MVSplitResidualUpdate (means over the tokens `mask` keeps, (b, n) bool; unset =
/// all).
at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual,
                    const ResidualWeights& w, double scale_constant,
                    const std::optional<at::Tensor>& mask = std::nullopt);

/// x-transformers' orthog_project: x less its component along y, each batch entry's whole block one vector,
/// in float64 (back in x's dtype).
at::Tensor orthogonal_projection(const at::Tensor& x, const at::Tensor& y);

}  // namespace xtc::nn::functional
