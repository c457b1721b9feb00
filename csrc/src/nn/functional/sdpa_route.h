// fp32 attention on CUDA through torch's own SDPA kernels, for calls that need none of our rules: the
// warp-per-row CUDA kernel has no tensor cores. Off by default (the cuda_sdpa_fp32 backend) until a GPU has
// run and timed it. Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

#include "ops/matmul_precision.h"

namespace xtc::nn::functional::detail {

using ops::MatmulPrecision;  // read per call by ops::cuda_fp32_matmul_precision()

/// What the route needs to know of one attention call.
struct SdpaCall {
  c10::Device device = c10::Device(c10::kCPU);
  at::ScalarType dtype = at::kFloat;
  int64_t queries = 0, keys = 0, heads = 0, kv_heads = 0, dim_head = 0, value_dim_head = 0;
  bool causal = false, key_mask = false, alibi = false, window = false, softcap = false, sharded = false;
};

/// Why torch's SDPA cannot take the call for us (empty: it can), named checks as flash_reasons.
std::vector<std::string> sdpa_fp32_reasons(const SdpaCall& call);

/// The call in torch's kernels, with their own autograd: the memory-efficient kernel (fp32-accurate) at
/// 'highest'; cuBLAS attention (TF32 products, the scores materialised) at 'high' and 'medium'. q (b, n, h,
/// d), k and v (b, m, h, d|dv); returns (b, n, h, dv).
at::Tensor sdpa_fp32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, double scale,
                     MatmulPrecision precision);

}  // namespace xtc::nn::functional::detail
