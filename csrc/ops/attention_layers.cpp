// The layer-stack op. Its kernel is CompositeImplicitAutograd: it runs xtc::nn::functional::attention_layers,
// whose aten and xtc::flash_attention calls carry autograd, while tracers record the stack as a single node.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/ops/attention_layers.h>

#include "ops/layer_hiddens.h"
#include "ops/plan_cache.h"
#include "ops/stack_inputs.h"

namespace xtc::ops {
namespace {

at::Tensor attention_layers_kernel(const at::Tensor& x, XTC_STACK_INPUT_PARAMETERS at::TensorList params,
                                   c10::string_view options, bool training) {
  return nn::functional::attention_layers(x, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{}), params,
                                          *detail::cached_layers_plan(options), training);
}

detail::LayerHiddensResult attention_layers_with_hiddens_kernel(
    const at::Tensor& x, XTC_STACK_INPUT_PARAMETERS at::TensorList cache_kv, int64_t cache_length,
    int64_t cache_age, at::TensorList params, c10::string_view options, bool training) {
  auto inputs = detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{});
  inputs.cache_kv = cache_kv.vec();
  inputs.cache_length = cache_length;
  inputs.cache_age = cache_age;
  nn::functional::AttentionLayersHiddens record;
  auto out = nn::functional::attention_layers(x, inputs, params, *detail::cached_layers_plan(options),
                                              training, &record);
  return detail::layer_hiddens_result(std::move(out), std::move(record));
}

}  // namespace

at::Tensor attention_layers(const at::Tensor& x, const nn::functional::AttentionLayersInputs& inputs,
                            at::TensorList params, const std::string& options, bool training) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::attention_layers", "")
                       .typed<at::Tensor(const at::Tensor&, XTC_STACK_INPUT_TYPES at::TensorList,
                                         c10::string_view, bool)>();
  const detail::StackArguments arguments(inputs);
#define XTC_STACK_ARGUMENT_OF(name, schema, cpp, field, kind, default_value, doc) arguments.name,
  return op.call(x, XTC_STACK_INPUTS(XTC_STACK_ARGUMENT_OF) params, options, training);
#undef XTC_STACK_ARGUMENT_OF
}

}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  // The stack's inputs are XTC_STACK_INPUTS (<xtc/nn/functional/stack_inputs.h>), x-transformers'
  // AttentionLayers.forward arguments; flash_pack_seq* carry flash_pack_seq_kwargs ([cu_seqlens_q,
  // cu_seqlens_k], [max_seqlen_q, max_seqlen_k]) and its context counterpart, empty when not given.
  m.def("attention_layers(Tensor x, " XTC_STACK_INPUTS_SCHEMA
        "Tensor[] params, str options, bool training=False) -> Tensor");
  // The same stack, also returning x-transformers' hiddens (stream entering each self-attention layer),
  // layer_hiddens (entering each layer, then before the final norm) and cached_kv (each attention layer's
  // keys and values, flattened k0, v0, k1, v1, ...) and attention maps (qk_similarities, pre- and
  // post-softmax per attention layer, empty where x-transformers has none), for return_hiddens; with cache_kv
  // (the previous call's), it decodes incrementally: only the last cache_age tokens run, at positions after
  // cache_length.
  m.def("attention_layers_with_hiddens(Tensor x, " XTC_STACK_INPUTS_SCHEMA
        "Tensor[] cache_kv, int cache_length, int cache_age, Tensor[] params, str options, bool "
        "training=False) -> "
        "(Tensor, Tensor[], Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("attention_layers", &xtc::ops::attention_layers_kernel);
  m.impl("attention_layers_with_hiddens", &xtc::ops::attention_layers_with_hiddens_kernel);
}

// torch.func.vmap decomposes the stack into its aten ops, each with its batching rule: batched inputs and
// batched parameters (model ensembles) alike.
TORCH_LIBRARY_IMPL(xtc, FuncTorchBatchedDecomposition, m) {
  m.impl("attention_layers", &xtc::ops::attention_layers_kernel);
  m.impl("attention_layers_with_hiddens", &xtc::ops::attention_layers_with_hiddens_kernel);
}
