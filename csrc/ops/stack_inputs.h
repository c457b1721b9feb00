// The ops' side of the layer stack's forward inputs (XTC_STACK_INPUTS, the one list, in
// <xtc/nn/functional/stack_inputs.h>): the schema entries and kernel parameters every op that runs a stack
// takes (xtc::attention_layers and its _with_hiddens form, the two wrapper ops and theirs), and the
// conversion between the op's arguments and the functional AttentionLayersInputs, both ways (stack_inputs and
// StackArguments below), following each row's kind. Python reads the argument order back from the schema
// (x_transformers_cpp.attention_layers.stack_arguments).
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>
#include <type_traits>
#include <vector>

// "Tensor? mask, Tensor? context, ..., " for a schema (each entry ends in ", ").
#define XTC_STACK_INPUT_SCHEMA_ENTRY(name, schema, cpp, field, kind, default_value, doc) schema " " #name ", "
#define XTC_STACK_INPUTS_SCHEMA XTC_STACK_INPUTS(XTC_STACK_INPUT_SCHEMA_ENTRY)
// "const std::optional<at::Tensor>& mask, ..., " for a kernel's parameters.
#define XTC_STACK_INPUT_PARAMETER(name, schema, cpp, field, kind, default_value, doc) cpp name,
#define XTC_STACK_INPUT_PARAMETERS XTC_STACK_INPUTS(XTC_STACK_INPUT_PARAMETER)
// "const std::optional<at::Tensor>&, ..., " for a typed dispatcher handle.
#define XTC_STACK_INPUT_TYPE(name, schema, cpp, field, kind, default_value, doc) cpp,
#define XTC_STACK_INPUT_TYPES XTC_STACK_INPUTS(XTC_STACK_INPUT_TYPE)
// "mask, context, ..., " to pass them on.
#define XTC_STACK_INPUT_ARGUMENT(name, schema, cpp, field, kind, default_value, doc) name,
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
#define XTC_STACK_ARGUMENT_MEMBER(name, schema, cpp, field, kind, default_value, doc) \
  kind::Storage<std::decay_t<decltype(nn::functional::AttentionLayersInputs::field)>> name;
  XTC_STACK_INPUTS(XTC_STACK_ARGUMENT_MEMBER)
#undef XTC_STACK_ARGUMENT_MEMBER
};

}  // namespace xtc::ops::detail
