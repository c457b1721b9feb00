// The CPU kernels of xtc::flash_attention_varlen, and its CUDA path unless the cuda_varlen_one_launch backend
// takes it (ops/cuda/flash_attention_varlen_kernel.cu): each packed sequence runs through flash_attention's
// kernel of its device on its own rows (views, batch 1), so the work is the sum of n_i * m_i and every rule
// (causal right-aligned per sequence, ALiBi, window, soft-cap, GQA, dtypes) is the dense kernel's. Sequences
// without queries are skipped; without keys, their queries get 0 and lse -inf (the dense kernel's rule). The
// offsets are read and checked on the host.
//
// Shape legend: total_q / total_k packed rows, b sequences, h query heads, hk kv heads, d, dv head dims.
#include "ops/flash_attention_varlen_per_sequence.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention.h>

#include <limits>
#include <vector>

#include "ops/flash_attention_varlen_checks.h"

namespace xtc::ops {
namespace {

// The sequences' row ranges from cu_seqlens, checked: from 0, non-decreasing, ending at the packed row count,
// no longer than max_seqlen.
std::vector<int64_t> sequence_starts(const at::Tensor& cu_seqlens, const char* name, int64_t rows,
                                     int64_t max_len, const char* max_name) {
  const auto cu = cu_seqlens.cpu().contiguous();
  const int32_t* data = cu.data_ptr<int32_t>();
  std::vector<int64_t> starts(data, data + cu.numel());
  TORCH_CHECK(starts.front() == 0 && starts.back() == rows, "flash_attention_varlen: expected ", name,
              " from 0 to the packed rows (", rows, "), got ", starts.front(), " to ", starts.back());
  for (size_t i = 0; i + 1 < starts.size(); ++i) {
    const int64_t len = starts[i + 1] - starts[i];
    TORCH_CHECK(len >= 0, "flash_attention_varlen: expected ", name, " non-decreasing, got ", starts[i],
                " then ", starts[i + 1], " at sequence ", i);
    TORCH_CHECK(len <= max_len, "flash_attention_varlen: expected ", max_name, " (", max_len,
                ") to bound every sequence, got one of ", len, " at sequence ", i);
  }
  return starts;
}

struct Sequences {
  std::vector<int64_t> q, k;  // b + 1 row offsets each
};

Sequences check_sequences(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_q, int64_t max_k) {
  detail::check_varlen_args(q, k, v, cu_q, cu_k, max_q, max_k);
  return {sequence_starts(cu_q, "cu_seqlens_q", q.size(0), max_q, "max_seqlen_q"),
          sequence_starts(cu_k, "cu_seqlens_k", k.size(0), max_k, "max_seqlen_k")};
}

// Rows [start, end) of a packed (total, heads, dim) tensor as a batch of one: (1, end - start, heads, dim).
at::Tensor sequence(const at::Tensor& t, int64_t start, int64_t end) {
  return t.narrow(0, start, end - start).unsqueeze(0);
}

}  // namespace

namespace detail {

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_per_sequence(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  const auto s = check_sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  auto out = at::empty({q.size(0), q.size(1), v.size(2)}, q.options());
  auto lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(detail::lse_dtype(q.scalar_type())));
  // An empty packed input still gets flash_attention's argument checks (heads, head dims, ...).
  if (q.size(0) == 0) {
    flash_attention(sequence(q, 0, 0), sequence(k, 0, 0), sequence(v, 0, 0), std::nullopt, causal, scale,
                    alibi_slopes, window_left, window_right, softcap);
    return {out, lse};
  }
  for (size_t i = 0; i + 1 < s.q.size(); ++i) {
    const int64_t q0 = s.q[i], q1 = s.q[i + 1];
    if (q1 == q0) continue;
    auto [o, l] =
        flash_attention(sequence(q, q0, q1), sequence(k, s.k[i], s.k[i + 1]), sequence(v, s.k[i], s.k[i + 1]),
                        std::nullopt, causal, scale, alibi_slopes, window_left, window_right, softcap);
    out.narrow(0, q0, q1 - q0).copy_(o.squeeze(0));
    lse.narrow(1, q0, q1 - q0).copy_(l.squeeze(0));
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward_per_sequence(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  const auto s = check_sequences(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  const std::vector<int64_t> out_shape{q.size(0), q.size(1), v.size(2)}, lse_shape{q.size(1), q.size(0)};
  TORCH_CHECK(grad_out.sizes() == out_shape && out.sizes() == out_shape,
              "flash_attention_varlen_backward: expected grad_out and out of shape ",
              c10::IntArrayRef(out_shape), ", got ", grad_out.sizes(), " and ", out.sizes());
  TORCH_CHECK(lse.sizes() == lse_shape, "flash_attention_varlen_backward: expected lse of shape ",
              c10::IntArrayRef(lse_shape), ", got ", lse.sizes());
  auto dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);  // keys without queries: zero
  for (size_t i = 0; i + 1 < s.q.size(); ++i) {
    const int64_t q0 = s.q[i], q1 = s.q[i + 1], k0 = s.k[i], k1 = s.k[i + 1];
    if (q1 == q0 || k1 == k0) continue;
    auto [gq, gk, gv] = flash_attention_backward(
        sequence(grad_out, q0, q1), sequence(q, q0, q1), sequence(k, k0, k1), sequence(v, k0, k1),
        sequence(out, q0, q1), lse.narrow(1, q0, q1 - q0).unsqueeze(0), std::nullopt, causal, scale,
        alibi_slopes, window_left, window_right, softcap);
    dq.narrow(0, q0, q1 - q0).copy_(gq.squeeze(0));
    dk.narrow(0, k0, k1 - k0).copy_(gk.squeeze(0));
    dv.narrow(0, k0, k1 - k0).copy_(gv.squeeze(0));
  }
  return {dq, dk, dv};
}

}  // namespace detail

TORCH_LIBRARY_IMPL(xtc, CPU, m) {
  m.impl("flash_attention_varlen", &detail::flash_attention_varlen_per_sequence);
  m.impl("flash_attention_varlen_backward", &detail::flash_attention_varlen_backward_per_sequence);
}

}  // namespace xtc::ops
