// CUDA kernels of xtc::flash_attention_varlen. With the cuda_varlen_one_launch backend enabled (off by
// default: no GPU has run it yet), each direction is one launch of the Hopper, mma.sync or warp-per-row
// kernels (the dense op's choice) over the packed frame (flash_varlen.h): the grid spans the longest
// sequence, every CTA reads its sequence's offsets on the device, so there is no host sync and a CUDA graph
// can capture the call. The offsets are then trusted as FlashAttention's varlen functions trust them (the
// kernels clamp them into the tensors, so bad ones cannot reach outside memory); the per-sequence path, taken
// otherwise, reads and checks them on the host.
//
// Shape legend: total_q / total_k packed rows, b sequences, h query heads, hk kv heads, d, dv head dims.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <xtc/backends.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "ops/cuda/flash_glue.h"
#include "ops/flash_attention_varlen_checks.h"
#include "ops/flash_attention_varlen_per_sequence.h"

namespace xtc::ops {
namespace {

using cuda_glue::Direction;
using cuda_glue::is_half_type;
using cuda_glue::prepare_input;

constexpr const char* kOp = "flash_attention_varlen";

// The op's checks without reading the offsets: the varlen shapes, then flash_attention's own on the frame (q,
// k, v as batch 1), the CUDA kernels' limits, and the grid's.
detail::FlashAttentionSizes<> check_packed_call(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t max_q,
                                                int64_t max_k, std::optional<double> scale,
                                                const std::optional<at::Tensor>& slopes, int64_t window_left,
                                                int64_t window_right, double softcap) {
  detail::check_varlen_args(q, k, v, cu_q, cu_k, max_q, max_k);
  const auto s =
      detail::check_flash_attention_args(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), std::nullopt, scale,
                                         slopes, window_left, window_right, softcap);
  cuda_glue::check_cuda_route(q, s, kOp);
  TORCH_CHECK(cu_q.device() == q.device() && cu_k.device() == q.device(), kOp,
              ": expected cu_seqlens_q and cu_seqlens_k on q's device (", q.device(), "), got ",
              cu_q.device(), " and ", cu_k.device());
  TORCH_CHECK(cu_q.size(0) - 1 <= 65535, kOp, ": expected at most 65535 sequences (grid limit), got ",
              cu_q.size(0) - 1);
  TORCH_CHECK(q.size(0) == 0 || cu_q.size(0) >= 2, kOp,
              ": expected cu_seqlens_q of at least one sequence for ", q.size(0), " query rows");
  TORCH_CHECK(q.size(0) == 0 || max_q >= 1, kOp, ": expected max_seqlen_q >= 1 for ", q.size(0),
              " query rows");
  TORCH_CHECK(k.size(0) == 0 || max_k >= 1, kOp, ": expected max_seqlen_k >= 1 for ", k.size(0), " key rows");
  return s;
}

// The frame's parameters: q (1, total_q, h, d), k and v (1, total_k, hk, .), the offsets and the grid
// extents.
void fill_packed_params(cuda::FlashFwdParams& p, const detail::FlashAttentionSizes<>& s, const at::Tensor& q,
                        const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                        const at::Tensor& cu_k, int64_t max_q, int64_t max_k,
                        const std::optional<at::Tensor>& slopes, bool causal, int64_t window_left,
                        int64_t window_right, double softcap) {
  cuda_glue::fill_common_params(p, s, q, k, v, std::nullopt, slopes, causal, window_left, window_right,
                                softcap);
  p.cu_seqlens_q = cu_q.data_ptr<int>();
  p.cu_seqlens_k = cu_k.data_ptr<int>();
  p.sequences = static_cast<int>(cu_q.size(0) - 1);
  p.max_queries = static_cast<int>(std::min<int64_t>(max_q, s.queries));
  p.max_keys = static_cast<int>(std::min<int64_t>(max_k, s.keys));
  p.lse_head_stride = s.queries;
}

bool one_launch() { return backend_enabled(Backend::CudaVarlenOneLaunch); }

// The kernel family: for float16 / bfloat16 the dense op's choice (xtc/backends.h) for a sequence as long as
// the longest, whose keys its Hopper size preference reads; float32 / float64 the warp-per-row kernels (the
// float32 routes have no packed form).
Backend packed_kernel(Direction direction, const at::Tensor& q, detail::FlashAttentionSizes<> s,
                      int64_t max_keys) {
  if (!is_half_type(q.scalar_type())) return Backend::CudaSimple;
  s.keys = max_keys;
  return cuda_glue::choose_cuda_kernel(direction, q, s, /*has_padding_mask=*/false);
}

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  if (!one_launch())
    return detail::flash_attention_varlen_per_sequence(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k,
                                                       max_seqlen_q, max_seqlen_k, causal, scale,
                                                       alibi_slopes, window_left, window_right, softcap);
  const auto s = check_packed_call(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   scale, alibi_slopes, window_left, window_right, softcap);
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto out = at::empty({s.queries, s.heads, s.value_head_dim}, q_in.options());
  auto lse = at::empty({s.heads, s.queries}, q_in.options().dtype(detail::lse_dtype(q_in.scalar_type())));
  if (out.numel() == 0) return {out, lse};

