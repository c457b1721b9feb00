// CUDA kernels of xtc::flash_attention: argument checks, dtype / head-dim dispatch and launches. The kernels
// themselves live in flash_fwd.cuh / flash_bwd.cuh and their Hopper versions flash_fwd_sm90.cuh /
// flash_bwd_sm90.cuh, instantiated one per file under instantiations/.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k, dv head dim of v.
//
// Routing: float16 / bfloat16 with d == dv in {32, 64, 128} run the tensor-core kernels (fp32 accumulation);
// float32 / float64 run a simple kernel in their own precision (any d, dv <= 256), so a float input is never
// rounded to 16 bits behind the caller's back. Two opt-in routes for float32, off until a GPU has run them,
// follow torch's float32 matmul precision (ops/matmul_precision.h): the tensor-core forward
// (cuda_fp32_tensor_cores: 3xTF32 products at 'highest', TF32 below), and at 'medium', which lets torch's own
// matmuls use bfloat16 products, the bfloat16 kernels (cuda_fp32_as_bf16). Anything else fails
// with a message naming the value. On a Hopper GPU (compute capability 9.0) the half-precision forward and
// backward with d in {64, 128} run the warpgroup-MMA kernels when the build has sm_90a code (XTC_CUDA_SM90A,
// set by the build when 90a is among the architectures), except for short masked calls (choose_cuda_kernel,
// through the backend setting of xtc/backends.h).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream without ATen/cuda's cuBLAS/cuSPARSE headers
#include <torch/library.h>
#include <xtc/backends.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ops/cuda/flash_glue.h"
#include "ops/cuda/flash_launch.h"
#include "ops/cuda/static_switch.h"
#include "ops/flash_attention_checks.h"
#include "ops/matmul_precision.h"

