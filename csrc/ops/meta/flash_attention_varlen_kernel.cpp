// Shape functions of the varlen flash attention ops, for torch.compile, torch.export and fake tensors (sizes
// read as SymInts, so the packed lengths stay symbolic).
//
// Shape legend: total_q / total_k packed rows, h query heads, hk kv heads, d head dim, dv value head dim.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/flash_attention_varlen_checks.h"

namespace xtc::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool /*causal*/,
    std::optional<double> /*scale*/, const std::optional<at::Tensor>& /*alibi_slopes*/,
    int64_t /*window_left*/, int64_t /*window_right*/, double /*softcap*/) {
  detail::check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  auto out = at::empty_symint({q.sym_size(0), q.sym_size(1), v.sym_size(2)}, q.options());
  auto lse =
      at::empty_symint({q.sym_size(1), q.sym_size(0)}, q.options().dtype(detail::lse_dtype(q.scalar_type())));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward_kernel(
    const at::Tensor& /*grad_out*/, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& /*out*/, const at::Tensor& /*lse*/, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool /*causal*/,
    std::optional<double> /*scale*/, const std::optional<at::Tensor>& /*alibi_slopes*/,
    int64_t /*window_left*/, int64_t /*window_right*/, double /*softcap*/) {
  detail::check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, Meta, m) {
  m.impl("flash_attention_varlen", &flash_attention_varlen_forward_kernel);
  m.impl("flash_attention_varlen_backward", &flash_attention_varlen_backward_kernel);
}

}  // namespace xtc::ops
