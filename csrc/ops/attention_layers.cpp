// The layer-stack op. Its kernel is CompositeImplicitAutograd: it runs xtc::nn::functional::attention_layers, whose
// aten and xtc::flash_attention calls carry autograd, while tracers record the stack as a single node.
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/ops/attention_layers.h>

#include "ops/layer_hiddens.h"
#include "ops/plan_cache.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace xtc::ops {
namespace {

std::shared_ptr<const nn::functional::AttentionLayersPlan> layers_plan(c10::string_view options) {
  const std::string text(options);
  return detail::cached_plan<nn::functional::AttentionLayersPlan>(
      text, [&] { return nn::functional::AttentionLayersPlan(nn::AttentionLayersOptions::parse(text)); });
}

// Tracing takes no lists of optional tensors, so the schema has Tensor[] (one mask per leading mem, or none).
std::vector<std::optional<at::Tensor>> to_vector(at::TensorList list) {
  return std::vector<std::optional<at::Tensor>>(list.begin(), list.end());
}

// flash_pack_seq_kwargs as the schema carries them: [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q, max_seqlen_k],
// or two empty lists.
std::optional<nn::functional::FlashPackSeq> flash_pack_seq(at::TensorList cu_seqlens, at::IntArrayRef max_seqlen,
                                                           const char* name) {
  if (cu_seqlens.empty() && max_seqlen.empty()) return std::nullopt;
  TORCH_CHECK_VALUE(cu_seqlens.size() == 2 && max_seqlen.size() == 2, "attention_layers: expected ", name,
                    " as [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q, max_seqlen_k], got ", cu_seqlens.size(),
                    " tensors and ", max_seqlen.size(), " lengths");
  return nn::functional::FlashPackSeq{cu_seqlens[0], cu_seqlens[1], max_seqlen[0], max_seqlen[1]};
}

// The forward inputs both layer-stack kernels take, as the functional stack reads them.
nn::functional::AttentionLayersInputs stack_inputs(
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& context,
    const std::optional<at::Tensor>& context_mask, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& self_attn_kv_mask, const std::optional<at::Tensor>& seq_start_pos,
    const std::optional<at::Tensor>& attn_bias, const std::optional<at::Tensor>& pos, at::TensorList mems,
    at::TensorList mem_masks, at::TensorList pack_seq, at::IntArrayRef pack_seq_max, at::TensorList pack_seq_context,
    at::IntArrayRef pack_seq_context_max) {
  nn::functional::AttentionLayersInputs inputs{mask, context, context_mask, attn_mask, self_attn_kv_mask,
                                               seq_start_pos, attn_bias, mems.vec(), to_vector(mem_masks)};
  inputs.pos = pos;
  inputs.flash_pack_seq = flash_pack_seq(pack_seq, pack_seq_max, "flash_pack_seq");
  inputs.flash_pack_seq_context = flash_pack_seq(pack_seq_context, pack_seq_context_max, "flash_pack_seq_context");
  return inputs;
}

at::Tensor attention_layers_kernel(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                   const std::optional<at::Tensor>& context,
                                   const std::optional<at::Tensor>& context_mask,
                                   const std::optional<at::Tensor>& attn_mask,
                                   const std::optional<at::Tensor>& self_attn_kv_mask,
                                   const std::optional<at::Tensor>& seq_start_pos,
                                   const std::optional<at::Tensor>& attn_bias,
                                   const std::optional<at::Tensor>& pos, at::TensorList mems,
                                   at::TensorList mem_masks, at::TensorList pack_seq,
                                   at::IntArrayRef pack_seq_max, at::TensorList pack_seq_context,
                                   at::IntArrayRef pack_seq_context_max, at::TensorList params,
                                   c10::string_view options, bool training) {
  return nn::functional::attention_layers(
      x,
      stack_inputs(mask, context, context_mask, attn_mask, self_attn_kv_mask, seq_start_pos, attn_bias, pos, mems,
                   mem_masks, pack_seq, pack_seq_max, pack_seq_context, pack_seq_context_max),
      params, *layers_plan(options), training);
}

detail::LayerHiddensResult attention_layers_with_hiddens_kernel(
    const at::Tensor& x, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& context,
    const std::optional<at::Tensor>& context_mask, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& self_attn_kv_mask, const std::optional<at::Tensor>& seq_start_pos,
    const std::optional<at::Tensor>& attn_bias, const std::optional<at::Tensor>& pos, at::TensorList mems,
    at::TensorList mem_masks, at::TensorList pack_seq, at::IntArrayRef pack_seq_max, at::TensorList pack_seq_context,
    at::IntArrayRef pack_seq_context_max, at::TensorList cache_kv, int64_t cache_length, int64_t cache_age,
    at::TensorList params, c10::string_view options, bool training) {
  auto inputs = stack_inputs(mask, context, context_mask, attn_mask, self_attn_kv_mask, seq_start_pos, attn_bias,
                             pos, mems, mem_masks, pack_seq, pack_seq_max, pack_seq_context, pack_seq_context_max);
  inputs.cache_kv = cache_kv.vec();
  inputs.cache_length = cache_length;
  inputs.cache_age = cache_age;
  nn::functional::AttentionLayersHiddens record;
  auto out = nn::functional::attention_layers(x, inputs, params, *layers_plan(options), training, &record);
  return detail::layer_hiddens_result(std::move(out), std::move(record));
}

}  // namespace

