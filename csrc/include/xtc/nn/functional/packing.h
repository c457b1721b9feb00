// Packed sequences: the tokens of a batch laid end to end, (1, total, ...), without padding. Two sources make
// them: x-transformers' flash_pack_seq_kwargs (the caller packed; FlashAttention's cu_seqlens) and the xtc
// extension `unpad` (the stack packs the kept tokens of a (b, n) mask). Either way every token-wise layer
// runs on `total` rows, and attention runs per sequence in xtc::flash_attention_varlen, or, for what that
// kernel cannot express, in the padded frame: the packed rows scattered into (b, n, ...), the dense path,
// gathered back.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace xtc::nn::functional {

/// Where the packed rows of one side of attention (its queries, or its keys) sit.
struct PackedSequences {
  at::Tensor cu_seqlens;  // (b + 1) int32 on the CPU: the sequences' offsets in the packed rows
  int64_t max_seqlen = 0;
  at::Tensor indices;     // (total) int64: each packed row's place in the frame's b * n rows
  at::Tensor frame_mask;  // (b, n) bool: the padded frame, True where a packed row sits
  /// Whether each sequence's rows are consecutive frame positions (right / left padding, or caller-packed):
  /// then distances between packed rows are the frame's distances, and ALiBi and windows run in the kernel.
  bool consecutive = true;

  int64_t batch() const { return frame_mask.size(0); }
  int64_t frame_length() const { return frame_mask.size(1); }
  int64_t total() const { return indices.size(0); }
};

/// The kept tokens of `mask` (b, n) bool, row by row, in order; any pattern (not only right padding).
PackedSequences pack_by_mask(const at::Tensor& mask);

/// Caller-packed sequences, FlashAttention's layout: `cu_seqlens` (b + 1) integer offsets from 0 to `total`,
/// `max_seqlen` bounding every length; the frame is (b, max_seqlen). `name` (e.g. "flash_pack_seq_kwargs")
/// and `key` name the argument in errors.
PackedSequences pack_by_offsets(const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t total,
                                const char* name, const char* key);

/// Rows of t (b, n, ...) at the packed positions: (1, total, ...).
at::Tensor pack(const at::Tensor& t, const PackedSequences& layout);

/// Packed rows t (1, total, ...) put back in the frame: (b, n, ...), zeros elsewhere.
at::Tensor unpack(const at::Tensor& t, const PackedSequences& layout);

}  // namespace xtc::nn::functional
