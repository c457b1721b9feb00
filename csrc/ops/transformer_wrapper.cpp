// The TransformerWrapper op: embedding, layer stack and logits as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <xtc/nn/functional/transformer_wrapper.h>

#include "ops/layer_hiddens.h"
#include "ops/plan_cache.h"
#include "ops/stack_inputs.h"

#include <torch/library.h>

namespace xtc::ops {
namespace {

at::Tensor transformer_wrapper_kernel(const at::Tensor& tokens, XTC_STACK_INPUT_PARAMETERS at::TensorList params,
                                      c10::string_view options, c10::string_view layer_options, bool training,
                                      bool return_embeddings) {
  const auto plan =
      detail::cached_wrapper_plan<nn::functional::TransformerWrapperPlan, nn::TransformerWrapperOptions>(
          options, layer_options);
  return nn::functional::transformer_wrapper(tokens, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS {}), params,
                                             *plan, training, return_embeddings);
}

detail::LayerHiddensResult transformer_wrapper_with_hiddens_kernel(
    const at::Tensor& tokens, XTC_STACK_INPUT_PARAMETERS at::TensorList cache_kv, at::TensorList params,
    c10::string_view options, c10::string_view layer_options, bool training, bool return_embeddings) {
  const auto plan =
      detail::cached_wrapper_plan<nn::functional::TransformerWrapperPlan, nn::TransformerWrapperOptions>(
          options, layer_options);
  nn::functional::AttentionLayersHiddens record;
  auto out = nn::functional::transformer_wrapper(tokens, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS {}), params,
                                                 *plan, training, return_embeddings, cache_kv.vec(), &record);
  return detail::layer_hiddens_result(std::move(out), std::move(record));
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  // The stack's inputs (XTC_STACK_INPUTS, ops/stack_inputs.h) follow the tokens, as x-transformers' wrapper passes
  // its other forward arguments on to the stack.
  m.def("transformer_wrapper(Tensor tokens, " XTC_STACK_INPUTS_SCHEMA
        "Tensor[] params, str options, str layer_options, bool training=False, bool return_embeddings=False) -> "
        "Tensor");
  // The same, also returning the stack's intermediates as xtc::attention_layers_with_hiddens does (hiddens,
  // layer_hiddens, cached_kv, attention maps), for return_intermediates; with cache_kv (the previous call's), it
  // decodes the last token of `tokens` incrementally.
  m.def("transformer_wrapper_with_hiddens(Tensor tokens, " XTC_STACK_INPUTS_SCHEMA
        "Tensor[] cache_kv, Tensor[] params, str options, str layer_options, bool training=False, "
        "bool return_embeddings=False) -> (Tensor, Tensor[], Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("transformer_wrapper", &xtc::ops::transformer_wrapper_kernel);
  m.impl("transformer_wrapper_with_hiddens", &xtc::ops::transformer_wrapper_with_hiddens_kernel);
}

// torch.func.vmap decomposes the wrapper into its aten ops (see ops/attention_layers.cpp).
TORCH_LIBRARY_IMPL(xtc, FuncTorchBatchedDecomposition, m) {
  m.impl("transformer_wrapper", &xtc::ops::transformer_wrapper_kernel);
  m.impl("transformer_wrapper_with_hiddens", &xtc::ops::transformer_wrapper_with_hiddens_kernel);
}
