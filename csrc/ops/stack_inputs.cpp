#include "ops/stack_inputs.h"

#include <c10/util/Exception.h>

namespace xtc::ops::detail {

void List::to_field(std::vector<at::Tensor>& field, at::TensorList, at::TensorList argument, const char*) {
  field = argument.vec();
}

// Tracing takes no lists of optional tensors, so the schema has Tensor[]: an undefined entry is an unset one.
void OptionalList::to_field(std::vector<std::optional<at::Tensor>>& field, at::TensorList,
                            at::TensorList argument, const char*) {
  field.clear();
  for (const auto& t : argument) field.push_back(t.defined() ? std::optional<at::Tensor>(t) : std::nullopt);
}

std::vector<at::Tensor> OptionalList::to_argument(const std::vector<std::optional<at::Tensor>>& field) {
  std::vector<at::Tensor> argument;
  for (const auto& t : field) argument.push_back(t.value_or(at::Tensor()));
  return argument;
}

std::vector<at::Tensor> PackOffsets::to_argument(const std::optional<nn::functional::FlashPackSeq>& field) {
  if (!field.has_value()) return {};
  return {field->cu_seqlens_q, field->cu_seqlens_k};
}

// flash_pack_seq_kwargs as the schema carries them: [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q,
// max_seqlen_k], or two empty lists.
void PackLengths::to_field(std::optional<nn::functional::FlashPackSeq>& field, at::TensorList offsets,
                           at::IntArrayRef lengths, const char* name) {
  field.reset();
  if (offsets.empty() && lengths.empty()) return;
  TORCH_CHECK_VALUE(offsets.size() == 2 && lengths.size() == 2, "AttentionLayers: expected ", name,
                    " as [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q, max_seqlen_k], got ", offsets.size(),
                    " tensors and ", lengths.size(), " lengths");
  field = nn::functional::FlashPackSeq{offsets[0], offsets[1], lengths[0], lengths[1]};
}

std::vector<int64_t> PackLengths::to_argument(const std::optional<nn::functional::FlashPackSeq>& field) {
  if (!field.has_value()) return {};
  return {field->max_seqlen_q, field->max_seqlen_k};
}

nn::functional::AttentionLayersInputs stack_inputs(XTC_STACK_INPUT_PARAMETERS EndOfStackInputs) {
  nn::functional::AttentionLayersInputs inputs;
#define XTC_STACK_INPUT_TO_FIELD(name, schema, cpp, field, kind, default_value, doc) \
  kind::to_field(inputs.field, field, name, #field);
  XTC_STACK_INPUTS(XTC_STACK_INPUT_TO_FIELD)
#undef XTC_STACK_INPUT_TO_FIELD
  return inputs;
}

StackArguments::StackArguments(const nn::functional::AttentionLayersInputs& inputs) {
#define XTC_STACK_INPUT_TO_ARGUMENT(name, schema, cpp, field, kind, default_value, doc) \
  name = kind::to_argument(inputs.field);
  XTC_STACK_INPUTS(XTC_STACK_INPUT_TO_ARGUMENT)
#undef XTC_STACK_INPUT_TO_ARGUMENT
}

}  // namespace xtc::ops::detail
