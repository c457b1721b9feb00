// x-transformers' ShiftTokens on explicit tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace xtc::nn::functional {

/// x-transformers' ShiftTokens: x (b, n, dim) cut into feature segments shifted along the sequence by -s..s
/// (0..s when causal), zeros shifted in; positions `mask` (b, n) drops are zeroed first.
at::Tensor shift_tokens(const at::Tensor& x, int64_t s, bool causal, const std::optional<at::Tensor>& mask);

}  // namespace xtc::nn::functional
