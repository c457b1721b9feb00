// Autocast for xtc::flash_attention and xtc::flash_attention_varlen, as torch's own
// scaled_dot_product_attention under autocast: q, k and v in float32 are cast to the autocast dtype of their
// device (bf16 or fp16; float64 stays), the op runs below autocast, and out comes back in that dtype (lse in
// float32). Mixed inputs such as a bf16 q from a linear beside a float32 k scaled by a float32 parameter are
// the usual case inside an autocast region.
//
// The same function serves AutocastCPU and AutocastCUDA: one IMPL block per dispatch key, so two here.
#include <ATen/autocast_mode.h>
#include <torch/library.h>
#include <xtc/ops/flash_attention.h>
#include <xtc/ops/flash_attention_varlen.h>

namespace xtc::ops {
namespace {

template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor> flash_attention_autocast_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, bool causal, std::optional<double> scale,
    const std::optional<at::Tensor>& alibi_slopes, int64_t window_left, int64_t window_right,
    double softcap) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  const auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, device); };
  return flash_attention(cast(q), cast(k), cast(v), key_padding_mask, causal, scale, alibi_slopes,
                         window_left, window_right, softcap);
}

template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor> flash_attention_varlen_autocast_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool causal,
    std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes, int64_t window_left,
    int64_t window_right, double softcap) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  const auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, device); };
  return flash_attention_varlen(cast(q), cast(k), cast(v), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k, causal, scale, alibi_slopes, window_left, window_right,
                                softcap);
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, AutocastCPU, m) {
  m.impl("flash_attention", &flash_attention_autocast_kernel<c10::DeviceType::CPU>);
  m.impl("flash_attention_varlen", &flash_attention_varlen_autocast_kernel<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(xtc, AutocastCUDA, m) {
  m.impl("flash_attention", &flash_attention_autocast_kernel<c10::DeviceType::CUDA>);
  m.impl("flash_attention_varlen", &flash_attention_varlen_autocast_kernel<c10::DeviceType::CUDA>);
}

}  // namespace xtc::ops
