#include <ATen/ops/dropout.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>

namespace xtc::nn::functional {
namespace {

// x-transformers' precedence when several are set: relu_squared, then swish, then GELU.
at::Tensor activation(const at::Tensor& x, const FeedForwardOptions& o) {
  if (o.relu_squared()) return at::relu(x).square();
  if (o.swish()) return at::silu(x);
  return at::gelu(x);
}

}  // namespace

at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w, const FeedForwardOptions& o,
                        bool training) {
  at::Tensor hidden;
  if (o.glu()) {
    const auto projected = at::linear(x, w.proj_in_weight, w.proj_in_bias).chunk(2, -1);
    hidden = projected[0] * activation(projected[1], o);
    if (w.glu_mult_bias.defined()) hidden = hidden * w.glu_mult_bias;
  } else {
    hidden = activation(at::linear(x, w.proj_in_weight, w.proj_in_bias), o);
  }
  if (w.post_act_gamma.defined()) hidden = layer_norm(hidden, w.post_act_gamma, /*unit_offset=*/false);
  if (training && o.dropout() > 0) hidden = at::dropout(hidden, o.dropout(), training);
  return at::linear(hidden, w.proj_out_weight, w.proj_out_bias);
}

}  // namespace xtc::nn::functional
