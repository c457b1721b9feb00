// Plain parameters of the CUDA flash attention kernels.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k, dv head dim of v.
//
// This header includes no torch and no CUDA header: the kernels (flash_fwd.cuh, flash_bwd.cuh) and their
// generated instantiations compile standalone with nvcc, and host-only code (the GoogleTests of
// flash_varlen.h) reads the same structs. The launchers are declared in flash_launch.h; the host glue
// (flash_attention_kernel.cu, flash_attention_varlen_kernel.cu) fills the structs from tensors.
#pragma once

#include <cstdint>

namespace xtc::cuda {

/// Inputs and outputs of one forward call. Strides are in elements; the last dim of q, k, v is contiguous.
struct FlashFwdParams {
  const void* q;  // (b, n, h, d)
  const void* k;  // (b, m, hk, d)
  const void* v;  // (b, m, hk, dv)
  void* out;      // (b, n, h, dv), written by the forward; read (as saved output) by the backward
  void* lse;      // (b, h, n) contiguous, float (double for double inputs), natural-log units
  const bool* key_padding_mask;  // (b, m), true = keep; nullptr when every key is kept
  const double* alibi_slopes;    // (h,) contiguous; nullptr when ALiBi is off

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int64_t mask_batch_stride, mask_key_stride;

  int batch, queries, keys, heads, kv_heads, head_dim, value_head_dim;
  // Query i sits at key position i + key_offset (right alignment, key_offset = m - n).
  int key_offset;
  double scale;    // applied to q.k before ALiBi and softcap
  double softcap;  // 0 = off
  // The visible band of query i, with causal already folded in by the host: key j is visible iff
  // (!has_left || j >= i + key_offset - window_left) && (!has_right || j <= i + key_offset + window_right).
  bool has_left, has_right;
  int window_left, window_right;

  // Packed sequences (varlen) in one launch; nullptr cu_seqlens for a dense batch. The host then passes a
  // frame of batch 1 holding every sequence's rows (q and out (1, total_q, h, .), k and v (1, total_k, hk,
  // .), lse (h, total_q)), with queries = total_q and keys = total_k; cu_seqlens_q / _k (sequences + 1,
  // int32, on the device) give each sequence's rows, and each CTA narrows the frame to its own
  // (flash_varlen.h).
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  int sequences;              // grid.z of the launch
  int max_queries, max_keys;  // grid.x: the longest sequence's queries (forward) or keys (backward)
  int64_t lse_head_stride;    // total_q: lse's and D's head stride, which narrowing leaves as it is
};

/// Extra inputs and outputs of the backward. `out` and `lse` of the base struct are the saved forward
/// results.
struct FlashBwdParams : FlashFwdParams {
  const void* dout;  // (b, n, h, dv)
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  // Accumulators in the accumulation type (float, double for double inputs): dq_accum (b, n, h, d) always,
  // which the tensor-core path zero-fills itself and the host zero-fills for the simple kernels; those also
  // accumulate dk_accum / dv_accum (b, m, hk, d / dv), zero-filled by the host.
  void* dq_accum;
  void* dk_accum;
  void* dv_accum;
  void* dsum;  // (b, h, n) scratch for D = rowsum(dO * O), accumulation type
  // Tensor-core kernel outputs, contiguous in the input dtype (dv == d there): dq (b, n, h, d) = scale *
  // dq_accum, dk and dv (b, m, hk, d).
  void* dq;
  void* dk;
  void* dv;
};

}  // namespace xtc::cuda
