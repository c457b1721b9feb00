// How one call of the layer stack packs its tokens (xtc/nn/functional/packing.h). Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/packing.h>

#include <optional>

namespace xtc::nn::functional::detail {

// How one call of the stack packs its tokens (packing.h): x-transformers' flash_pack_seq_kwargs (the caller
// packed x and the context) or the `unpad` option (the stack packs x by its mask, the context by
// context_mask).
struct StackPacking {
  bool unpad = false;
  std::optional<PackedSequences> tokens;           // x's rows: the queries (and self-attention's keys)
  std::optional<PackedSequences> context;          // cross-attention's keys
  bool self_packed = false, cross_packed = false;  // which attention layers run packed
  bool context_is_packed = false;                  // the context tensor holds packed rows (flash_pack_seq)

  PackedAttention self_attention() const { return {&*tokens, &*tokens, true}; }
  PackedAttention cross_attention() const { return {&*tokens, &*context, context_is_packed}; }
};

/// The flash_pack_seq_kwargs of a call, checked as x-transformers' asserts (and what it leaves unchecked).
StackPacking caller_packing(const at::Tensor& x, const AttentionLayersInputs& in,
                            const AttentionLayersPlan& plan);

/// The unpad option on a call with a mask: what needs the padded batch between layers is refused by name.
StackPacking unpadding(const AttentionLayersInputs& in, const AttentionLayersOptions& o);

/// The packing of a call, if any: the caller's or unpad's.
std::optional<StackPacking> stack_packing(const at::Tensor& x, const AttentionLayersInputs& in,
                                          const AttentionLayersPlan& plan);

/// A record's hiddens and self-attention keys and values, (1, hk, total, d), back in the padded frame.
void unpack_record(AttentionLayersHiddens& record, const AttentionLayersPlan& plan,
                   const PackedSequences& tokens);

}  // namespace xtc::nn::functional::detail
