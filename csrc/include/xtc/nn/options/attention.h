// Options of the attention block (x-transformers' `attn_*` keyword arguments, prefix stripped).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>

namespace xtc::nn {

/// Multi-head attention (Vaswani et al. 2017, arXiv 1706.03762), as x-transformers' `Attention`.
struct AttentionOptions {
  /// Width of each head; x-transformers uses 64 whatever dim and heads are.
  TORCH_ARG(int64_t, dim_head) = 64;
  /// Key/value heads for grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245); unset = one per query
  /// head. Query head i reads kv head i % kv_heads, as x-transformers' `(r kvh)` expansion.
  TORCH_ARG(std::optional<int64_t>, kv_heads) = std::nullopt;
  /// One key/value head for all query heads (multi-query attention, Shazeer 2019, arXiv 1911.02150).
  TORCH_ARG(bool, one_kv_head) = false;
  /// Dropout on the attention probabilities (training only); takes the path that materialises them.
  TORCH_ARG(double, dropout) = 0.0;
  /// Accepted for x-transformers compatibility: our flash kernels run wherever they apply.
  TORCH_ARG(bool, flash) = false;
};

}  // namespace xtc::nn
