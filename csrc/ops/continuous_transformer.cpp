// The ContinuousTransformerWrapper op: wrapper and layer stack as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <xtc/nn/functional/continuous.h>

#include "ops/plan_cache.h"

#include <torch/library.h>


namespace xtc::ops {
namespace {

at::Tensor continuous_transformer_kernel(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                         const std::optional<at::Tensor>& lens, at::TensorList params,
                                         c10::string_view options, c10::string_view layer_options, bool training,
                                         bool return_embeddings) {
  const auto& plan =
      detail::cached_wrapper_plan<nn::functional::ContinuousTransformerPlan, nn::ContinuousTransformerWrapperOptions>(
          options, layer_options);
  return nn::functional::continuous_transformer(x, mask, lens, params, plan, training, return_embeddings);
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "continuous_transformer(Tensor x, Tensor? mask, Tensor? lens, Tensor[] params, str options, str layer_options, "
      "bool training=False, bool return_embeddings=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("continuous_transformer", &xtc::ops::continuous_transformer_kernel);
}
