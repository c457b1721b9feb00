// The fp32 SDPA route's logic on the CPU (src/nn/functional/sdpa_route.h): the named reasons that keep a call
// in our kernels (the precision read: test_matmul_precision.cpp). The route's numbers need a GPU
// (tests/python/test_flash_attention_cuda.py, benchmarks/gpu_check.sh).
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "src/nn/functional/sdpa_route.h"

namespace {

using xtc::nn::functional::detail::sdpa_fp32_reasons;
using xtc::nn::functional::detail::SdpaCall;

SdpaCall plain_cuda_call() {
  SdpaCall call;
  call.device = c10::Device(c10::kCUDA, 0);
  call.queries = call.keys = 129;
  call.heads = call.kv_heads = 8;
  call.dim_head = call.value_dim_head = 64;
  return call;
}

TEST(SdpaRoute, TakesFp32CudaCallsThatNeedNoRuleOfOurs) {
  EXPECT_TRUE(sdpa_fp32_reasons(plain_cuda_call()).empty());
  auto causal = plain_cuda_call();
  causal.causal = true;
  EXPECT_TRUE(sdpa_fp32_reasons(causal).empty());
}

TEST(SdpaRoute, NamesWhatKeepsACallInOurKernels) {
  const auto one_reason = [](SdpaCall call, const char* expected) {
    const auto reasons = sdpa_fp32_reasons(call);
    ASSERT_EQ(reasons.size(), 1u) << expected;
    EXPECT_NE(reasons[0].find(expected), std::string::npos) << reasons[0];
  };
  auto call = plain_cuda_call();
  call.device = c10::Device(c10::kCPU);
  one_reason(call, "CUDA");
  call = plain_cuda_call();
  call.dtype = at::kBFloat16;
  one_reason(call, "float32");
  call = plain_cuda_call();
  call.key_mask = true;
  one_reason(call, "key padding mask");
  call = plain_cuda_call();
  call.alibi = true;
  one_reason(call, "ALiBi");
  call = plain_cuda_call();
  call.causal = true;
  call.keys = 200;
  one_reason(call, "top left");
  call = plain_cuda_call();
  call.kv_heads = 2;
  one_reason(call, "kv heads");
  call = plain_cuda_call();
  call.value_dim_head = 32;
  one_reason(call, "value head dim");
  call = plain_cuda_call();
  call.sharded = true;
  one_reason(call, "context parallelism");
}

}  // namespace
