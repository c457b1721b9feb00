// The layer stack's forward inputs as every op that runs a stack takes them (xtc::attention_layers and its
// _with_hiddens form, the two wrapper ops and theirs): ONE list, in the style of torchgen's
// native_functions.yaml. The schemas, the kernels' parameters and the functional AttentionLayersInputs they
// build follow it, and Python reads the argument order back from the schema
// (x_transformers_cpp.attention_layers.stack_arguments), so an input is added here once (and to
// stack_inputs() below, which names each field).
//
//   X(name, schema type, C++ parameter type)
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>

#define XTC_STACK_INPUTS(X)                                              \
  X(mask, "Tensor?", const std::optional<at::Tensor>&)                   \
  X(context, "Tensor?", const std::optional<at::Tensor>&)                \
  X(context_mask, "Tensor?", const std::optional<at::Tensor>&)           \
  X(attn_mask, "Tensor?", const std::optional<at::Tensor>&)              \
  X(self_attn_kv_mask, "Tensor?", const std::optional<at::Tensor>&)      \
  X(seq_start_pos, "Tensor?", const std::optional<at::Tensor>&)          \
  X(attn_bias, "Tensor?", const std::optional<at::Tensor>&)              \
  X(pos, "Tensor?", const std::optional<at::Tensor>&)                    \
  X(mems, "Tensor[]", at::TensorList)                                    \
  X(mem_masks, "Tensor[]", at::TensorList)                               \
  X(flash_pack_seq, "Tensor[]", at::TensorList)                          \
  X(flash_pack_seq_max, "int[]", at::IntArrayRef)                        \
  X(flash_pack_seq_context, "Tensor[]", at::TensorList)                  \
  X(flash_pack_seq_context_max, "int[]", at::IntArrayRef)                \
  X(causal, "bool?", std::optional<bool>)                                \
  X(condition, "Tensor?", const std::optional<at::Tensor>&)              \
  X(in_attn_cond, "Tensor?", const std::optional<at::Tensor>&)           \
  X(context_pos, "Tensor?", const std::optional<at::Tensor>&)            \
  X(self_attn_additional_kv, "Tensor[]", at::TensorList)                 \
  X(additional_kv_mask, "Tensor?", const std::optional<at::Tensor>&)     \
  X(route_additional_kv_to_top, "bool", bool)                            \
  X(self_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&) \
  X(cross_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&)

// "Tensor? mask, Tensor? context, ..., " for a schema (each entry ends in ", ").
#define XTC_STACK_INPUT_SCHEMA_ENTRY(name, schema, cpp) schema " " #name ", "
#define XTC_STACK_INPUTS_SCHEMA XTC_STACK_INPUTS(XTC_STACK_INPUT_SCHEMA_ENTRY)
// "const std::optional<at::Tensor>& mask, ..., " for a kernel's parameters.
#define XTC_STACK_INPUT_PARAMETER(name, schema, cpp) cpp name,
#define XTC_STACK_INPUT_PARAMETERS XTC_STACK_INPUTS(XTC_STACK_INPUT_PARAMETER)
// "const std::optional<at::Tensor>&, ..., " for a typed dispatcher handle.
#define XTC_STACK_INPUT_TYPE(name, schema, cpp) cpp,
#define XTC_STACK_INPUT_TYPES XTC_STACK_INPUTS(XTC_STACK_INPUT_TYPE)
// "mask, context, ..., " to pass them on.
#define XTC_STACK_INPUT_ARGUMENT(name, schema, cpp) name,
#define XTC_STACK_INPUT_ARGUMENTS XTC_STACK_INPUTS(XTC_STACK_INPUT_ARGUMENT)

namespace xtc::ops::detail {

/// Ends the argument list of stack_inputs (every entry of the list ends in a comma).
struct EndOfStackInputs {};

/// The functional stack's inputs from the op's arguments (the packed-sequence lists checked).
nn::functional::AttentionLayersInputs stack_inputs(XTC_STACK_INPUT_PARAMETERS EndOfStackInputs);

}  // namespace xtc::ops::detail
