// The layer stack's forward inputs, as x-transformers' AttentionLayers.forward names them: ONE list, in the
// style of torchgen's native_functions.yaml. From it follow the fields of functional::AttentionLayersInputs
// (attention_layers.h), the schemas, kernel parameters and argument conversions of every op that runs a stack
// (csrc/ops/stack_inputs.h), the Python forward's documentation (read through _C.stack_inputs()) and the
// README's table of forward arguments (scripts/kwargs_table.py). An input is one row here and the code that
// reads it.
//
//   X(name, schema type, C++ parameter type, field of AttentionLayersInputs, kind, default, doc)
//
// The kind says which field a row declares and how the op's argument converts to it: Copy (a field of the
// parameter's type), List (std::vector<at::Tensor>), OptionalList (std::vector<std::optional<at::Tensor>>,
// undefined tensors unset), PackOffsets / PackLengths (the two lists that carry one FlashPackSeq, its
// cu_seqlens then its max_seqlen; the lengths' row declares the field). Shapes: b batch, n tokens, m context
// tokens, h heads, N keys (cached ones included).
#pragma once

#include <optional>
#include <type_traits>
#include <vector>

#define XTC_STACK_INPUTS(X)                                                                                  \
  X(mask, "Tensor?", const std::optional<at::Tensor>&, mask, Copy, {},                                       \
    "(b, N) bool, True = keep: the self-attention keys; masked queries get zero attention outputs")          \
  X(context, "Tensor?", const std::optional<at::Tensor>&, context, Copy, {},                                 \
    "(b, m, dim_context): what cross-attention attends to (cross_attend)")                                   \
  X(context_mask, "Tensor?", const std::optional<at::Tensor>&, context_mask, Copy, {},                       \
    "(b, m) bool, True = keep: the cross-attention keys")                                                    \
  X(attn_mask, "Tensor?", const std::optional<at::Tensor>&, attn_mask, Copy, {},                             \
    "(n, N), (h, n, N) or (b | 1, h | 1, n, N) bool, True = may attend: restricts self-attention (on the "   \
    "path "                                                                                                  \
    "that materialises the scores)")                                                                         \
  X(self_attn_kv_mask, "Tensor?", const std::optional<at::Tensor>&, self_attn_kv_mask, Copy, {},             \
    "(b, N) bool: self-attention's key mask instead of `mask`")                                              \
  X(seq_start_pos, "Tensor?", const std::optional<at::Tensor>&, seq_start_pos, Copy, {},                     \
    "(b,) int: left padding; the keys before each sequence's start are hidden (standing in for `mask` on "   \
    "the "                                                                                                   \
    "keys)")                                                                                                 \
  X(attn_bias, "Tensor?", const std::optional<at::Tensor>&, attn_bias, Copy, {},                             \
    "(h, n, N) or (b | 1, h, n, N) float added to self-attention's logits (materialising path)")             \
  X(pos, "Tensor?", const std::optional<at::Tensor>&, pos, Copy, {},                                         \
    "(N,) or (b, N) int: custom key positions; rotary and xPos rotate by them, ALiBi becomes -|pos_j - "     \
    "pos_i| "                                                                                                \
    "* slope; not with T5 or dynamic bias")                                                                  \
  X(mems, "Tensor[]", at::TensorList, mems, List, {},                                                        \
    "Transformer-XL memories, one (b, M, dim) per executed self-attention layer (fewer: the rest get "       \
    "none), "                                                                                                \
    "pre-normed and prepended to its keys and values")                                                       \
  X(mem_masks, "Tensor[]", at::TensorList, mem_masks, OptionalList, {},                                      \
    "(b, M) bool per memory, True = keep")                                                                   \
  X(flash_pack_seq, "Tensor[]", at::TensorList, flash_pack_seq, PackOffsets, {},                             \
    "packed sequences (attn_flash_pack_seq): x (1, total, dim) holds sequences end to end, laid out by "     \
    "[cu_seqlens_q, cu_seqlens_k] (int offsets from 0); each attends within itself; not with masks, "        \
    "attn_mask, attn_bias, mems or a cache")                                                                 \
  X(flash_pack_seq_max, "int[]", at::IntArrayRef, flash_pack_seq, PackLengths, {},                           \
    "[max_seqlen_q, max_seqlen_k] of flash_pack_seq")                                                        \
  X(flash_pack_seq_context, "Tensor[]", at::TensorList, flash_pack_seq_context, PackOffsets, {},             \
    "packed cross-attention (cross_attn_flash_pack_seq): queries laid out by cu_seqlens_q, a packed "        \
    "context "                                                                                               \
    "(1, total_context, dim) by cu_seqlens_k")                                                               \
  X(flash_pack_seq_context_max, "int[]", at::IntArrayRef, flash_pack_seq_context, PackLengths, {},           \
    "[max_seqlen_q, max_seqlen_k] of flash_pack_seq_context")                                                \
  X(causal, "bool?", std::optional<bool>, causal, Copy, {},                                                  \
    "overrides self-attention's causality for this call (unset: the stack's)")                               \
  X(condition, "Tensor?", const std::optional<at::Tensor>&, condition, Copy, {},                             \
    "(b, dim_condition) or (b, n, dim_condition): read by the adaptive norms and layerscale, needed "        \
    "exactly "                                                                                               \
    "with them")                                                                                             \
  X(in_attn_cond, "Tensor?", const std::optional<at::Tensor>&, in_attn_cond, Copy, {},                       \
    "(b, dim) or (b, n, dim) added to every branch's input (gated by learned_reinject_input_gate when "      \
    "set); "                                                                                                 \
    "not with reinject_input")                                                                               \
  X(context_pos, "Tensor?", const std::optional<at::Tensor>&, context_pos, Copy, {},                         \
    "(m,) or (b, m) int: with rotary, cross-attention rotates its queries by the tokens' positions and its " \
    "keys by these")                                                                                         \
  X(self_attn_additional_kv, "Tensor[]", at::TensorList, self_attn_additional_kv, List, {},                  \
    "one (k, v) per layer (the ops take them flattened, [k0, v0, k1, v1, ...]), k (b, kv_heads', len, "      \
    "dim_head), v (b, kv_heads', len, value_dim_head), kv_heads' dividing heads: joined in front of the "    \
    "keys of the last executed self-attention layers (the first without route_additional_kv_to_top)")        \
  X(additional_kv_mask, "Tensor?", const std::optional<at::Tensor>&, additional_kv_mask, Copy, {},           \
    "(b, len) bool over the additional keys of every pair")                                                  \
  X(route_additional_kv_to_top, "bool", bool, route_additional_kv_to_top, Copy, true,                        \
    "additional key/values go to the last self-attention layers (else the first)")                           \
  X(self_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&, self_attn_kv_residuals, Copy, {},   \
    "(b, n, dim) for the first self-attention layer, or (L, b, n, dim) for the first L (a length of 1 "      \
    "broadcasts): added to the keys' and values' input")                                                     \
  X(cross_attn_kv_residuals, "Tensor?", const std::optional<at::Tensor>&, cross_attn_kv_residuals, Copy, {}, \
    "(b, m, dim_context) or (L, b, m, dim_context), as self_attn_kv_residuals for cross-attention")          \
  X(ff_output_scales, "Tensor[]", at::TensorList, ff_output_scales, List, {},                                \
    "one (b, n, dim) per executed feed-forward in turn, multiplying its output (RWKV-8's deep embeddings); " \
    "the feed-forwards past the list run plain")

// The field each kind of row declares in AttentionLayersInputs (kind-named, so the list selects them).
#define XTC_STACK_INPUT_FIELD(name, schema, cpp, field, kind, default_value, doc) \
  XTC_STACK_INPUT_FIELD_##kind(cpp, field, default_value)
#define XTC_STACK_INPUT_FIELD_Copy(cpp, field, default_value) std::decay_t<cpp> field = default_value;
#define XTC_STACK_INPUT_FIELD_List(cpp, field, default_value) std::vector<at::Tensor> field = default_value;
#define XTC_STACK_INPUT_FIELD_OptionalList(cpp, field, default_value) \
  std::vector<std::optional<at::Tensor>> field = default_value;
#define XTC_STACK_INPUT_FIELD_PackOffsets(cpp, field, default_value)
#define XTC_STACK_INPUT_FIELD_PackLengths(cpp, field, default_value) \
  std::optional<FlashPackSeq> field = default_value;
