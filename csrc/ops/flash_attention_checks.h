// Argument checks shared by every backend of xtc::flash_attention (CPU, CUDA, Meta), so that a bad call gets
// the same message whichever device it lands on.
//
// Shape legend: b batch, n queries, m keys, h query heads, hk kv heads, d head dim of q/k, dv head dim of v.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "src/symbolic_sizes.h"

namespace xtc::ops::detail {

/// Sizes of one flash_attention call, read once after the checks. The kernels read them as int64_t; the Meta
/// kernel as c10::SymInt, so that torch.export and torch.compile keep batch and lengths symbolic (heads and
/// head dims come from a model's options and stay concrete).
template <typename Int = int64_t>
struct FlashAttentionSizes {
  Int batch, queries, keys;
  int64_t heads, kv_heads, head_dim, value_head_dim;
  double scale;
  // Right alignment: query i sits at key position i + key_offset (x-transformers' triu(j - i + 1)).
  Int key_offset;
};

/// t.size(d) as Int: concrete for the kernels, symbolic for the Meta kernel.
template <typename Int>
Int size_as(const at::Tensor& t, int64_t d) {
  if constexpr (std::is_same_v<Int, c10::SymInt>) {
    return t.sym_size(d);
  } else {
    return t.sym_size(d).guard_int(__FILE__, __LINE__);
  }
}

template <typename Int = int64_t>
FlashAttentionSizes<Int> check_flash_attention_args(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v,
                                                    const std::optional<at::Tensor>& key_padding_mask,
                                                    std::optional<double> scale,
                                                    const std::optional<at::Tensor>& alibi_slopes,
                                                    int64_t window_left, int64_t window_right,
                                                    double softcap) {
  TORCH_CHECK(q.dim() == 4, "flash_attention: expected q of shape (batch, queries, heads, head_dim), got ",
              q.sym_sizes());
  TORCH_CHECK(k.dim() == 4, "flash_attention: expected k of shape (batch, keys, kv_heads, head_dim), got ",
              k.sym_sizes());
  TORCH_CHECK(v.dim() == 4,
              "flash_attention: expected v of shape (batch, keys, kv_heads, value_head_dim), got ",
              v.sym_sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "flash_attention: expected q, k and v of one dtype, got q ", q.scalar_type(), ", k ",
              k.scalar_type(), ", v ", v.scalar_type());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(),
              "flash_attention: expected q, k and v on one device, got q on ", q.device(), ", k on ",
              k.device(), ", v on ", v.device());
  FlashAttentionSizes<Int> s{};
  s.batch = size_as<Int>(q, 0);
  s.queries = size_as<Int>(q, 1);
  s.heads = xtc::detail::static_size(q, 2);
  s.head_dim = xtc::detail::static_size(q, 3);
  s.keys = size_as<Int>(k, 1);
  s.kv_heads = xtc::detail::static_size(k, 2);
  s.value_head_dim = xtc::detail::static_size(v, 3);
  TORCH_CHECK(size_as<Int>(k, 0) == s.batch && k.sym_size(3) == s.head_dim,
              "flash_attention: expected k of shape (", s.batch, ", keys, kv_heads, ", s.head_dim, "), got ",
              k.sym_sizes());
  TORCH_CHECK(size_as<Int>(v, 0) == s.batch && size_as<Int>(v, 1) == s.keys && v.sym_size(2) == s.kv_heads,
              "flash_attention: expected v of shape (", s.batch, ", ", s.keys, ", ", s.kv_heads,
              ", value_head_dim), got ", v.sym_sizes());
  TORCH_CHECK(s.kv_heads > 0 && s.heads % s.kv_heads == 0, "flash_attention: expected the query heads (",
              s.heads, ") to be a multiple of the kv heads (", s.kv_heads, ")");
  TORCH_CHECK(s.head_dim > 0 && s.value_head_dim > 0, "flash_attention: expected head dims > 0, got q/k ",
              s.head_dim, " and v ", s.value_head_dim);
  if (key_padding_mask.has_value()) {
    const auto& mask = *key_padding_mask;
    TORCH_CHECK(mask.scalar_type() == at::kBool,
                "flash_attention: expected key_padding_mask of dtype bool, got ", mask.scalar_type());
    TORCH_CHECK(mask.dim() == 2 && size_as<Int>(mask, 0) == s.batch && size_as<Int>(mask, 1) == s.keys,
                "flash_attention: expected key_padding_mask of shape (", s.batch, ", ", s.keys, "), got ",
                mask.sym_sizes());
    TORCH_CHECK(mask.device() == q.device(), "flash_attention: expected key_padding_mask on ", q.device(),
                ", got ", mask.device());
  }
  if (alibi_slopes.has_value()) {
    const auto& slopes = *alibi_slopes;
    TORCH_CHECK(slopes.dim() == 1 && slopes.sym_size(0) == s.heads,
                "flash_attention: expected alibi_slopes of shape (", s.heads, "), got ", slopes.sym_sizes());
    TORCH_CHECK(slopes.is_floating_point(), "flash_attention: expected floating alibi_slopes, got ",
                slopes.scalar_type());
    TORCH_CHECK(slopes.device() == q.device(), "flash_attention: expected alibi_slopes on ", q.device(),
                ", got ", slopes.device());
  }
  TORCH_CHECK(window_left >= -1 && window_right >= -1,
              "flash_attention: expected window_left and window_right >= -1 (-1 = unbounded), got (",
              window_left, ", ", window_right, ")");
  TORCH_CHECK(softcap >= 0 && std::isfinite(softcap),
              "flash_attention: expected softcap >= 0 (0 = off), got ", softcap);
  s.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  TORCH_CHECK(std::isfinite(s.scale), "flash_attention: expected a finite scale, got ", s.scale);
  s.key_offset = s.keys - s.queries;
  return s;
}

