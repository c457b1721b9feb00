// Shape functions of the flash attention ops, for torch.compile, torch.export and fake tensors. Sizes are
// read as SymInts, so that batch and lengths stay symbolic (dynamic shapes) instead of being specialised.
//
// Shape legend: b batch, n queries, m keys, h query heads, hk kv heads, d head dim, dv value head dim.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/flash_attention_checks.h"

namespace xtc::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, bool /*causal*/, std::optional<double> scale,
    const std::optional<at::Tensor>& alibi_slopes, int64_t window_left, int64_t window_right,
    double softcap) {
  const auto s = detail::check_flash_attention_args<c10::SymInt>(
      q, k, v, key_padding_mask, scale, alibi_slopes, window_left, window_right, softcap);
  auto out = at::empty_symint({s.batch, s.queries, s.heads, s.value_head_dim}, q.options());
  auto lse =
      at::empty_symint({s.batch, s.heads, s.queries}, q.options().dtype(detail::lse_dtype(q.scalar_type())));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    bool /*causal*/, std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes,
    int64_t window_left, int64_t window_right, double softcap) {
  const auto s = detail::check_flash_attention_args<c10::SymInt>(
      q, k, v, key_padding_mask, scale, alibi_slopes, window_left, window_right, softcap);
  detail::check_flash_attention_backward_args(grad_out, out, lse, q, s);
  return {at::empty_symint({s.batch, s.queries, s.heads, s.head_dim}, q.options()),
          at::empty_symint({s.batch, s.keys, s.kv_heads, s.head_dim}, q.options()),
          at::empty_symint({s.batch, s.keys, s.kv_heads, s.value_head_dim}, q.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, Meta, m) {
  m.impl("flash_attention", &flash_attention_forward_kernel);
  m.impl("flash_attention_backward", &flash_attention_backward_kernel);
}

}  // namespace xtc::ops
