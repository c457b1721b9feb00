// The arithmetic by which the one-launch varlen CUDA kernels narrow the packed frame to one sequence
// (ops/cuda/flash_varlen.h), run on the host: every narrowed pointer, length and lse / D index must be the
// one the per-sequence path would hand the dense kernels for that sequence's slices.
//
// Shape legend: total_q / total_k packed rows, h query heads, hk kv heads, d / dv head dims.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "ops/cuda/flash_varlen.h"

namespace {

using xtc::cuda::FlashBwdParams;

constexpr int64_t kHeads = 4, kKvHeads = 2, kDim = 24, kValueDim = 40;

// A frame as the host glue fills it: q, out, dout (1, total_q, h, .) with padded rows (row stride > h * d), k
// and v (1, total_k, hk, .), lse and D (h, total_q), contiguous accumulators.
struct Frame {
  at::Tensor q, k, v, out, dout, lse, dsum, dq_accum, dk_accum, dv_accum, cu_q, cu_k;
  FlashBwdParams p{};

  Frame(std::vector<int> cu_queries, std::vector<int> cu_keys, int max_q, int max_k) {
    const int64_t total_q = cu_queries.back(), total_k = cu_keys.back();
    const auto half = at::TensorOptions().dtype(at::kHalf);
    const auto acc = at::TensorOptions().dtype(at::kFloat);
    q = at::randn({total_q, kHeads, kDim + 8}, half).narrow(2, 0, kDim).unsqueeze(0);
    k = at::randn({total_k, kKvHeads, kDim}, half).unsqueeze(0);
    v = at::randn({total_k, kKvHeads, kValueDim + 8}, half).narrow(2, 8, kValueDim).unsqueeze(0);
    out = at::empty({1, total_q, kHeads, kValueDim}, half);
    dout = at::randn({total_q, kHeads, kValueDim * 2}, half).narrow(2, 0, kValueDim).unsqueeze(0);
    lse = at::empty({kHeads, total_q}, acc);
    dsum = at::empty({1, kHeads, total_q}, acc);
    dq_accum = at::empty({1, total_q, kHeads, kDim}, acc);
    dk_accum = at::empty({1, total_k, kKvHeads, kDim}, acc);
    dv_accum = at::empty({1, total_k, kKvHeads, kValueDim}, acc);
    cu_q = at::tensor(cu_queries, at::kInt);
    cu_k = at::tensor(cu_keys, at::kInt);
    fill(total_q, total_k, max_q, max_k);
  }

