// Bidirectional attention whose queries sit inside the keys rather than at their end: a run of a sharded
// sequence's queries (context parallelism) under ALiBi or a window, in the flash kernel. The kernel places
// its queries at the keys' end, so the call is two kernel calls: the keys up to the queries' end as they are,
// and the keys after them reversed together with the queries (ALiBi and windows read distances, which
// reversing keeps, the window's sides swapped). The two merge by their log-sum-exp; the backward runs the
// kernel's backward on each with the merged output and log-sum-exp, as ring attention does. Internal to the
// library.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace xtc::nn::functional::detail {

/// The kernel's rules (xtc::flash_attention's arguments) for a bidirectional call.
struct BidirectionalRule {
  double scale = 1.0, softcap = 0.0;
  int64_t window_left = -1, window_right = -1;
  std::optional<at::Tensor> alibi_slopes;
};

/// q (b, n, h, d) at key positions [query_start, query_start + n) of k (b, m, hk, d), v (b, m, hk, dv);
/// key_mask (b, m) bool or none. Returns (b, n, h, dv), differentiable in q, k and v.
at::Tensor attention_at_offset(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, int64_t query_start,
                               const BidirectionalRule& rule);

}  // namespace xtc::nn::functional::detail
