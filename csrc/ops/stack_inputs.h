// The layer stack's forward inputs as every op that runs a stack takes them (xtc::attention_layers and its
// _with_hiddens form, the two wrapper ops and theirs): ONE list, in the style of torchgen's
// native_functions.yaml. The schemas, the kernels' parameters and the functional AttentionLayersInputs they
// build follow it, both ways (stack_inputs and stack_arguments below), and Python reads the argument order
// back from the schema (x_transformers_cpp.attention_layers.stack_arguments), so an input is one row here,
// its field in AttentionLayersInputs, and the code that reads it.
//
//   X(name, schema type, C++ parameter type, field of nn::functional::AttentionLayersInputs, kind)
//
// The kind says how the op's argument and the field convert into each other (stack_inputs() and
// stack_arguments() below follow it): Copy (the same type), List (a Tensor[] and a vector), OptionalList (a
// Tensor[] whose undefined entries are unset optionals), PackOffsets / PackLengths (the two lists that carry
// one FlashPackSeq: its cu_seqlens, then its max_seqlen; the lengths' row converts both).
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>
#include <type_traits>
#include <vector>

#define XTC_STACK_INPUTS(X)                                                                            \
  X(mask, "Tensor?", const std::optional<at::Tensor>&, mask, Copy)                                     \
  X(context, "Tensor?", const std::optional<at::Tensor>&, context, Copy)                               \
  X(context_mask, "Tensor?", const std::optional<at::Tensor>&, context_mask, Copy)                     \
  X(attn_mask, "Tensor?", const std::optional<at::Tensor>&, attn_mask, Copy)                           \
  X(self_attn_kv_mask, "Tensor?", const std::optional<at::Tensor>&, self_attn_kv_mask, Copy)           \
  X(seq_start_pos, "Tensor?", const std::optional<at::Tensor>&, seq_start_pos, Copy)                   \
  X(attn_bias, "Tensor?", const std::optional<at::Tensor>&, attn_bias, Copy)                           \
  X(pos, "Tensor?", const std::optional<at::Tensor>&, pos, Copy)                                       \
  X(mems, "Tensor[]", at::TensorList, mems, List)                                                      \
  X(mem_masks, "Tensor[]", at::TensorList, mem_masks, OptionalList)                                    \
  X(flash_pack_seq, "Tensor[]", at::TensorList, flash_pack_seq, PackOffsets)                           \
  X(flash_pack_seq_max, "int[]", at::IntArrayRef, flash_pack_seq, PackLengths)                         \
  X(flash_pack_seq_context, "Tensor[]", at::TensorList, flash_pack_seq_context, PackOffsets)           \
  X(flash_pack_seq_context_max, "int[]", at::IntArrayRef, flash_pack_seq_context, PackLengths)         \
  X(causal, "bool?", std::optional<bool>, causal, Copy)                                                \
  X(condition, "Tensor?", const std::optional<at::Tensor>&, condition, Copy)                           \
  X(in_attn_cond, "Tensor?", const std::optional<at::Tensor>&, in_attn_cond, Copy)                     \
  X(context_pos, "Tensor?", const std::optional<at::Tensor>&, context_pos, Copy)                       \
  X(self_attn_additional_kv, "Tensor[]", at::TensorList, self_attn_additional_kv, List)                \
  X(additional_kv_mask, "Tensor?", const std::optional<at::Tensor>&, additional_kv_mask, Copy)         \
  X(route_additional_kv_to_top, "bool", bool, route_additional_kv_to_top, Copy)                        \
  X(self_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&, self_attn_kv_residuals, Copy) \
  X(cross_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&, cross_attn_kv_residuals, Copy)