at::Tensor attention_layers(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                            const std::optional<at::Tensor>& context, const std::optional<at::Tensor>& context_mask,
                            const std::optional<at::Tensor>& attn_mask,
                            const std::optional<at::Tensor>& self_attn_kv_mask,
                            const std::optional<at::Tensor>& seq_start_pos,
                            const std::optional<at::Tensor>& attn_bias, at::TensorList params,
                            const std::string& options, bool training) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::attention_layers", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, at::TensorList, at::TensorList,
                                         at::TensorList, at::IntArrayRef, at::TensorList, at::IntArrayRef,
                                         at::TensorList, c10::string_view, bool)>();
  return op.call(x, mask, context, context_mask, attn_mask, self_attn_kv_mask, seq_start_pos, attn_bias,
                 std::nullopt, {}, {}, {}, {}, {}, {}, params, options, training);
}

}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "attention_layers(Tensor x, Tensor? mask, Tensor? context, Tensor? context_mask, Tensor? attn_mask, "
      "Tensor? self_attn_kv_mask, Tensor? seq_start_pos, Tensor? attn_bias, Tensor? pos, Tensor[] mems, "
      "Tensor[] mem_masks, Tensor[] flash_pack_seq, int[] flash_pack_seq_max, Tensor[] flash_pack_seq_context, "
      "int[] flash_pack_seq_context_max, Tensor[] params, str options, bool training=False) -> Tensor");
  // The same stack, also returning x-transformers' hiddens (stream entering each self-attention layer),
  // layer_hiddens (entering each layer, then before the final norm) and cached_kv (each attention layer's keys and
  // values, flattened k0, v0, k1, v1, ...) and attention maps (qk_similarities, pre- and post-softmax per attention
  // layer, empty where x-transformers has none), for return_hiddens; with cache_kv (the previous call's), it
  // decodes incrementally: only the last cache_age tokens run, at positions after cache_length.
  m.def(
      "attention_layers_with_hiddens(Tensor x, Tensor? mask, Tensor? context, Tensor? context_mask, "
      "Tensor? attn_mask, Tensor? self_attn_kv_mask, Tensor? seq_start_pos, Tensor? attn_bias, Tensor? pos, "
      "Tensor[] mems, Tensor[] mem_masks, Tensor[] flash_pack_seq, int[] flash_pack_seq_max, "
      "Tensor[] flash_pack_seq_context, int[] flash_pack_seq_context_max, Tensor[] cache_kv, int cache_length, "
      "int cache_age, Tensor[] params, str options, bool training=False) -> "
      "(Tensor, Tensor[], Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("attention_layers", &xtc::ops::attention_layers_kernel);
  m.impl("attention_layers_with_hiddens", &xtc::ops::attention_layers_with_hiddens_kernel);
}

// torch.func.vmap decomposes the stack into its aten ops, each with its batching rule: batched inputs and batched
// parameters (model ensembles) alike.
TORCH_LIBRARY_IMPL(xtc, FuncTorchBatchedDecomposition, m) {
  m.impl("attention_layers", &xtc::ops::attention_layers_kernel);
  m.impl("attention_layers_with_hiddens", &xtc::ops::attention_layers_with_hiddens_kernel);
}