namespace xtc::ops {

namespace cuda_glue {

bool is_half_type(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

namespace {

// The simple kernels only need a contiguous last dim.
at::Tensor with_unit_last_stride(const at::Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

}  // namespace

// The tensor-core kernels copy rows with 16-byte cp.async: the base pointer and every stride must be 16-byte
// multiples. Anything else (a slice at an odd offset, a non-contiguous last dim) is copied once here.
at::Tensor prepare_aligned_rows(const at::Tensor& x) {
  const int64_t elems_per_16_bytes = 16 / static_cast<int64_t>(x.element_size());
  bool ok = x.stride(-1) == 1 && reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) ok = ok && x.stride(i) % elems_per_16_bytes == 0;
  return ok ? x : x.contiguous();
}

at::Tensor prepare_input(const at::Tensor& x) {
  return is_half_type(x.scalar_type()) ? prepare_aligned_rows(x) : with_unit_last_stride(x);
}

void check_cuda_route(const at::Tensor& q, const detail::FlashAttentionSizes<>& s, const char* op) {
  TORCH_CHECK(q.is_cuda(), op, " (CUDA): expected q on a CUDA device, got ", q.device());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(is_half_type(dtype) || dtype == at::kFloat || dtype == at::kDouble, op,
              " (CUDA): expected q, k, v of dtype float16, bfloat16, float32 or float64, got ", dtype);
  if (is_half_type(dtype)) {
    TORCH_CHECK(s.head_dim == 32 || s.head_dim == 64 || s.head_dim == 128, op, " (CUDA): head_dim ",
                s.head_dim, " is not supported for ", dtype,
                "; expected 32, 64 or 128 (float32/float64 inputs take a slower kernel for head dims up to ",
                cuda::kSimpleMaxHeadDim, ")");
    TORCH_CHECK(s.value_head_dim == s.head_dim, op, " (CUDA): expected the value head dim to equal ",
                "the query/key head dim (", s.head_dim, ") for ", dtype, ", got ", s.value_head_dim);
  } else {
    TORCH_CHECK(s.head_dim <= cuda::kSimpleMaxHeadDim && s.value_head_dim <= cuda::kSimpleMaxHeadDim, op,
                " (CUDA): expected head dims <= ", cuda::kSimpleMaxHeadDim, " for ", dtype, ", got q/k ",
                s.head_dim, " and v ", s.value_head_dim);
  }
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(s.batch <= 65535 && s.heads <= 65535, op,
              " (CUDA): expected batch and heads <= 65535 (grid limits), got batch ", s.batch, " and heads ",
              s.heads);
  // Row and key indices (and i + m - n +- window) are 32-bit ints in the kernels.
  TORCH_CHECK(s.queries + s.keys < kIntMax, op, " (CUDA): expected queries + keys < ", kIntMax, ", got ",
              s.queries, " + ", s.keys);
}

void fill_common_params(cuda::FlashFwdParams& p, const detail::FlashAttentionSizes<>& s, const at::Tensor& q,
                        const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& slopes, bool causal, int64_t window_left,
                        int64_t window_right, double softcap) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  p.key_padding_mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  p.mask_batch_stride = mask.has_value() ? mask->stride(0) : 0;
  p.mask_key_stride = mask.has_value() ? mask->stride(1) : 0;
  p.alibi_slopes = slopes.has_value() ? slopes->data_ptr<double>() : nullptr;
  p.batch = static_cast<int>(s.batch), p.queries = static_cast<int>(s.queries),
  p.keys = static_cast<int>(s.keys);
  p.heads = static_cast<int>(s.heads), p.kv_heads = static_cast<int>(s.kv_heads);
  p.head_dim = static_cast<int>(s.head_dim), p.value_head_dim = static_cast<int>(s.value_head_dim);
  p.key_offset = static_cast<int>(s.key_offset);
  p.lse_head_stride = s.queries;
  p.scale = s.scale;
  p.softcap = softcap;
  // Fold causal into the right edge of the band: visible iff j <= i + off + min(right, 0).
  p.has_left = window_left >= 0;
  p.window_left = static_cast<int>(p.has_left ? std::min<int64_t>(window_left, s.keys + s.queries) : 0);
  p.has_right = causal || window_right >= 0;
  int64_t right = causal ? (window_right >= 0 ? std::min<int64_t>(window_right, 0) : 0) : window_right;
  p.window_right = static_cast<int>(p.has_right ? std::min<int64_t>(right, s.keys + s.queries) : 0);
}

void fill_backward_inputs(cuda::FlashBwdParams& p, const at::Tensor& grad_out, const at::Tensor& out,
                          const at::Tensor& lse) {
  p.out = const_cast<void*>(out.data_ptr());
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  p.lse = const_cast<void*>(lse.data_ptr());
  p.dout = grad_out.data_ptr();
  p.do_batch_stride = grad_out.stride(0), p.do_row_stride = grad_out.stride(1);
  p.do_head_stride = grad_out.stride(2);
}

std::optional<at::Tensor> prepare_slopes(const std::optional<at::Tensor>& alibi_slopes) {
  if (!alibi_slopes.has_value()) return std::nullopt;
  // The kernels read the slopes as double, whatever dtype the caller keeps them in.
  return alibi_slopes->to(at::kDouble).contiguous();
}

namespace {

// Which kernel family runs a call (xtc/backends.h): float16 / bfloat16 take the Hopper (warpgroup MMA)
// kernels or the mma.sync ones, float32 / float64 the simple kernels. Hopper needs d in {64, 128}, a compute
// capability 9.0 device and a build with sm_90a code. Among those calls, short masked ones stay on the
// mma.sync kernels, which measured faster there on an H100 (benchmarks/NOTES.md, third session: one Hopper
// CTA per SM and 128-key tiles leave the load prologue and the mask scan exposed when a CTA sees few tiles):
//   forward:  Hopper when m > 1024, or d = 128 without a key padding mask;
//   backward: Hopper when d = 128, m > 1024, or without a key padding mask.
// That preference yields to the backend setting: with mma.sync disabled, or a priority order set, Hopper
// takes every call it can run. Every family computes the same op.
std::vector<std::string> hopper_reasons(Direction direction, const detail::FlashAttentionSizes<>& s,
                                        bool has_padding_mask, c10::DeviceIndex device) {
  std::vector<std::string> reasons;
#ifdef XTC_CUDA_SM90A
  if (s.head_dim != 64 && s.head_dim != 128)
    reasons.push_back("head dim " + std::to_string(s.head_dim) + " (the Hopper kernels take 64 or 128)");
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9 || minor != 0)
    reasons.push_back("compute capability " + std::to_string(major) + "." + std::to_string(minor) +
                      " (needs 9.0)");
  const bool long_keys = s.keys > 1024;
  const bool preferred = direction == Direction::kForward
                             ? long_keys || (s.head_dim == 128 && !has_padding_mask)
                             : s.head_dim == 128 || long_keys || !has_padding_mask;
  if (!preferred && backend_priority().empty() && backend_enabled(Backend::CudaMmaSync))
    reasons.emplace_back("a short masked call: the mma.sync kernels measured faster there");
#else
  (void)direction;
  (void)s;
  (void)has_padding_mask;
  (void)device;
  reasons.emplace_back("this build has no sm_90a code");
#endif
  return reasons;
}

}  // namespace

Backend choose_cuda_kernel(Direction direction, const at::Tensor& q, const detail::FlashAttentionSizes<>& s,
                           bool has_padding_mask) {
  const bool half = is_half_type(q.scalar_type());
  const std::string dtype = c10::toString(q.scalar_type());
  const Backend hopper =
      direction == Direction::kForward ? Backend::CudaHopperForward : Backend::CudaHopperBackward;
  std::vector<std::string> hopper_no, mma_no, simple_no;
  if (half) {
    hopper_no = hopper_reasons(direction, s, has_padding_mask, q.device().index());
    simple_no.push_back(dtype + " runs on the tensor-core kernels");
  } else {
    hopper_no.push_back(dtype + " is not a tensor-core dtype here (float16 / bfloat16)");
    mma_no = hopper_no;
  }
  const char* site =
      direction == Direction::kForward ? "flash_attention (CUDA forward)" : "flash_attention (CUDA backward)";
  std::vector<BackendCandidate> candidates = {{hopper, std::move(hopper_no)},
                                              {Backend::CudaMmaSync, std::move(mma_no)},
                                              {Backend::CudaSimple, std::move(simple_no)}};
  // float32: the tensor-core forward (TF32 / 3xTF32 by the matmul precision) before the warp-per-row kernel;
  // at 'medium' the bfloat16 kernels before both, as torch's own matmuls may take bfloat16 there.
  if (q.scalar_type() == at::kFloat) {
    if (direction == Direction::kForward)
      candidates.insert(candidates.begin(), {Backend::CudaFp32TensorCores,
                                             fp32_tensor_core_reasons(s.head_dim, s.value_head_dim)});
    candidates.insert(candidates.begin(),
                      {Backend::CudaFp32AsBf16, fp32_as_bf16_reasons(at::kFloat, s.head_dim, s.value_head_dim,
                                                                     cuda_fp32_matmul_precision())});
  }
  return choose_backend(site, std::move(candidates));
}

namespace {

// The float32 tensor-core forward: 3xTF32 products at torch's matmul precision 'highest', TF32 below.
void launch_tf32_forward(const cuda::FlashFwdParams& p, int64_t head_dim, cudaStream_t stream) {
  const bool split = cuda_fp32_matmul_precision() == MatmulPrecision::Highest;
  XTC_HEADDIM_SWITCH(head_dim, kHeadDim, [&] {
    if (split) {
      C10_CUDA_CHECK((cuda::run_flash_fwd_tf32<kHeadDim, true>(p, stream)));
    } else {
      C10_CUDA_CHECK((cuda::run_flash_fwd_tf32<kHeadDim, false>(p, stream)));
    }
  });
}

template <bool kVarlen>
void launch_forward_as(const cuda::FlashFwdParams& p, at::ScalarType dtype, int64_t head_dim,
                       Backend kernel) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (is_half_type(dtype)) {
    const bool hopper = kernel == Backend::CudaHopperForward;
    XTC_HALF_SWITCH(dtype == at::kBFloat16, elem_t, [&] {
      XTC_HEADDIM_SWITCH(head_dim, kHeadDim, [&] {
        if constexpr (kHeadDim >= 64) {
          if (hopper) {
            C10_CUDA_CHECK((cuda::run_flash_fwd_sm90<elem_t, kHeadDim, kVarlen>(p, stream)));
            return;
          }
        }
        C10_CUDA_CHECK((cuda::run_flash_fwd<elem_t, kHeadDim, kVarlen>(p, stream)));
      });
    });
  } else if (kernel == Backend::CudaFp32TensorCores) {
    TORCH_INTERNAL_ASSERT(!kVarlen, "the float32 tensor-core forward has no packed form");
    launch_tf32_forward(p, head_dim, stream);
  } else if (dtype == at::kFloat) {
    C10_CUDA_CHECK((cuda::run_flash_fwd_simple<float, kVarlen>(p, stream)));
  } else {
    C10_CUDA_CHECK((cuda::run_flash_fwd_simple<double, kVarlen>(p, stream)));
  }
}

template <bool kVarlen>
void launch_backward_as(const cuda::FlashBwdParams& p, at::ScalarType dtype, int64_t head_dim,
                        Backend kernel) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (is_half_type(dtype)) {
    const bool hopper = kernel == Backend::CudaHopperBackward;
    XTC_HALF_SWITCH(dtype == at::kBFloat16, elem_t, [&] {
      XTC_HEADDIM_SWITCH(head_dim, kHeadDim, [&] {
        if constexpr (kHeadDim >= 64) {
          if (hopper) {
            C10_CUDA_CHECK((cuda::run_flash_bwd_sm90<elem_t, kHeadDim, kVarlen>(p, stream)));
            return;
          }
        }
        C10_CUDA_CHECK((cuda::run_flash_bwd<elem_t, kHeadDim, kVarlen>(p, stream)));
      });
    });
  } else if (dtype == at::kFloat) {
    C10_CUDA_CHECK((cuda::run_flash_bwd_simple<float, kVarlen>(p, stream)));
  } else {
    C10_CUDA_CHECK((cuda::run_flash_bwd_simple<double, kVarlen>(p, stream)));
  }
}

}  // namespace

