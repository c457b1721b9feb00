// The per-sequence kernels of xtc::flash_attention_varlen (flash_attention_varlen_per_sequence.cpp): the CPU
// kernels, and the CUDA path when the one-launch kernels do not take a call. Arguments as the op's.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace xtc::ops::detail {

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_per_sequence(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap);

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward_per_sequence(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap);

}  // namespace xtc::ops::detail