  void fill(int64_t total_q, int64_t total_k, int max_q, int max_k) {
    p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.out = out.data_ptr(),
    p.lse = lse.data_ptr();
    p.q_row_stride = q.stride(1), p.k_row_stride = k.stride(1), p.v_row_stride = v.stride(1);
    p.o_row_stride = out.stride(1), p.do_row_stride = dout.stride(1);
    p.dout = dout.data_ptr(), p.dsum = dsum.data_ptr(), p.dq_accum = dq_accum.data_ptr();
    p.dk_accum = dk_accum.data_ptr(), p.dv_accum = dv_accum.data_ptr();
    p.batch = 1, p.queries = static_cast<int>(total_q), p.keys = static_cast<int>(total_k);
    p.heads = kHeads, p.kv_heads = kKvHeads, p.head_dim = kDim, p.value_head_dim = kValueDim;
    p.key_offset = static_cast<int>(total_k - total_q);
    p.cu_seqlens_q = cu_q.data_ptr<int>(), p.cu_seqlens_k = cu_k.data_ptr<int>();
    p.sequences = static_cast<int>(cu_q.numel() - 1), p.max_queries = max_q, p.max_keys = max_k;
    p.lse_head_stride = total_q;
  }
};

TEST(FlashVarlenParams, NarrowingGivesEachSequenceItsSlices) {
  // Odd lengths, an empty sequence, one without keys, more keys than queries and fewer.
  const std::vector<int> cu_q{0, 5, 5, 12, 13, 30}, cu_k{0, 9, 11, 11, 20, 34};
  Frame f(cu_q, cu_k, 17, 14);
  for (int seq = 0; seq + 1 < static_cast<int>(cu_q.size()); ++seq) {
    const int q0 = cu_q[seq], n = cu_q[seq + 1] - q0, k0 = cu_k[seq], m = cu_k[seq + 1] - k0;
    FlashBwdParams s = f.p;
    const int first = xtc::cuda::narrow_to_sequence<uint16_t, float>(s, seq);
    EXPECT_EQ(first, q0);
    EXPECT_EQ(s.queries, n);
    EXPECT_EQ(s.keys, m);
    EXPECT_EQ(s.key_offset, m - n);  // right-aligned causality within the sequence
    if (n > 0) {                     // (an empty slice has no data pointer to compare with)
      EXPECT_EQ(s.q, f.q.narrow(1, q0, n).data_ptr());
      EXPECT_EQ(s.out, f.out.narrow(1, q0, n).data_ptr());
      EXPECT_EQ(s.dout, f.dout.narrow(1, q0, n).data_ptr());
      EXPECT_EQ(s.dq_accum, f.dq_accum.narrow(1, q0, n).data_ptr());
    }
    if (m > 0) {
      EXPECT_EQ(s.k, f.k.narrow(1, k0, m).data_ptr());
      EXPECT_EQ(s.v, f.v.narrow(1, k0, m).data_ptr());
      EXPECT_EQ(s.dk_accum, f.dk_accum.narrow(1, k0, m).data_ptr());
      EXPECT_EQ(s.dv_accum, f.dv_accum.narrow(1, k0, m).data_ptr());
    }
    for (int head = 0; head < kHeads; ++head) {
      for (int i = 0; i < n; ++i) {
        // The kernels index lse and D as base + stats_offset(batch 0, head) + local row.
        const int64_t at = xtc::cuda::stats_offset<true>(s, 0, head) + i;
        EXPECT_EQ(static_cast<float*>(s.lse) + at, f.lse[head][q0 + i].data_ptr<float>());
        EXPECT_EQ(static_cast<float*>(s.dsum) + at, f.dsum[0][head][q0 + i].data_ptr<float>());
      }
    }
  }
}

TEST(FlashVarlenParams, DenseStatsOffsetIsBatchHeadMajor) {
  FlashBwdParams p{};
  p.heads = 3, p.queries = 7;
  EXPECT_EQ(xtc::cuda::stats_offset<false>(p, 2, 1), (2 * 3 + 1) * 7);
}

TEST(FlashVarlenParams, EveryRowFindsItsSequence) {
  const std::vector<int> cu{0, 0, 4, 4, 4, 9, 10, 10};  // empty sequences first, between and last
  const int sequences = static_cast<int>(cu.size()) - 1;
  for (int row = 0; row < cu.back(); ++row) {
    const int seq = xtc::cuda::sequence_of_row(cu.data(), sequences, row);
    EXPECT_LE(cu[seq], row) << "row " << row;
    EXPECT_LT(row, cu[seq + 1]) << "row " << row;
  }
}

TEST(FlashVarlenParams, OffsetsOutsideTheContractStayInsideTheTensors) {
  // Decreasing, negative, past the rows, and longer than max_seqlen: each range is clamped into [0, total]
  // and to the grid's extent, so no kernel reads or writes outside q, k, v, out.
  const std::vector<int> cu{-3, 8, 2, 40, 41};
  const int total = 20, longest = 6;
  for (int seq = 0; seq + 1 < static_cast<int>(cu.size()); ++seq) {
    const auto r = xtc::cuda::sequence_rows(cu.data(), seq, total, longest);
    EXPECT_GE(r.begin, 0);
    EXPECT_LE(r.begin, r.end);
    EXPECT_LE(r.end, total);
    EXPECT_LE(r.end - r.begin, longest);
  }
}

}  // namespace