/// The log-sum-exp is kept in float32 for every input dtype but float64.
inline at::ScalarType lse_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

/// Whether t has exactly `shape` (symbolic dims compared under guards, not specialised).
template <typename Int>
bool has_shape(const at::Tensor& t, const std::vector<Int>& shape) {
  if (t.dim() != static_cast<int64_t>(shape.size())) return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (!(size_as<Int>(t, static_cast<int64_t>(i)) == shape[i])) return false;
  return true;
}

/// Checks of the backward's extra inputs against the forward's sizes: grad_out and out (b, n, h, dv) in q's
/// dtype, lse (b, h, n) in lse_dtype(), all on q's device.
template <typename Int>
void check_flash_attention_backward_args(const at::Tensor& grad_out, const at::Tensor& out,
                                         const at::Tensor& lse, const at::Tensor& q,
                                         const FlashAttentionSizes<Int>& s) {
  const std::vector<Int> out_shape{s.batch, s.queries, Int(s.heads), Int(s.value_head_dim)};
  const std::vector<Int> lse_shape{s.batch, Int(s.heads), s.queries};
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"grad_out", grad_out}, {"out", out}}) {
    TORCH_CHECK(has_shape(t, out_shape), "flash_attention_backward: expected ", name, " of shape ",
                c10::ArrayRef<Int>(out_shape), ", got ", t.sym_sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "flash_attention_backward: expected ", name, " of dtype ",
                q.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == q.device(), "flash_attention_backward: expected ", name, " on ", q.device(),
                ", got ", t.device());
  }
  TORCH_CHECK(has_shape(lse, lse_shape), "flash_attention_backward: expected lse of shape ",
              c10::ArrayRef<Int>(lse_shape), ", got ", lse.sym_sizes());
  TORCH_CHECK(lse.scalar_type() == lse_dtype(q.scalar_type()),
              "flash_attention_backward: expected lse of dtype ", lse_dtype(q.scalar_type()), ", got ",
              lse.scalar_type());
  TORCH_CHECK(lse.device() == q.device(), "flash_attention_backward: expected lse on ", q.device(), ", got ",
              lse.device());
}

}  // namespace xtc::ops::detail
