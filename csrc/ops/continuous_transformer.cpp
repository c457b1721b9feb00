// The ContinuousTransformerWrapper op: wrapper and layer stack as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <torch/library.h>
#include <xtc/nn/functional/continuous.h>
#include <xtc/nn/modules/continuous.h>

#include "ops/layer_hiddens.h"
#include "ops/plan_cache.h"
#include "ops/stack_inputs.h"

namespace xtc::ops {
namespace {

std::shared_ptr<const nn::functional::ContinuousTransformerPlan> continuous_plan(
    c10::string_view options, c10::string_view layer_options) {
  return detail::cached_wrapper_plan<nn::functional::ContinuousTransformerPlan,
                                     nn::ContinuousTransformerWrapper,
                                     nn::ContinuousTransformerWrapperOptions>(options, layer_options);
}

at::Tensor continuous_transformer_kernel(const at::Tensor& x,
                                         XTC_STACK_INPUT_PARAMETERS const std::optional<at::Tensor>& lens,
                                         const std::optional<at::Tensor>& sum_embeds,
                                         const std::optional<at::Tensor>& prepend_embeds,
                                         const std::optional<at::Tensor>& prepend_mask, at::TensorList params,
                                         c10::string_view options, c10::string_view layer_options,
                                         bool training, bool return_embeddings) {
  const auto plan = continuous_plan(options, layer_options);
  return nn::functional::continuous_transformer(x, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{}), lens,
                                                params, *plan, training, return_embeddings, {}, nullptr,
                                                {sum_embeds, prepend_embeds, prepend_mask, std::nullopt, {}});
}

detail::LayerHiddensResult continuous_transformer_with_hiddens_kernel(
    const at::Tensor& x, XTC_STACK_INPUT_PARAMETERS const std::optional<at::Tensor>& lens,
    const std::optional<at::Tensor>& sum_embeds, const std::optional<at::Tensor>& prepend_embeds,
    const std::optional<at::Tensor>& prepend_mask, at::TensorList cache_kv, bool input_not_include_cache,
    at::TensorList params, c10::string_view options, c10::string_view layer_options, bool training,
    bool return_embeddings) {
  const auto plan = continuous_plan(options, layer_options);
  nn::functional::AttentionLayersHiddens record;
  auto out = nn::functional::continuous_transformer(
      x, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{}), lens, params, *plan, training, return_embeddings,
      {cache_kv.vec(), input_not_include_cache}, &record,
      {sum_embeds, prepend_embeds, prepend_mask, std::nullopt, {}});
  return detail::layer_hiddens_result(std::move(out), std::move(record));
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  // The stack's inputs (XTC_STACK_INPUTS, <xtc/nn/functional/stack_inputs.h>) follow x, then the wrapper's
  // own lens and its embeddings beside x's (sum_embeds, prepend_embeds and its mask).
  m.def("continuous_transformer(Tensor x, " XTC_STACK_INPUTS_SCHEMA
        "Tensor? lens, Tensor? sum_embeds, Tensor? prepend_embeds, Tensor? prepend_mask, Tensor[] params, "
        "str options, str layer_options, bool training=False, "
        "bool return_embeddings=False) -> Tensor");
  // The same with the stack's intermediates and incremental decoding, as
  // xtc::transformer_wrapper_with_hiddens.
  m.def("continuous_transformer_with_hiddens(Tensor x, " XTC_STACK_INPUTS_SCHEMA
        "Tensor? lens, Tensor? sum_embeds, Tensor? prepend_embeds, Tensor? prepend_mask, Tensor[] cache_kv, "
        "bool input_not_include_cache, Tensor[] params, str options, "
        "str layer_options, bool training=False, bool return_embeddings=False) -> "
        "(Tensor, Tensor[], Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("continuous_transformer", &xtc::ops::continuous_transformer_kernel);
  m.impl("continuous_transformer_with_hiddens", &xtc::ops::continuous_transformer_with_hiddens_kernel);
}

// torch.func.vmap decomposes the wrapper into its aten ops (see ops/attention_layers.cpp).
TORCH_LIBRARY_IMPL(xtc, FuncTorchBatchedDecomposition, m) {
  m.impl("continuous_transformer", &xtc::ops::continuous_transformer_kernel);
  m.impl("continuous_transformer_with_hiddens", &xtc::ops::continuous_transformer_with_hiddens_kernel);
}
