// The feed-forward block on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>

namespace xtc::nn::functional {

/// x (..., dim) -> Linear(w_in, b_in) -> GELU (erf) -> dropout -> Linear(w_out, b_out).
at::Tensor feed_forward(const at::Tensor& x, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& w_out,
                        const at::Tensor& b_out, double dropout, bool training);

}  // namespace xtc::nn::functional
