// Schemas of the flash attention ops and their C++ API. Kernels live in ops/{cpu,cuda,meta,autograd}.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention.h>

namespace xtc::ops {

std::tuple<at::Tensor, at::Tensor> flash_attention(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v,
                                                   const std::optional<at::Tensor>& key_padding_mask,
                                                   bool causal, std::optional<double> scale,
                                                   const std::optional<at::Tensor>& alibi_slopes,
                                                   int64_t window_left, int64_t window_right,
                                                   double softcap) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::flash_attention", "")
                       .typed<decltype(flash_attention)>();
  return op.call(q, k, v, key_padding_mask, causal, scale, alibi_slopes, window_left, window_right, softcap);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes,
    int64_t window_left, int64_t window_right, double softcap) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::flash_attention_backward", "")
                       .typed<decltype(flash_attention_backward)>();
  return op.call(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale, alibi_slopes, window_left,
                 window_right, softcap);
}

}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "flash_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask=None, bool causal=False, "
      "float? scale=None, Tensor? alibi_slopes=None, int window_left=-1, int window_right=-1, float "
      "softcap=0.0) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "flash_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? key_padding_mask, bool causal, float? scale, Tensor? alibi_slopes, int window_left, "
      "int window_right, float softcap) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
