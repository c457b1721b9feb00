// Launchers of the CUDA flash attention kernels, called by the host glue; each returns the first CUDA error
// of its attribute calls and launches (cudaSuccess when all went well). kVarlen: the packed form
// (flash_params.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "flash_params.h"

namespace xtc::cuda {

/// Tensor-core kernels: T is __half or __nv_bfloat16, kHeadDim in {32, 64, 128}, d == dv.
template <typename T, int kHeadDim, bool kVarlen = false>
cudaError_t run_flash_fwd(const FlashFwdParams& params, cudaStream_t stream);
template <typename T, int kHeadDim, bool kVarlen = false>
cudaError_t run_flash_bwd(const FlashBwdParams& params, cudaStream_t stream);
/// The same on Hopper warpgroup MMA, kHeadDim in {64, 128}: launch only on a compute capability 9.0 device
/// from a build with sm_90a code (XTC_CUDA_SM90A); elsewhere their kernels trap.
template <typename T, int kHeadDim, bool kVarlen = false>
cudaError_t run_flash_fwd_sm90(const FlashFwdParams& params, cudaStream_t stream);
template <typename T, int kHeadDim, bool kVarlen = false>
cudaError_t run_flash_bwd_sm90(const FlashBwdParams& params, cudaStream_t stream);

/// Tensor-core float32 forward (flash_fwd_tf32.cuh): TF32 products, 3xTF32 with kSplit; kHeadDim in {32, 64,
/// 128}, d == dv. Dense only.
template <int kHeadDim, bool kSplit>
cudaError_t run_flash_fwd_tf32(const FlashFwdParams& params, cudaStream_t stream);

/// Simple kernels without tensor cores for float and double inputs, any d, dv <= kSimpleMaxHeadDim.
constexpr int kSimpleMaxHeadDim = 256;
template <typename T, bool kVarlen = false>
cudaError_t run_flash_fwd_simple(const FlashFwdParams& params, cudaStream_t stream);
template <typename T, bool kVarlen = false>
cudaError_t run_flash_bwd_simple(const FlashBwdParams& params, cudaStream_t stream);

}  // namespace xtc::cuda
