// The TransformerWrapper op: embedding, layer stack and logits as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <torch/library.h>
#include <xtc/nn/functional/transformer_wrapper.h>
#include <xtc/nn/modules/transformer_wrapper.h>

#include "ops/layer_hiddens.h"
#include "ops/plan_cache.h"
#include "ops/stack_inputs.h"

// WrapperRecurrence's fields, as both wrapper ops take them.
#define XTC_WRAPPER_RECURRENCE_SCHEMA \
  "int recurrent_steps, bool looped_inference, float? looped_exit_threshold, Tensor[] looped_prompt_kv, "

namespace xtc::ops {
namespace {

std::shared_ptr<const nn::functional::TransformerWrapperPlan> wrapper_plan(c10::string_view options,
                                                                           c10::string_view layer_options) {
  return detail::cached_wrapper_plan<nn::functional::TransformerWrapperPlan, nn::TransformerWrapper,
                                     nn::TransformerWrapperOptions>(options, layer_options);
}

at::Tensor transformer_wrapper_kernel(
    const at::Tensor& tokens, XTC_STACK_INPUT_PARAMETERS const std::optional<at::Tensor>& sum_embeds,
    const std::optional<at::Tensor>& prepend_embeds, const std::optional<at::Tensor>& prepend_mask,
    const std::optional<at::Tensor>& token_embeds, at::TensorList embed_ids, int64_t recurrent_steps,
    bool looped_inference, std::optional<double> looped_exit_threshold, at::TensorList looped_prompt_kv,
    at::TensorList params, c10::string_view options, c10::string_view layer_options, bool training,
    bool return_embeddings) {
  return nn::functional::transformer_wrapper(
      tokens, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{}), params,
      *wrapper_plan(options, layer_options), training, return_embeddings, {}, nullptr,
      {sum_embeds, prepend_embeds, prepend_mask, token_embeds, embed_ids.vec()},
      {recurrent_steps, looped_inference, looped_exit_threshold, looped_prompt_kv.vec()});
}

// The with_hiddens op's results: the stack's intermediates, then the wrapper's (TransformerWrapperRecord).
using WrapperHiddensResult =
    std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
               std::vector<at::Tensor>, std::vector<at::Tensor>>;

WrapperHiddensResult transformer_wrapper_with_hiddens_kernel(
    const at::Tensor& tokens, XTC_STACK_INPUT_PARAMETERS const std::optional<at::Tensor>& sum_embeds,
    const std::optional<at::Tensor>& prepend_embeds, const std::optional<at::Tensor>& prepend_mask,
    const std::optional<at::Tensor>& token_embeds, at::TensorList embed_ids, int64_t recurrent_steps,
    bool looped_inference, std::optional<double> looped_exit_threshold, at::TensorList looped_prompt_kv,
    at::TensorList cache_kv, bool input_not_include_cache, at::TensorList params, c10::string_view options,
    c10::string_view layer_options, bool training, bool return_embeddings) {
  nn::functional::AttentionLayersHiddens record;
  nn::functional::TransformerWrapperRecord extra_record;
  auto out = nn::functional::transformer_wrapper(
      tokens, detail::stack_inputs(XTC_STACK_INPUT_ARGUMENTS{}), params,
      *wrapper_plan(options, layer_options), training, return_embeddings,
      {cache_kv.vec(), input_not_include_cache}, &record,
      {sum_embeds, prepend_embeds, prepend_mask, token_embeds, embed_ids.vec()},
      {recurrent_steps, looped_inference, looped_exit_threshold, looped_prompt_kv.vec()}, &extra_record);
  auto [o, hiddens, layer_hiddens, kv, maps] =
      detail::layer_hiddens_result(std::move(out), std::move(record));
  std::vector<at::Tensor> next_embed_pred;
  if (extra_record.next_embed_pred.defined()) next_embed_pred.push_back(extra_record.next_embed_pred);
  return {std::move(o),
          std::move(hiddens),
          std::move(layer_hiddens),
          std::move(kv),
          std::move(maps),
          std::move(extra_record.initial_embeds),
          std::move(next_embed_pred),
          std::move(extra_record.step_outputs),
          std::move(extra_record.exit_logits),
          std::move(extra_record.looped_prompt_kv)};
}

at::Tensor transformer_wrapper_logits_kernel(const at::Tensor& embeddings, at::TensorList params,
                                             c10::string_view options, c10::string_view layer_options) {
  return nn::functional::transformer_wrapper_logits(embeddings, params,
                                                    *wrapper_plan(options, layer_options));
}

at::Tensor transformer_wrapper_attn_pool_kernel(const at::Tensor& embeddings,
                                                const std::optional<at::Tensor>& mask,
                                                const std::optional<at::Tensor>& prepend_embeds,
                                                const std::optional<at::Tensor>& prepend_mask,
                                                at::TensorList params, c10::string_view options,
                                                c10::string_view layer_options, bool training) {
  return nn::functional::transformer_wrapper_attn_pool(
      embeddings, mask, {std::nullopt, prepend_embeds, prepend_mask, std::nullopt, {}}, params,
      *wrapper_plan(options, layer_options), training);
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  // The stack's inputs (XTC_STACK_INPUTS, <xtc/nn/functional/stack_inputs.h>) follow the tokens, as
  // x-transformers' wrapper passes its other forward arguments on to the stack. Then the wrapper's own
  // embeddings beside the tokens' (sum_embeds, prepend_embeds and its mask), the tokens' own from a
  // token_emb module (external_token_emb), and embed_num_tokens' ids (embed_ids, in the option's order).
  // Then recycling's or looped's steps (0 = the options' default) and looped inference's arguments
  // (WrapperRecurrence).
  m.def("transformer_wrapper(Tensor tokens, " XTC_STACK_INPUTS_SCHEMA
        "Tensor? sum_embeds, Tensor? prepend_embeds, Tensor? prepend_mask, Tensor? token_embeds, Tensor[] "
        "embed_ids, " XTC_WRAPPER_RECURRENCE_SCHEMA
        "Tensor[] params, str options, str layer_options, bool training=False, bool return_embeddings=False) "
        "-> "
        "Tensor");
  // The same, also returning the stack's intermediates as xtc::attention_layers_with_hiddens does (hiddens,
  // layer_hiddens, cached_kv, attention maps), for return_intermediates; with cache_kv (the previous call's),
  // it decodes the last token of `tokens` incrementally (`tokens` holding only the new ones with
  // input_not_include_cache). After the stack's intermediates, the wrapper's (TransformerWrapperRecord):
  // initial_embeds, next_embed_pred (none without add_continuous_pred_head), and looped's step outputs, exit
  // logits and prompt keys and values.
  m.def("transformer_wrapper_with_hiddens(Tensor tokens, " XTC_STACK_INPUTS_SCHEMA
        "Tensor? sum_embeds, Tensor? prepend_embeds, Tensor? prepend_mask, Tensor? token_embeds, Tensor[] "
        "embed_ids, " XTC_WRAPPER_RECURRENCE_SCHEMA
        "Tensor[] cache_kv, bool input_not_include_cache, Tensor[] params, str options, str layer_options, "
        "bool training=False, bool return_embeddings=False) -> (Tensor, Tensor[], Tensor[], Tensor[], "
        "Tensor[], "
        "Tensor, Tensor[], Tensor[], Tensor[], Tensor[])");
  // The logits head alone, for return_logits_and_embeddings (the embeddings come from the ops above).
  m.def(
      "transformer_wrapper_logits(Tensor embeddings, Tensor[] params, str options, str layer_options) -> "
      "Tensor");
  // The attention pool alone (attn_pool), over the embeddings with the forward's mask and prepended
  // positions.
  m.def(
      "transformer_wrapper_attn_pool(Tensor embeddings, Tensor? mask, Tensor? prepend_embeds, Tensor? "
      "prepend_mask, "
      "Tensor[] params, str options, str layer_options, bool training=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("transformer_wrapper", &xtc::ops::transformer_wrapper_kernel);
  m.impl("transformer_wrapper_with_hiddens", &xtc::ops::transformer_wrapper_with_hiddens_kernel);
  m.impl("transformer_wrapper_logits", &xtc::ops::transformer_wrapper_logits_kernel);
  m.impl("transformer_wrapper_attn_pool", &xtc::ops::transformer_wrapper_attn_pool_kernel);
}

// torch.func.vmap decomposes the wrapper into its aten ops (see ops/attention_layers.cpp).
TORCH_LIBRARY_IMPL(xtc, FuncTorchBatchedDecomposition, m) {
  m.impl("transformer_wrapper", &xtc::ops::transformer_wrapper_kernel);
  m.impl("transformer_wrapper_with_hiddens", &xtc::ops::transformer_wrapper_with_hiddens_kernel);
  m.impl("transformer_wrapper_logits", &xtc::ops::transformer_wrapper_logits_kernel);
  m.impl("transformer_wrapper_attn_pool", &xtc::ops::transformer_wrapper_attn_pool_kernel);
}