// "Tensor? mask, Tensor? context, ..., " for a schema (each entry ends in ", ").
#define XTC_STACK_INPUT_SCHEMA_ENTRY(name, schema, cpp, field, kind) schema " " #name ", "
#define XTC_STACK_INPUTS_SCHEMA XTC_STACK_INPUTS(XTC_STACK_INPUT_SCHEMA_ENTRY)
// "const std::optional<at::Tensor>& mask, ..., " for a kernel's parameters.
#define XTC_STACK_INPUT_PARAMETER(name, schema, cpp, field, kind) cpp name,
#define XTC_STACK_INPUT_PARAMETERS XTC_STACK_INPUTS(XTC_STACK_INPUT_PARAMETER)
// "const std::optional<at::Tensor>&, ..., " for a typed dispatcher handle.
#define XTC_STACK_INPUT_TYPE(name, schema, cpp, field, kind) cpp,
#define XTC_STACK_INPUT_TYPES XTC_STACK_INPUTS(XTC_STACK_INPUT_TYPE)
// "mask, context, ..., " to pass them on.
#define XTC_STACK_INPUT_ARGUMENT(name, schema, cpp, field, kind) name,
#define XTC_STACK_INPUT_ARGUMENTS XTC_STACK_INPUTS(XTC_STACK_INPUT_ARGUMENT)

namespace xtc::ops::detail {

// The kinds of the list's rows: how an op argument (`to_field`) becomes its field and back (`to_argument`,
// stored as Storage until the op call).
struct Copy {
  template <typename Field>
  using Storage = Field;
  template <typename Field, typename Same>
  static void to_field(Field& field, const Same&, const Same& argument, const char*) {
    field = argument;
  }
  template <typename Field>
  static Field to_argument(const Field& field) {
    return field;
  }
};

struct List {
  template <typename Field>
  using Storage = std::vector<at::Tensor>;
  static void to_field(std::vector<at::Tensor>& field, at::TensorList, at::TensorList argument, const char*);
  static std::vector<at::Tensor> to_argument(const std::vector<at::Tensor>& field) { return field; }
};

struct OptionalList {
  template <typename Field>
  using Storage = std::vector<at::Tensor>;
  static void to_field(std::vector<std::optional<at::Tensor>>& field, at::TensorList, at::TensorList argument,
                       const char*);
  static std::vector<at::Tensor> to_argument(const std::vector<std::optional<at::Tensor>>& field);
};

struct PackOffsets {  // the FlashPackSeq is converted by its PackLengths row
  template <typename Field>
  using Storage = std::vector<at::Tensor>;
  static void to_field(std::optional<nn::functional::FlashPackSeq>&, at::TensorList, at::TensorList,
                       const char*) {}
  static std::vector<at::Tensor> to_argument(const std::optional<nn::functional::FlashPackSeq>& field);
};

struct PackLengths {
  template <typename Field>
  using Storage = std::vector<int64_t>;
  static void to_field(std::optional<nn::functional::FlashPackSeq>& field, at::TensorList offsets,
                       at::IntArrayRef lengths, const char* name);
  static std::vector<int64_t> to_argument(const std::optional<nn::functional::FlashPackSeq>& field);
};

/// Ends the argument list of stack_inputs (every entry of the list ends in a comma).
struct EndOfStackInputs {};

/// The functional stack's inputs from the op's arguments (the packed-sequence lists checked).
nn::functional::AttentionLayersInputs stack_inputs(XTC_STACK_INPUT_PARAMETERS EndOfStackInputs);

/// The op's arguments from the functional stack's inputs, held until the call (the reverse of stack_inputs).
struct StackArguments {
  explicit StackArguments(const nn::functional::AttentionLayersInputs& inputs);
#define XTC_STACK_ARGUMENT_MEMBER(name, schema, cpp, field, kind) \
  kind::Storage<std::decay_t<decltype(nn::functional::AttentionLayersInputs::field)>> name;
  XTC_STACK_INPUTS(XTC_STACK_ARGUMENT_MEMBER)
#undef XTC_STACK_ARGUMENT_MEMBER
};

}  // namespace xtc::ops::detail
