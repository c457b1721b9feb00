// Autograd for xtc::flash_attention, in C++ so that an app linking only libtorch can train.
// The backward is its own op (xtc::flash_attention_backward), so it dispatches to the CPU or CUDA kernel and
// shows up as a node in traced and exported graphs. The log-sum-exp output carries no gradient.
#include <torch/autograd.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention.h>

#include "ops/autograd/saved_attention_rule.h"

namespace xtc::ops {
namespace {

class FlashAttentionFunction : public torch::autograd::Function<FlashAttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v,
                                                const std::optional<at::Tensor>& key_padding_mask,
                                                bool causal, std::optional<double> scale,
                                                const std::optional<at::Tensor>& alibi_slopes,
                                                int64_t window_left, int64_t window_right, double softcap) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = flash_attention(q, k, v, key_padding_mask, causal, scale, alibi_slopes, window_left,
                                      window_right, softcap);
    ctx->save_for_backward(
        {q, k, v, out, lse, key_padding_mask.value_or(at::Tensor()), alibi_slopes.value_or(at::Tensor())});
    detail::save_attention_rule(ctx, {causal, scale, window_left, window_right, softcap});
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto rule = detail::saved_attention_rule(ctx);
    at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(saved[3]);
    auto [dq, dk, dv] = flash_attention_backward(grad_out, saved[0], saved[1], saved[2], saved[3], saved[4],
                                                 detail::optional_tensor(saved[5]), rule.causal, rule.scale,
                                                 detail::optional_tensor(saved[6]), rule.window_left,
                                                 rule.window_right, rule.softcap);
    return {dq,           dk,           dv,           at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, bool causal, std::optional<double> scale,
    const std::optional<at::Tensor>& alibi_slopes, int64_t window_left, int64_t window_right,
    double softcap) {
  auto result = FlashAttentionFunction::apply(q, k, v, key_padding_mask, causal, scale, alibi_slopes,
                                              window_left, window_right, softcap);
  return {result[0], result[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, Autograd, m) { m.impl("flash_attention", &flash_attention_forward_kernel); }

}  // namespace xtc::ops
