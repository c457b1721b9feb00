// torch's float32 matmul precision on CUDA, read per call (ops/matmul_precision.h).
#include "ops/matmul_precision.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>

namespace xtc::ops {

namespace {

// The legacy setting, or `fallback` where torch refuses to answer it (after the two APIs were mixed).
at::Float32MatmulPrecision legacy_precision(at::Float32MatmulPrecision fallback) {
  try {
    return at::globalContext().float32MatmulPrecision();
  } catch (const c10::Error&) {
    return fallback;
  }
}

}  // namespace

MatmulPrecision cuda_fp32_matmul_precision() {
  using Legacy = at::Float32MatmulPrecision;
  switch (at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL)) {
    case at::Float32Precision::IEEE:
      return MatmulPrecision::Highest;
    case at::Float32Precision::TF32:
      return legacy_precision(Legacy::HIGH) == Legacy::MEDIUM ? MatmulPrecision::Medium
                                                              : MatmulPrecision::High;
    case at::Float32Precision::BF16:
      return MatmulPrecision::Medium;
    default:
      break;
  }
  switch (legacy_precision(Legacy::HIGHEST)) {
    case Legacy::MEDIUM:
      return MatmulPrecision::Medium;
    case Legacy::HIGH:
      return MatmulPrecision::High;
    default:
      return MatmulPrecision::Highest;
  }
}

const char* precision_name(MatmulPrecision precision) {
  switch (precision) {
    case MatmulPrecision::Highest:
      return "highest";
    case MatmulPrecision::High:
      return "high";
    default:
      return "medium";
  }
}

namespace {

// The tensor-core kernels' head dims: 32, 64 or 128, the same for values.
void check_tensor_core_head_dims(std::vector<std::string>& reasons, int64_t head_dim, int64_t value_head_dim,
                                 const char* kernels) {
  if ((head_dim != 32 && head_dim != 64 && head_dim != 128) || value_head_dim != head_dim)
    reasons.push_back("head dims " + std::to_string(head_dim) + " / " + std::to_string(value_head_dim) +
                      " (" + kernels + " take 32, 64 or 128, the same for values)");
}

}  // namespace

std::vector<std::string> fp32_as_bf16_reasons(at::ScalarType dtype, int64_t head_dim, int64_t value_head_dim,
                                              MatmulPrecision precision) {
  std::vector<std::string> reasons;
  if (dtype != at::kFloat)
    reasons.push_back(std::string(c10::toString(dtype)) + " is not float32 (the route is for float32 calls)");
  if (precision != MatmulPrecision::Medium)
    reasons.push_back(std::string("torch's float32 matmul precision is '") + precision_name(precision) +
                      "' (bfloat16 products need 'medium')");
  check_tensor_core_head_dims(reasons, head_dim, value_head_dim, "the bfloat16 kernels");
  return reasons;
}

std::vector<std::string> fp32_tensor_core_reasons(int64_t head_dim, int64_t value_head_dim) {
  std::vector<std::string> reasons;
  check_tensor_core_head_dims(reasons, head_dim, value_head_dim, "the float32 tensor-core kernels");
  return reasons;
}

}  // namespace xtc::ops
