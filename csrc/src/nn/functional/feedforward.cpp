#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/special_ndtr.h>
#include <ATen/ops/tanh.h>
#include <xtc/nn/functional/activation.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>

namespace xtc::nn::functional {
namespace {

// x-transformers' precedence when several are set: a custom activation, relu_squared, then SoLU, then
// swish, then GELU.
at::Tensor activation(const at::Tensor& x, const FeedForwardWeights& w, const FeedForwardOptions& o) {
  if (o.custom_activation().has_value()) return named_activation(*o.custom_activation(), x);
  if (o.relu_squared()) return at::relu(x).square();
  if (o.solu()) return layer_norm(at::softmax(x, -1) * x, w.solu_gamma, /*unit_offset=*/false);
  if (o.swish()) return at::silu(x);
  return at::gelu(x);
}

at::Tensor softclamp(const at::Tensor& x, double value) { return at::tanh(x / value) * value; }

// oneDNN's fused linear + pointwise op, which torch.compile's CPU backend calls; absent from a torch built
// without it.
std::optional<c10::OperatorHandle> linear_pointwise_op() {
  static const auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op;
}

bool is_gelu(const FeedForwardOptions& o) {
  return !o.custom_activation().has_value() && !o.relu_squared() && !o.solu() && !o.swish();
}

bool cpu_bf16_autocast() {
  return at::autocast::is_autocast_enabled(c10::DeviceType::CPU) &&
         at::autocast::get_autocast_dtype(c10::DeviceType::CPU) == at::kBFloat16;
}

// Whether the fused op may run: real CPU tensors (not the fake or functional ones of torch.export / ONNX
// export, whose decomposition keeps to aten's ops) that are bf16 or become bf16 under autocast (float32), and
// no gradient wanted (the op has no derivative).
bool fused_linear_gelu_applies(const at::Tensor& x, const FeedForwardWeights& w, bool autocast) {
  const auto becomes_bf16 = [&](const at::Tensor& t) {
    return t.scalar_type() == at::kBFloat16 || (autocast && t.scalar_type() == at::kFloat);
  };
  const bool bf16 = becomes_bf16(x) && becomes_bf16(w.proj_in_weight) &&
                    (!w.proj_in_bias.defined() || becomes_bf16(w.proj_in_bias));
  const bool wants_grad =
      at::GradMode::is_enabled() && (x.requires_grad() || w.proj_in_weight.requires_grad() ||
                                     (w.proj_in_bias.defined() && w.proj_in_bias.requires_grad()));
  const bool traced =
      x.key_set().has(c10::DispatchKey::Python) || x.key_set().has(c10::DispatchKey::Functionalize);
  return x.device().is_cpu() && !traced && bf16 && !wants_grad && linear_pointwise_op().has_value();
}

// GELU(x W^T + b) in one oneDNN call on the CPU in bf16 (a bf16 module, or under CPU bf16 autocast, whose
// casts it makes as linear would) when no gradient is wanted: the output written once, GELU applied to the
// float32 product before its one rounding to bf16. Undefined where it does not apply.
at::Tensor fused_linear_gelu(const at::Tensor& x, const FeedForwardWeights& w) {
  const bool autocast = cpu_bf16_autocast();
  if (!fused_linear_gelu_applies(x, w, autocast)) return {};
  const auto cast = [&](const at::Tensor& t) {
    return autocast ? at::autocast::cached_cast(at::kBFloat16, t, c10::DeviceType::CPU) : t;
  };
  // The op runs below autocast: its inputs are cast here, as autocast casts linear's.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return linear_pointwise_op()
      ->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::string_view, c10::List<std::optional<at::Scalar>>,
                         std::optional<c10::string_view>)>()
      .call(cast(x), cast(w.proj_in_weight),
            w.proj_in_bias.defined() ? std::optional<at::Tensor>(cast(w.proj_in_bias)) : std::nullopt, "gelu",
            c10::List<std::optional<at::Scalar>>(), c10::string_view("none"));
}

// act(x W_in^T + b) without a gate: in oneDNN's fused op where it applies (plain GELU), else linear, the
// soft-clamp, the activation.
at::Tensor activated_projection(const at::Tensor& x, const FeedForwardWeights& w,
                                const FeedForwardOptions& o) {
  if (is_gelu(o) && !o.softclamp_value().has_value())
    if (at::Tensor fused = fused_linear_gelu(x, w); fused.defined()) return fused;
  at::Tensor hidden = at::linear(x, w.proj_in_weight, w.proj_in_bias);
  if (o.softclamp_value().has_value()) hidden = softclamp(hidden, *o.softclamp_value());
  return activation(hidden, w, o);
}

// up * act(gate); with glu_softclamp (situ-GLU) the linear factors are clamped: act(g) = g * phi(g) becomes
// softclamp(g) * phi(g).
at::Tensor gated(at::Tensor up, const at::Tensor& gate, const FeedForwardWeights& w,
                 const FeedForwardOptions& o) {
  if (!o.glu_softclamp()) return up * activation(gate, w, o);
  up = softclamp(up, o.glu_up_softclamp_value());
  // x-transformers picks the clamped form by the activation's class: SiLU's sigmoid, GELU's normal CDF
  // (exact, whatever its approximation).
  const bool silu = o.swish() || o.custom_activation() == "silu";
  const auto phi = silu ? at::sigmoid(gate) : at::special_ndtr(gate);
  return up * (softclamp(gate, o.glu_gate_softclamp_value()) * phi);
}

}  // namespace

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w, const FeedForwardOptions& o,
                        bool training) {
  at::Tensor hidden;
  if (o.glu()) {
    const auto projected = at::linear(x, w.proj_in_weight, w.proj_in_bias).chunk(2, -1);
    hidden = gated(projected[0], projected[1], w, o);
    if (w.glu_mult_bias.defined()) hidden = hidden * w.glu_mult_bias;
  } else {
    hidden = activated_projection(x, w, o);
  }
  if (w.post_act_gamma.defined()) hidden = layer_norm(hidden, w.post_act_gamma, /*unit_offset=*/false);
  if (training && o.dropout() > 0) hidden = at::dropout(hidden, o.dropout(), training);
  auto out = at::linear(hidden, w.proj_out_weight, w.proj_out_bias);
  if (training && o.sublayer_dropout() > 0) out = at::dropout(out, o.sublayer_dropout(), training);
  return out;
}

}  // namespace xtc::nn::functional
