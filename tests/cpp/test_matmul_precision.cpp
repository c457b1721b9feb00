// torch's float32 matmul precision read back from its own switches (ops/matmul_precision.h), and the reasons
// that keep a float32 CUDA call out of the bfloat16 kernels or the float32 tensor-core forward. The numbers
// of that route need a GPU (tests/python/test_flash_attention_cuda.py, benchmarks/gpu_check.sh).
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <string>

#include "ops/matmul_precision.h"

namespace {

using xtc::ops::cuda_fp32_matmul_precision;
using xtc::ops::fp32_as_bf16_reasons;
using xtc::ops::fp32_tensor_core_reasons;
using xtc::ops::MatmulPrecision;

TEST(MatmulPrecision, ReadsTorchsSwitches) {
  auto& context = at::globalContext();
  context.setFloat32MatmulPrecision("high");
  EXPECT_EQ(cuda_fp32_matmul_precision(), MatmulPrecision::High);
  context.setFloat32MatmulPrecision("medium");
  EXPECT_EQ(cuda_fp32_matmul_precision(), MatmulPrecision::Medium);
  context.setFloat32MatmulPrecision("highest");
  EXPECT_EQ(cuda_fp32_matmul_precision(), MatmulPrecision::Highest);
  // The 2.9+ setting for CUDA matmuls alone, which leaves the two APIs mixed: read without an error.
  context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::TF32);
  EXPECT_EQ(cuda_fp32_matmul_precision(), MatmulPrecision::High);
  context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
  EXPECT_EQ(cuda_fp32_matmul_precision(), MatmulPrecision::Highest);
  context.setFloat32MatmulPrecision("highest");
}

bool mentions(const std::vector<std::string>& reasons, const std::string& word) {
  for (const auto& r : reasons)
    if (r.find(word) != std::string::npos) return true;
  return false;
}

TEST(MatmulPrecision, Fp32RunsInBf16KernelsOnlyAtMedium) {
  EXPECT_TRUE(fp32_as_bf16_reasons(at::kFloat, 64, 64, MatmulPrecision::Medium).empty());
  EXPECT_TRUE(fp32_as_bf16_reasons(at::kFloat, 128, 128, MatmulPrecision::Medium).empty());
  EXPECT_TRUE(mentions(fp32_as_bf16_reasons(at::kFloat, 64, 64, MatmulPrecision::High), "'high'"));
  EXPECT_TRUE(mentions(fp32_as_bf16_reasons(at::kFloat, 64, 64, MatmulPrecision::Highest), "'highest'"));
}

TEST(MatmulPrecision, Fp32AsBf16NamesDtypeAndHeadDims) {
  EXPECT_TRUE(mentions(fp32_as_bf16_reasons(at::kDouble, 64, 64, MatmulPrecision::Medium), "Double"));
  EXPECT_TRUE(mentions(fp32_as_bf16_reasons(at::kBFloat16, 64, 64, MatmulPrecision::Medium), "BFloat16"));
  EXPECT_TRUE(
      mentions(fp32_as_bf16_reasons(at::kFloat, 80, 80, MatmulPrecision::Medium), "head dims 80 / 80"));
  EXPECT_TRUE(
      mentions(fp32_as_bf16_reasons(at::kFloat, 64, 32, MatmulPrecision::Medium), "head dims 64 / 32"));
  EXPECT_EQ(fp32_as_bf16_reasons(at::kHalf, 40, 40, MatmulPrecision::High).size(), 3u);
}

TEST(MatmulPrecision, Fp32TensorCoreForwardTakesTheTensorCoreHeadDims) {
  for (const int64_t d : {32, 64, 128}) EXPECT_TRUE(fp32_tensor_core_reasons(d, d).empty()) << d;
  EXPECT_TRUE(mentions(fp32_tensor_core_reasons(48, 48), "head dims 48 / 48"));
  EXPECT_TRUE(mentions(fp32_tensor_core_reasons(64, 128), "head dims 64 / 128"));
}

}  // namespace
