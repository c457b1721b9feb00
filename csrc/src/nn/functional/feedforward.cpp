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
    hidden = at::linear(x, w.proj_in_weight, w.proj_in_bias);
    if (o.softclamp_value().has_value()) hidden = softclamp(hidden, *o.softclamp_value());
    hidden = activation(hidden, w, o);
  }
  if (w.post_act_gamma.defined()) hidden = layer_norm(hidden, w.post_act_gamma, /*unit_offset=*/false);
  if (training && o.dropout() > 0) hidden = at::dropout(hidden, o.dropout(), training);
  auto out = at::linear(hidden, w.proj_out_weight, w.proj_out_bias);
  if (training && o.sublayer_dropout() > 0) out = at::dropout(out, o.sublayer_dropout(), training);
  return out;
}

}  // namespace xtc::nn::functional