void launch_forward(const cuda::FlashFwdParams& p, at::ScalarType dtype, int64_t head_dim, Backend kernel,
                    bool packed) {
  packed ? launch_forward_as<true>(p, dtype, head_dim, kernel)
         : launch_forward_as<false>(p, dtype, head_dim, kernel);
}

BackwardBuffers attach_backward_buffers(cuda::FlashBwdParams& p, const detail::FlashAttentionSizes<>& s,
                                        const at::Tensor& q) {
  const auto acc = q.options().dtype(detail::lse_dtype(q.scalar_type()));
  const bool half = is_half_type(q.scalar_type());
  const auto make = [&](c10::IntArrayRef sizes) {
    return half ? at::empty(sizes, q.options()) : at::zeros(sizes, acc);
  };
  BackwardBuffers b{make({s.batch, s.queries, s.heads, s.head_dim}),
                    make({s.batch, s.keys, s.kv_heads, s.head_dim}),
                    make({s.batch, s.keys, s.kv_heads, s.value_head_dim}),
                    {},
                    {}};
  if (half) {
    // The kernels zero dq_accum, accumulate dS K into it without the softmax scale, and write dq = scale *
    // dq_accum.
    b.dq_accum = at::empty({s.batch, s.queries, s.heads, s.head_dim}, acc);
    b.dsum = at::empty({s.batch, s.heads, s.queries}, acc);
    p.dq_accum = b.dq_accum.data_ptr(), p.dsum = b.dsum.data_ptr();
    p.dq = b.dq.data_ptr(), p.dk = b.dk.data_ptr(), p.dv = b.dv.data_ptr();
  } else {
    p.dq_accum = b.dq.data_ptr(), p.dk_accum = b.dk.data_ptr(), p.dv_accum = b.dv.data_ptr();
  }
  return b;
}

