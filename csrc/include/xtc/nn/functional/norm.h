// Norms on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>

namespace xtc::nn::functional {

/// x-transformers' LayerNorm: no bias, gain `gamma` stored with a unit offset (effective gain gamma + 1), eps 1e-5,
/// biased variance over the last dim.
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& gamma);

}  // namespace xtc::nn::functional
