// Packed sequences (varlen) in one launch: the arithmetic by which a CTA (or, in the simple kernels, a warp)
// narrows the packed frame of flash_params.h to its own sequence. The kernels then run their dense code on
// the narrowed parameters as batch 0, so every rule (right-aligned causality per sequence, ALiBi, windows,
// soft-cap, GQA) is the dense kernel's, and a grid over (tiles of the longest sequence, heads, sequences)
// needs no host read of the offsets: tiles past a sequence's end exit at once (FlashAttention-2's BlockInfo).
//
// Shape legend: total_q / total_k packed rows, h query heads, hk kv heads, d / dv head dims.
//
// Host and device code: the GoogleTests check it against the per-sequence views the host would pass.
#pragma once

#include <cstdint>
#include <type_traits>

#include "flash_params.h"

#if defined(__CUDACC__)
#define XTC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define XTC_HOST_DEVICE inline
#endif

namespace xtc::cuda {

/// Rows [begin, end) of one sequence in the frame.
struct RowRange {
  int begin, end;
};

/// Offsets `cu` of sequence `seq`, clamped into [0, total] and non-decreasing, and no longer than `longest`
/// (the grid's extent): offsets that break the op's contract never lead a kernel outside the tensors.
XTC_HOST_DEVICE RowRange sequence_rows(const int* cu, int seq, int total, int longest) {
  const auto clamp = [](int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); };
  const int begin = clamp(cu[seq], 0, total);
  const int end = clamp(cu[seq + 1], begin, total);
  return {begin, end - begin > longest ? begin + longest : end};
}

/// The sequence holding packed row `row`: the last s with cu[s] <= row (empty sequences share their start
/// with the next one, which holds the row), by binary search over the sequences + 1 offsets.
XTC_HOST_DEVICE int sequence_of_row(const int* cu, int sequences, int row) {
  int lo = 0, hi = sequences - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// `ptr` moved by `elements` of E; nullptr stays nullptr (the buffers a kernel family does not use).
template <typename E, typename P>
XTC_HOST_DEVICE P* advance(P* ptr, int64_t elements) {
  using Byte = typename std::conditional<std::is_const<P>::value, const E, E>::type;
  return ptr == nullptr ? ptr : static_cast<P*>(static_cast<Byte*>(ptr) + elements);
}

/// Where the lse / D row of (batch, head) starts: (b, h, n) in a dense batch; (h, total_q) in the packed
/// frame, whose head stride narrowing keeps in lse_head_stride (its queries are then one sequence's).
template <bool kVarlen>
XTC_HOST_DEVICE int64_t stats_offset(const FlashFwdParams& p, int batch, int head) {
  return kVarlen ? head * p.lse_head_stride : (static_cast<int64_t>(batch) * p.heads + head) * p.queries;
}

/// Narrows the frame `p` to sequence `seq`: its lengths, its key offset (m - n: causality right-aligned per
/// sequence, as the per-sequence calls), q / out / lse at its first query, k / v at its first key. Returns
/// the first query row, which the simple kernels need to find a row's local index. T is the input dtype, Acc
/// the accumulation (lse) dtype.
template <typename T, typename Acc>
XTC_HOST_DEVICE int narrow_to_sequence(FlashFwdParams& p, int seq) {
  const RowRange q = sequence_rows(p.cu_seqlens_q, seq, p.queries, p.max_queries);
  const RowRange k = sequence_rows(p.cu_seqlens_k, seq, p.keys, p.max_keys);
  p.q = advance<T>(p.q, q.begin * p.q_row_stride);
  p.out = advance<T>(p.out, q.begin * p.o_row_stride);
  p.lse = advance<Acc>(p.lse, q.begin);
  p.k = advance<T>(p.k, k.begin * p.k_row_stride);
  p.v = advance<T>(p.v, k.begin * p.v_row_stride);
  p.queries = q.end - q.begin;
  p.keys = k.end - k.begin;
  p.key_offset = p.keys - p.queries;
  return q.begin;
}

/// The same for the backward's tensors: dO at the first query; the accumulators and outputs, contiguous (1,
/// rows, heads, dim) in the frame, at the sequence's first row; D like lse.
template <typename T, typename Acc>
XTC_HOST_DEVICE int narrow_to_sequence(FlashBwdParams& p, int seq) {
  const int q_begin = sequence_rows(p.cu_seqlens_q, seq, p.queries, p.max_queries).begin;
  const int k_begin = sequence_rows(p.cu_seqlens_k, seq, p.keys, p.max_keys).begin;
  narrow_to_sequence<T, Acc>(static_cast<FlashFwdParams&>(p), seq);
  p.dout = advance<T>(p.dout, q_begin * p.do_row_stride);
  p.dsum = advance<Acc>(p.dsum, q_begin);
  const int64_t q_row = static_cast<int64_t>(p.heads) * p.head_dim;
  p.dq_accum = advance<Acc>(p.dq_accum, q_begin * q_row);
  p.dq = advance<T>(p.dq, q_begin * q_row);
  const int64_t k_row = static_cast<int64_t>(p.kv_heads) * p.head_dim;
  const int64_t v_row = static_cast<int64_t>(p.kv_heads) * p.value_head_dim;
  p.dk_accum = advance<Acc>(p.dk_accum, k_begin * k_row);
  p.dv_accum = advance<Acc>(p.dv_accum, k_begin * v_row);
  p.dk = advance<T>(p.dk, k_begin * k_row);
  p.dv = advance<T>(p.dv, k_begin * v_row);
  return q_begin;
}

}  // namespace xtc::cuda