void launch_backward(const cuda::FlashBwdParams& p, at::ScalarType dtype, int64_t head_dim, Backend kernel,
                     bool packed) {
  packed ? launch_backward_as<true>(p, dtype, head_dim, kernel)
         : launch_backward_as<false>(p, dtype, head_dim, kernel);
}

}  // namespace cuda_glue

namespace {

using namespace cuda_glue;

at::Tensor as_bf16(const at::Tensor& x) { return x.to(at::kBFloat16); }

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& key_padding_mask, bool causal, std::optional<double> scale,
    const std::optional<at::Tensor>& alibi_slopes, int64_t window_left, int64_t window_right,
    double softcap) {
  const auto s = detail::check_flash_attention_args(q_in, k_in, v_in, key_padding_mask, scale, alibi_slopes,
                                                    window_left, window_right, softcap);
  check_cuda_route(q_in, s, "flash_attention");
  const c10::cuda::CUDAGuard guard(q_in.device());

  const auto dtype = q_in.scalar_type();
  at::Tensor out = at::empty({s.batch, s.queries, s.heads, s.value_head_dim}, q_in.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.queries}, q_in.options().dtype(detail::lse_dtype(dtype)));
  if (out.numel() == 0) return {out, lse};

  const Backend kernel = choose_cuda_kernel(Direction::kForward, q_in, s, key_padding_mask.has_value());
  if (kernel == Backend::CudaFp32AsBf16) {
    auto [out_bf16, lse_float] =
        flash_attention_forward_kernel(as_bf16(q_in), as_bf16(k_in), as_bf16(v_in), key_padding_mask, causal,
                                       scale, alibi_slopes, window_left, window_right, softcap);
    return {out_bf16.to(at::kFloat), lse_float};
  }
  // The float32 tensor-core kernel copies rows 16 bytes at a time, as the half-precision ones do.
  const bool tf32 = kernel == Backend::CudaFp32TensorCores;
  const auto prepare = [&](const at::Tensor& x) { return tf32 ? prepare_aligned_rows(x) : prepare_input(x); };
  const at::Tensor q = prepare(q_in), k = prepare(k_in), v = prepare(v_in);
  const auto slopes = prepare_slopes(alibi_slopes);
  cuda::FlashFwdParams p{};
  fill_common_params(p, s, q, k, v, key_padding_mask, slopes, causal, window_left, window_right, softcap);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(1), p.o_head_stride = out.stride(2);
  launch_forward(p, dtype, s.head_dim, kernel, /*packed=*/false);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes,
    int64_t window_left, int64_t window_right, double softcap) {
  const auto s = detail::check_flash_attention_args(q_in, k_in, v_in, key_padding_mask, scale, alibi_slopes,
                                                    window_left, window_right, softcap);
  check_cuda_route(q_in, s, "flash_attention");
  const auto dtype = q_in.scalar_type();
  detail::check_flash_attention_backward_args(grad_out_in, out_in, lse_in, q_in, s);
  const c10::cuda::CUDAGuard guard(q_in.device());

  if (s.batch * s.heads * s.queries == 0 || s.keys == 0) {
    // Nothing to attend: every gradient is an exact zero.
    return {at::zeros(q_in.sizes(), q_in.options()), at::zeros(k_in.sizes(), k_in.options()),
            at::zeros(v_in.sizes(), v_in.options())};
  }

  const Backend kernel = choose_cuda_kernel(Direction::kBackward, q_in, s, key_padding_mask.has_value());
  if (kernel == Backend::CudaFp32AsBf16) {
    auto [dq, dk, dv] = flash_attention_backward_kernel(
        as_bf16(grad_out_in), as_bf16(q_in), as_bf16(k_in), as_bf16(v_in), as_bf16(out_in), lse_in,
        key_padding_mask, causal, scale, alibi_slopes, window_left, window_right, softcap);
    return {dq.to(at::kFloat), dk.to(at::kFloat), dv.to(at::kFloat)};
  }
  // dQ accumulates across key tiles with atomics (dK and dV too in the warp-per-row kernels): the order of
  // the additions, so the last bits, vary from run to run. Under torch.use_deterministic_algorithms(True)
  // this raises (warns with warn_only), as torch's own non-deterministic CUDA ops do.
  at::globalContext().alertNotDeterministic(
      "xtc::flash_attention_backward on CUDA (dQ accumulates with atomics)");
  // autograd may hand a gradient of another dtype (e.g. float for a bf16 output); the kernels read q's dtype.
  const at::Tensor grad_out = prepare_input(grad_out_in.to(dtype));
  const at::Tensor q = prepare_input(q_in), k = prepare_input(k_in), v = prepare_input(v_in);
  const at::Tensor out = prepare_input(out_in);
  const at::Tensor lse = lse_in.contiguous();
  const auto slopes = prepare_slopes(alibi_slopes);

  cuda::FlashBwdParams p{};
  fill_common_params(p, s, q, k, v, key_padding_mask, slopes, causal, window_left, window_right, softcap);
  fill_backward_inputs(p, grad_out, out, lse);

  const BackwardBuffers buffers = attach_backward_buffers(p, s, q);
  launch_backward(p, dtype, s.head_dim, kernel, /*packed=*/false);
  return {buffers.dq, buffers.dk, buffers.dv};
}

}  // namespace

}  // namespace xtc::ops

TORCH_LIBRARY_IMPL(xtc, CUDA, m) {
  m.impl("flash_attention", TORCH_FN(xtc::ops::flash_attention_forward_kernel));
  m.impl("flash_attention_backward", TORCH_FN(xtc::ops::flash_attention_backward_kernel));
}
