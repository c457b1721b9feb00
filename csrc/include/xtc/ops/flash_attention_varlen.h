// C++ API of the xtc::flash_attention_varlen op: attention over packed sequences of different lengths, as
// FlashAttention's varlen functions. Calls go through the dispatcher.
//
// Shapes: q (total_q, h, d), k (total_k, hk, d), v (total_k, hk, dv), h % hk == 0; sequence i holds the query
// rows cu_seqlens_q[i] .. cu_seqlens_q[i + 1] and the key rows cu_seqlens_k[i] .. cu_seqlens_k[i + 1], both
// (b + 1,) int32 from 0 to total_q / total_k; max_seqlen_q / max_seqlen_k bound the lengths. Each sequence
// attends within itself with flash_attention's rules (causal right-aligned per sequence, ALiBi, window,
// soft-cap, scale); work is proportional to the sum of n_i * m_i. Returns out (total_q, h, dv) and lse (h,
// total_q) in float32 (float64 for float64 inputs); a query whose sequence has no visible key gives 0 and lse
// -inf.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace xtc::ops {

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal = false,
    std::optional<double> scale = std::nullopt, const std::optional<at::Tensor>& alibi_slopes = std::nullopt,
    int64_t window_left = -1, int64_t window_right = -1, double softcap = 0.0);

/// Gradients of flash_attention_varlen from its saved output and log-sum-exp.
std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap);

}  // namespace xtc::ops
