#include "src/nn/functional/sdpa_route.h"

#include <ATen/Context.h>
#include <ATen/ops/_scaled_dot_product_attention_math.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

namespace xtc::nn::functional::detail {

std::vector<std::string> sdpa_fp32_reasons(const SdpaCall& c) {
  std::vector<std::string> reasons;
  if (!c.device.is_cuda()) reasons.emplace_back("torch's fp32 SDPA route is for CUDA calls");
  if (c.dtype != at::kFloat) reasons.emplace_back("the SDPA route takes float32 only (half types have ours)");
  if (c.key_mask)
    reasons.emplace_back(
        "a key padding mask: SDPA gives NaN where a row sees no key, ours 0 (and its gradients follow)");
  if (c.alibi || c.window || c.softcap)
    reasons.emplace_back("ALiBi, windows and soft-capping are rules of our kernel that SDPA lacks");
  if (c.causal && c.queries != c.keys)
    reasons.emplace_back(
        "SDPA aligns causality to the top left, ours to the bottom right, when queries != keys");
  if (c.kv_heads != c.heads)
    reasons.emplace_back("grouped kv heads: the memory-efficient kernel takes as many kv heads as heads");
  if (c.value_dim_head != c.dim_head) reasons.emplace_back("a value head dim other than the key head dim");
  if (c.sharded) reasons.emplace_back("context parallelism attends per run of queries in our kernel");
  return reasons;
}

at::Tensor sdpa_fp32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, double scale,
                     MatmulPrecision precision) {
  // torch's layout is (b, h, n, d).
  const auto qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
  if (precision != MatmulPrecision::Highest) {
    // TF32 products are allowed: cuBLAS, through torch's matmuls, which read the same setting.
    return std::get<0>(at::_scaled_dot_product_attention_math(qt, kt, vt, std::nullopt, 0.0, causal,
                                                              std::nullopt, scale))
        .transpose(1, 2);
  }
  const bool needs_lse =
      c10::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  return std::get<0>(at::_scaled_dot_product_efficient_attention(qt, kt, vt, std::nullopt, needs_lse, 0.0,
                                                                 causal, scale))
      .transpose(1, 2);
}

}  // namespace xtc::nn::functional::detail
