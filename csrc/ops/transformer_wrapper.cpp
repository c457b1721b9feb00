// The TransformerWrapper op: embedding, layer stack and logits as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <xtc/nn/functional/transformer_wrapper.h>

#include "ops/plan_cache.h"

#include <torch/library.h>

namespace xtc::ops {
namespace {

at::Tensor transformer_wrapper_kernel(const at::Tensor& tokens, const std::optional<at::Tensor>& mask,
                                      at::TensorList params, c10::string_view options, c10::string_view layer_options,
                                      bool training, bool return_embeddings) {
  const auto& plan =
      detail::cached_wrapper_plan<nn::functional::TransformerWrapperPlan, nn::TransformerWrapperOptions>(
          options, layer_options);
  return nn::functional::transformer_wrapper(tokens, mask, params, plan, training, return_embeddings);
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "transformer_wrapper(Tensor tokens, Tensor? mask, Tensor[] params, str options, str layer_options, "
      "bool training=False, bool return_embeddings=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("transformer_wrapper", &xtc::ops::transformer_wrapper_kernel);
}
