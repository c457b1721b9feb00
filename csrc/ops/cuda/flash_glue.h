// Host glue shared by the CUDA kernels of xtc::flash_attention and xtc::flash_attention_varlen (defined in
// flash_attention_kernel.cu): the dtype and size checks of the CUDA kernels, the input layouts they read, and
// the kernel parameters filled from tensors.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k, dv head dim of v.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/backends.h>

#include <optional>

#include "ops/cuda/flash_params.h"
#include "ops/flash_attention_checks.h"

namespace xtc::ops::cuda_glue {

bool is_half_type(at::ScalarType t);

/// x as the kernels read it: 16-byte aligned rows for float16 / bfloat16 (cp.async), a unit last stride for
/// float32 / float64; copied once when it is not.
at::Tensor prepare_input(const at::Tensor& x);

/// x with 16-byte aligned rows whatever its dtype (the float32 tensor-core kernel's cp.async), copied once
/// when it has not.
at::Tensor prepare_aligned_rows(const at::Tensor& x);

/// The slopes as the kernels read them: contiguous float64.
std::optional<at::Tensor> prepare_slopes(const std::optional<at::Tensor>& alibi_slopes);

enum class Direction { kForward, kBackward };

/// The kernel family of a CUDA call (Hopper, mma.sync, warp-per-row, or float32 in the bfloat16 kernels),
/// through the backend setting of xtc/backends.h, with Hopper's measured size preference
/// (flash_attention_kernel.cu).
Backend choose_cuda_kernel(Direction direction, const at::Tensor& q, const detail::FlashAttentionSizes<>& s,
                           bool has_padding_mask);

/// The CUDA kernels' limits on dtypes, head dims and sizes, with `op` named in the message.
void check_cuda_route(const at::Tensor& q, const detail::FlashAttentionSizes<>& s, const char* op);

/// The fields the forward and the backward share, from (b, n, h, d) q and (b, m, hk, d / dv) k, v; causal
/// folded into the band. The tensors must outlive the launch.
void fill_common_params(cuda::FlashFwdParams& p, const detail::FlashAttentionSizes<>& s, const at::Tensor& q,
                        const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& slopes, bool causal, int64_t window_left,
                        int64_t window_right, double softcap);

/// The backward's saved forward results and incoming gradient: out and grad_out (b, n, h, dv), lse (b, h, n).
void fill_backward_inputs(cuda::FlashBwdParams& p, const at::Tensor& grad_out, const at::Tensor& out,
                          const at::Tensor& lse);

/// The forward's launch on `kernel`'s family (choose_cuda_kernel), dense or `packed` (flash_varlen.h).
void launch_forward(const cuda::FlashFwdParams& p, at::ScalarType dtype, int64_t head_dim, Backend kernel,
                    bool packed);

/// The backward's outputs and scratch, held until its launches are queued: the tensor-core path's dq_accum
/// (zeroed by its prologue), D and outputs in the input dtype; the warp-per-row path's zeroed accumulators,
/// which are its outputs. dq, dk, dv are (b, n, h, d), (b, m, hk, d), (b, m, hk, dv).
struct BackwardBuffers {
  at::Tensor dq, dk, dv, dq_accum, dsum;
};
BackwardBuffers attach_backward_buffers(cuda::FlashBwdParams& p, const detail::FlashAttentionSizes<>& s,
                                        const at::Tensor& q);

/// The backward's launches on `kernel`'s family, dense or `packed`.
void launch_backward(const cuda::FlashBwdParams& p, at::ScalarType dtype, int64_t head_dim, Backend kernel,
                     bool packed);

}  // namespace xtc::ops::cuda_glue
