// How a branch output joins the residual stream, on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

namespace xtc::nn::functional {

/// The residual's tensors; undefined where the options leave one out.
struct ResidualWeights {
  at::Tensor residual_scale;                          // (dim), scale_residual
  at::Tensor weight_ih, weight_hh, bias_ih, bias_hh;  // GRU gating: (3 dim, dim) and (3 dim)
};

/// x-transformers' Residual (branch + residual * scale * constant) or GRUGating (GRUCell(branch, residual)).
at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual,
                    const ResidualWeights& w, double scale_constant);

}  // namespace xtc::nn::functional
