// torch's precision setting for float32 matmuls on CUDA, and what it allows our CUDA kernels: read per call,
// so torch.backends.cuda.matmul.fp32_precision and torch.set_float32_matmul_precision steer our attention as
// they steer torch's matmuls.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xtc::ops {

/// torch.backends.cuda.matmul.fp32_precision (the 2.9+ setting), with the legacy
/// torch.set_float32_matmul_precision telling 'medium' from 'high' (both TF32 in the new one).
enum class MatmulPrecision { Highest, High, Medium };
MatmulPrecision cuda_fp32_matmul_precision();
const char* precision_name(MatmulPrecision precision);

/// Why a float32 call on CUDA cannot run in the bfloat16 tensor-core kernels (empty: it can). torch allows
/// bfloat16 products for float32 matmuls at 'medium' only; the kernels take head dims 32, 64, 128 with dv ==
/// d.
std::vector<std::string> fp32_as_bf16_reasons(at::ScalarType dtype, int64_t head_dim, int64_t value_head_dim,
                                              MatmulPrecision precision);

/// Why a float32 forward on CUDA cannot run in the tensor-core float32 kernel (empty: it can): it takes head
/// dims 32, 64, 128 with dv == d. Its products follow the precision: 3xTF32 at 'highest', TF32 below.
std::vector<std::string> fp32_tensor_core_reasons(int64_t head_dim, int64_t value_head_dim);

}  // namespace xtc::ops
