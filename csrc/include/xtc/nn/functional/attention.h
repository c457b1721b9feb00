// Multi-head attention on explicit parameters.
//
// Shape legend: b batch, n queries, m keys, h heads, hk kv heads, dh head dim.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace xtc::nn::functional {

/// What the attention block needs besides its weights.
struct AttentionConfig {
  int64_t heads, kv_heads, dim_head;
  bool causal = false;
  double dropout = 0.0;
};

/// Self-attention of x (b, n, dim): projections without bias, heads split as feature = head * dh + c, attention by
/// xtc::flash_attention (or the materialising path when attention dropout is active), heads merged, output
/// projection `w_out` (undefined when heads == 1, as x-transformers), and positions where `mask` (b, n) is False
/// zeroed. `mask` also masks the keys.
at::Tensor attention(const at::Tensor& x, const std::optional<at::Tensor>& mask, const at::Tensor& w_q,
                     const at::Tensor& w_k, const at::Tensor& w_v, const at::Tensor& w_out,
                     const AttentionConfig& config, bool training);

/// Softmax attention that materialises the (b, h, n, m) probabilities, exactly as x-transformers' own path:
/// masked logits filled with the dtype's lowest value, softmax in float32, dropout on the probabilities, rows
/// whose keys are all masked set to 0. q (b, n, h, dh), k and v (b, m, hk, dh); returns (b, n, h, dv).
at::Tensor materialized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask, bool causal, double dropout,
                                  bool training);

}  // namespace xtc::nn::functional
