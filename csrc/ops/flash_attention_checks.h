// Argument checks shared by every backend of xtc::flash_attention (CPU, CUDA, Meta), so that a bad call gets the
// same message whichever device it lands on.
//
// Shape legend: b batch, n queries, m keys, h query heads, hk kv heads, d head dim of q/k, dv head dim of v.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

namespace xtc::ops::detail {

/// Sizes of one flash_attention call, read once after the checks.
struct FlashAttentionSizes {
  int64_t batch, queries, keys, heads, kv_heads, head_dim, value_head_dim;
  double scale;
  // Right alignment: query i sits at key position i + key_offset (x-transformers' triu(j - i + 1)).
  int64_t key_offset;
};

inline FlashAttentionSizes check_flash_attention_args(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const std::optional<at::Tensor>& key_padding_mask,
                                                      std::optional<double> scale,
                                                      const std::optional<at::Tensor>& alibi_slopes,
                                                      int64_t window_left, int64_t window_right,
                                                      double softcap) {
  TORCH_CHECK(q.dim() == 4, "flash_attention: expected q of shape (batch, queries, heads, head_dim), got ",
              q.sizes());
  TORCH_CHECK(k.dim() == 4, "flash_attention: expected k of shape (batch, keys, kv_heads, head_dim), got ",
              k.sizes());
  TORCH_CHECK(v.dim() == 4, "flash_attention: expected v of shape (batch, keys, kv_heads, value_head_dim), got ",
              v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "flash_attention: expected q, k and v of one dtype, got q ", q.scalar_type(), ", k ",
              k.scalar_type(), ", v ", v.scalar_type());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(),
              "flash_attention: expected q, k and v on one device, got q on ", q.device(), ", k on ", k.device(),
              ", v on ", v.device());
  FlashAttentionSizes s{};
  s.batch = q.size(0);
  s.queries = q.size(1);
  s.heads = q.size(2);
  s.head_dim = q.size(3);
  s.keys = k.size(1);
  s.kv_heads = k.size(2);
  s.value_head_dim = v.size(3);
  TORCH_CHECK(k.size(0) == s.batch && k.size(3) == s.head_dim,
              "flash_attention: expected k of shape (", s.batch, ", keys, kv_heads, ", s.head_dim, "), got ",
              k.sizes());
  TORCH_CHECK(v.size(0) == s.batch && v.size(1) == s.keys && v.size(2) == s.kv_heads,
              "flash_attention: expected v of shape (", s.batch, ", ", s.keys, ", ", s.kv_heads,
              ", value_head_dim), got ", v.sizes());
  TORCH_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0,
              "flash_attention: expected the query heads (", s.heads, ") to be a multiple of the kv heads (",
              s.kv_heads, ")");
  TORCH_CHECK(s.head_dim > 0 && s.value_head_dim > 0, "flash_attention: expected head dims > 0, got q/k ",
              s.head_dim, " and v ", s.value_head_dim);
  if (key_padding_mask.has_value()) {
    const auto& mask = *key_padding_mask;
    TORCH_CHECK(mask.scalar_type() == at::kBool, "flash_attention: expected key_padding_mask of dtype bool, got ",
                mask.scalar_type());
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == s.batch && mask.size(1) == s.keys,
                "flash_attention: expected key_padding_mask of shape (", s.batch, ", ", s.keys, "), got ",
                mask.sizes());
    TORCH_CHECK(mask.device() == q.device(), "flash_attention: expected key_padding_mask on ", q.device(),
                ", got ", mask.device());
  }
  if (alibi_slopes.has_value()) {
    const auto& slopes = *alibi_slopes;
    TORCH_CHECK(slopes.dim() == 1 && slopes.size(0) == s.heads,
                "flash_attention: expected alibi_slopes of shape (", s.heads, "), got ", slopes.sizes());
    TORCH_CHECK(slopes.is_floating_point(), "flash_attention: expected floating alibi_slopes, got ",
                slopes.scalar_type());
    TORCH_CHECK(slopes.device() == q.device(), "flash_attention: expected alibi_slopes on ", q.device(),
                ", got ", slopes.device());
  }
  TORCH_CHECK(window_left >= -1 && window_right >= -1,
              "flash_attention: expected window_left and window_right >= -1 (-1 = unbounded), got (", window_left,
              ", ", window_right, ")");
  TORCH_CHECK(softcap >= 0 && std::isfinite(softcap), "flash_attention: expected softcap >= 0 (0 = off), got ",
              softcap);
  s.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  TORCH_CHECK(std::isfinite(s.scale), "flash_attention: expected a finite scale, got ", s.scale);
  s.key_offset = s.keys - s.queries;
  return s;
}

/// The log-sum-exp is kept in float32 for every input dtype but float64.
inline at::ScalarType lse_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

/// Checks of the backward's extra inputs against the forward's sizes: grad_out and out (b, n, h, dv) in q's dtype,
/// lse (b, h, n) in lse_dtype(), all on q's device.
inline void check_flash_attention_backward_args(const at::Tensor& grad_out, const at::Tensor& out,
                                                const at::Tensor& lse, const at::Tensor& q,
                                                const FlashAttentionSizes& s) {
  const std::vector<int64_t> out_shape{s.batch, s.queries, s.heads, s.value_head_dim};
  const std::vector<int64_t> lse_shape{s.batch, s.heads, s.queries};
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_out", grad_out}, {"out", out}}) {
    TORCH_CHECK(t.sizes() == out_shape, "flash_attention_backward: expected ", name, " of shape ",
                c10::IntArrayRef(out_shape), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "flash_attention_backward: expected ", name, " of dtype ",
                q.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == q.device(), "flash_attention_backward: expected ", name, " on ", q.device(), ", got ",
                t.device());
  }
  TORCH_CHECK(lse.sizes() == lse_shape, "flash_attention_backward: expected lse of shape ", c10::IntArrayRef(lse_shape),
              ", got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == lse_dtype(q.scalar_type()), "flash_attention_backward: expected lse of dtype ",
              lse_dtype(q.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK(lse.device() == q.device(), "flash_attention_backward: expected lse on ", q.device(), ", got ",
              lse.device());
}

}  // namespace xtc::ops::detail
