// Argument checks of xtc::flash_attention_varlen shared by its kernels (CPU, Meta), so that a bad call gets
// the same message on every backend. The per-sequence rules (heads, head dims, masks of ALiBi, window,
// soft-cap, scale) are flash_attention's own checks, run on each sequence's slices.
//
// Shape legend: total_q / total_k packed query / key rows, b sequences, h query heads, hk kv heads, d, dv
// head dims.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/flash_attention_checks.h"

namespace xtc::ops::detail {

/// The checks that need no sequence lengths: ranks, dtypes, devices, shapes of q, k, v and the cu_seqlens.
inline void check_varlen_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                              int64_t max_seqlen_q, int64_t max_seqlen_k) {
  TORCH_CHECK(q.dim() == 3, "flash_attention_varlen: expected q of shape (total_q, heads, head_dim), got ",
              q.sym_sizes());
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3,
              "flash_attention_varlen: expected k and v of shapes (total_k, kv_heads, head_dim), got ",
              k.sym_sizes(), " and ", v.sym_sizes());
  TORCH_CHECK(k.sym_size(0) == v.sym_size(0) && k.sym_size(1) == v.sym_size(1),
              "flash_attention_varlen: expected k and v with the same rows and kv heads, got ", k.sym_sizes(),
              " and ", v.sym_sizes());
  for (const auto& [name, cu] : {std::pair<const char*, const at::Tensor&>{"cu_seqlens_q", cu_seqlens_q},
                                 {"cu_seqlens_k", cu_seqlens_k}}) {
    TORCH_CHECK(cu.dim() == 1 && cu.sym_size(0) >= 1 && cu.scalar_type() == at::kInt,
                "flash_attention_varlen: expected ", name, " of shape (batch + 1,) and dtype int32, got ",
                cu.sym_sizes(), " ", cu.scalar_type());
  }
  TORCH_CHECK(cu_seqlens_q.sym_size(0) == cu_seqlens_k.sym_size(0),
              "flash_attention_varlen: expected cu_seqlens_q and cu_seqlens_k of one batch, got ",
              cu_seqlens_q.sym_size(0), " and ", cu_seqlens_k.sym_size(0), " entries");
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0,
              "flash_attention_varlen: expected max_seqlen_q and max_seqlen_k >= 0, got ", max_seqlen_q,
              " and ", max_seqlen_k);
}

}  // namespace xtc::ops::detail