  const at::Tensor q = prepare_input(q_in).unsqueeze(0), k = prepare_input(k_in).unsqueeze(0);
  const at::Tensor v = prepare_input(v_in).unsqueeze(0), out_frame = out.unsqueeze(0);
  const at::Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  const auto slopes = cuda_glue::prepare_slopes(alibi_slopes);
  cuda::FlashFwdParams p{};
  fill_packed_params(p, s, q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, slopes, causal, window_left,
                     window_right, softcap);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  p.o_batch_stride = out_frame.stride(0), p.o_row_stride = out_frame.stride(1);
  p.o_head_stride = out_frame.stride(2);
  const Backend kernel = packed_kernel(Direction::kForward, q, s, p.max_keys);
  cuda_glue::launch_forward(p, q.scalar_type(), s.head_dim, kernel, /*packed=*/true);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  if (!one_launch())
    return detail::flash_attention_varlen_backward_per_sequence(
        grad_out_in, q_in, k_in, v_in, out_in, lse_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        causal, scale, alibi_slopes, window_left, window_right, softcap);
  const auto s = check_packed_call(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   scale, alibi_slopes, window_left, window_right, softcap);
  // The frame's dense backward checks: grad_out and out (1, total_q, h, dv), lse (1, h, total_q).
  detail::check_flash_attention_backward_args(grad_out_in.unsqueeze(0), out_in.unsqueeze(0),
                                              lse_in.unsqueeze(0), q_in.unsqueeze(0), s);
  const c10::cuda::CUDAGuard guard(q_in.device());
  if (s.queries * s.heads == 0 || s.keys == 0)  // nothing attends: every gradient is an exact zero
    return {at::zeros_like(q_in), at::zeros_like(k_in), at::zeros_like(v_in)};
  at::globalContext().alertNotDeterministic(
      "xtc::flash_attention_varlen_backward on CUDA (dQ accumulates with atomics)");

  const auto dtype = q_in.scalar_type();
  const at::Tensor grad_out = prepare_input(grad_out_in.to(dtype)).unsqueeze(0);
  const at::Tensor q = prepare_input(q_in).unsqueeze(0), k = prepare_input(k_in).unsqueeze(0);
  const at::Tensor v = prepare_input(v_in).unsqueeze(0), out = prepare_input(out_in).unsqueeze(0);
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  const auto slopes = cuda_glue::prepare_slopes(alibi_slopes);
  cuda::FlashBwdParams p{};
  fill_packed_params(p, s, q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, slopes, causal, window_left,
                     window_right, softcap);
  cuda_glue::fill_backward_inputs(p, grad_out, out, lse);
  const cuda_glue::BackwardBuffers buffers = cuda_glue::attach_backward_buffers(p, s, q);
  const Backend kernel = packed_kernel(Direction::kBackward, q, s, p.max_keys);
  cuda_glue::launch_backward(p, dtype, s.head_dim, kernel, /*packed=*/true);
  return {buffers.dq.squeeze(0), buffers.dk.squeeze(0), buffers.dv.squeeze(0)};
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_IMPL(xtc, CUDA, m) {
  m.impl("flash_attention_varlen", TORCH_FN(xtc::ops::flash_attention_varlen_forward_kernel));
  m.impl("flash_attention_varlen_backward", TORCH_FN(xtc::ops::flash_attention_varlen_backward_kernel));
}
