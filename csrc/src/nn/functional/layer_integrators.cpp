#include <ATen/ops/einsum.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/rms_norm.h>
#include <ATen/ops/stack.h>
#include <xtc/nn/functional/activation.h>
#include <xtc/nn/functional/layer_integrators.h>
#include <xtc/nn/functional/norm.h>

#include <cmath>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {
namespace {

// (b, n, v d) or (b, n, v L) -> (v, b, n, d|L).
at::Tensor views_first(const at::Tensor& t, int64_t views) {
  return t.unflatten(-1, {views, -1}).permute({2, 0, 1, 3});
}

// One view drops its axis, as x-transformers' '1 ... -> ...'.
at::Tensor maybe_single(const at::Tensor& t, int64_t views) { return views == 1 ? t.squeeze(0) : t; }

}  // namespace

at::Tensor dynamic_lime(const at::Tensor& x, at::TensorList hiddens, const DynamicLIMeWeights& w,
                        int64_t views, bool softmax) {
  const int64_t layers = xtc::detail::static_size(w.weight, 0) / views;
  TORCH_CHECK_VALUE(static_cast<int64_t>(hiddens.size()) == layers,
                    "AttentionLayers: integrate_layers expected ", layers,
                    " layer inputs so far (its layers run in order, none dropped), got ", hiddens.size());
  auto weights =
      views_first(at::linear(rms_norm(x, w.norm_gain, /*unit_offset=*/false), w.weight, w.bias), views);
  weights = softmax ? weights.softmax(-1) : at::relu(weights);
  return maybe_single(at::einsum("lbnd,vbnl->vbnd", {at::stack(hiddens), weights}), views);
}

at::Tensor attention_residual(at::TensorList hiddens, const AttentionResidualWeights& w, int64_t views,
                              const std::optional<std::string>& lora_activation) {
  const auto stacked = at::stack(hiddens);  // (L, b, n, d)
  const auto& latest = hiddens.back();
  const int64_t dim = xtc::detail::static_size(latest, -1);
  auto hidden = at::linear(at::rms_norm(latest, {dim}, w.query_input_norm), w.lora_down);
  if (lora_activation.has_value()) hidden = named_activation(*lora_activation, hidden);
  const auto query =
      at::rms_norm(latest.unsqueeze(0) + views_first(at::linear(hidden, w.lora_up), views), {dim},
                   w.query_norm);  // (v, b, n, d)
  const auto keys = at::rms_norm(stacked, {dim}, w.key_norm);
  const auto logits =
      at::einsum("vbnd,lbnd->vlbn", {query, keys}) * (1.0 / std::sqrt(static_cast<double>(dim)));
  return maybe_single(at::einsum("vlbn,lbnd->vbnd", {logits.softmax(1), stacked}), views);
}

}  // namespace xtc::nn::functional
