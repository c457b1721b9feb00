// Schemas of the varlen flash attention ops and their C++ API. Kernels live in ops/{cpu,meta,autograd}.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention_varlen.h>

namespace xtc::ops {

std::tuple<at::Tensor, at::Tensor> flash_attention_varlen(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::flash_attention_varlen", "")
                       .typed<decltype(flash_attention_varlen)>();
  return op.call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, alibi_slopes,
                 window_left, window_right, softcap);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_varlen_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::flash_attention_varlen_backward", "")
                       .typed<decltype(flash_attention_varlen_backward)>();
  return op.call(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                 scale, alibi_slopes, window_left, window_right, softcap);
}

}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "flash_attention_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, bool causal=False, float? scale=None, Tensor? alibi_slopes=None, "
      "int window_left=-1, int window_right=-1, float softcap=0.0) -> (Tensor out, Tensor lse)");
  m.def(
      "flash_attention_varlen_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor "
      "lse, "
      "Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, bool causal, "
      "float? scale, Tensor? alibi_slopes, int window_left, int window_right, float softcap) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
