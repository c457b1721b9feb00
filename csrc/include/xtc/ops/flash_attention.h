// C++ API of the xtc::flash_attention op. Calls go through the dispatcher, so they reach the CPU or CUDA
// kernel by the tensors' device and record autograd like any torch op.
//
// Shapes: q (b, n, h, d), k (b, m, hk, d), v (b, m, hk, dv), h % hk == 0.
// Query head i reads kv head i % hk (x-transformers' `b kvh n d -> b (r kvh) n d` expansion).
// key_padding_mask (b, m) bool, True = keep. causal: key j is visible to query i iff j <= i + (m - n), i.e.
// causality is right-aligned when m > n. alibi_slopes (h,): bias -slope * |i + (m - n) - j| added after the
// scale. window (left, right): key j is visible iff i + (m - n) - left <= j <= i + (m - n) + right; -1 =
// unbounded. softcap c > 0: logits s become c * tanh(s / c), after scale and ALiBi. Returns out (b, n, h, dv)
// and the row log-sum-exp (b, h, n) in float32 (float64 for float64 inputs). Rows that see no key give out =
// 0, lse = -inf, and zero gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace xtc::ops {

std::tuple<at::Tensor, at::Tensor> flash_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt, bool causal = false,
    std::optional<double> scale = std::nullopt, const std::optional<at::Tensor>& alibi_slopes = std::nullopt,
    int64_t window_left = -1, int64_t window_right = -1, double softcap = 0.0);

/// Gradients of flash_attention from its saved output and log-sum-exp; recomputes the logits block by block.
std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes,
    int64_t window_left, int64_t window_right, double softcap);

}  // namespace xtc::ops
