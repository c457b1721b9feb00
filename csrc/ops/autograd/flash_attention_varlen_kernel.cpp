// Autograd for xtc::flash_attention_varlen, in C++ as flash_attention's: the backward is its own op
// (xtc::flash_attention_varlen_backward); the log-sum-exp and the cu_seqlens carry no gradient.
#include <torch/autograd.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention_varlen.h>

#include "ops/autograd/saved_attention_rule.h"

namespace xtc::ops {
namespace {

class FlashAttentionVarlenFunction : public torch::autograd::Function<FlashAttentionVarlenFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& cu_seqlens_q,
                                                const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                int64_t max_seqlen_k, bool causal,
                                                std::optional<double> scale,
                                                const std::optional<at::Tensor>& alibi_slopes,
                                                int64_t window_left, int64_t window_right, double softcap) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                             causal, scale, alibi_slopes, window_left, window_right, softcap);
    ctx->save_for_backward(
        {q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes.value_or(at::Tensor())});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    detail::save_attention_rule(ctx, {causal, scale, window_left, window_right, softcap});
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto rule = detail::saved_attention_rule(ctx);
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(saved[3]);
    auto [dq, dk, dv] = flash_attention_varlen_backward(
        grad_out, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
        ctx->saved_data["max_seqlen_q"].toInt(), ctx->saved_data["max_seqlen_k"].toInt(), rule.causal,
        rule.scale, detail::optional_tensor(saved[7]), rule.window_left, rule.window_right, rule.softcap);
    torch::autograd::variable_list result(13);  // one per forward input; only q, k, v are differentiable
    result[0] = dq;
    result[1] = dk;
    result[2] = dv;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  auto result =
      FlashAttentionVarlenFunction::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                          causal, scale, alibi_slopes, window_left, window_right, softcap);
  return {result[0], result[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, Autograd, m) {
  m.impl("flash_attention_varlen", &flash_attention_varlen_forward_kernel);
}

}  // namespace xtc::ops
