// Tensor-core forward kernel of xtc::flash_attention for float32 inputs: mma.sync.m16n8k8 on TF32 operands with
// float32 accumulation, every rule of the op (key padding, causal / window band, ALiBi, soft-cap, GQA). At
// torch's matmul precision 'highest' each product runs as 3xTF32 (big x big + big x small + small x big, the
// small part being x - tf32(x)): float32-accurate products, as torch's own 'highest' asks; at 'high' / 'medium'
// one TF32 product, as torch's TF32 matmuls. The backward stays on the warp-per-row kernel. Off by default (the
// cuda_fp32_tensor_cores backend) until a GPU has run it.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim (of q, k and v).
//
// Layout: one CTA per (64 query rows, head, batch), four warps of 16 rows, 64-key tiles. Q, K and V tiles sit in
// shared memory as float32 rows padded to d + 4 floats: with that stride (4 mod 32 banks) the A fragment reads
// (row g, column t) and the B fragment reads of K hit 32 distinct banks, and so do the V reads below. The TF32
// A fragment of m16n8k8 wants (row, k) = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4), where the S
// accumulator holds (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1): P V takes the accumulator as it is by
// permuting the keys inside each 8-key step (k = t is key 2t, k = t + 4 is key 2t + 1) and reading V's rows in
// the same order, so no shuffle is needed (a sum over keys does not care about their order).
#pragma once

#include "flash_fwd.cuh"

namespace xtc::cuda {
namespace detail {

// x rounded to TF32 (10 mantissa bits, round to nearest), as the 32-bit register mma reads.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// c (16x8 fp32) += a (16x8, row, TF32) * b (8x8, col, TF32).
__device__ __forceinline__ void mma_1688_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A float32 operand as the products read it: its TF32 rounding, and with kSplit the TF32 rounding of the rest.
template <bool kSplit>
struct Tf32Operand {
  uint32_t big, small;
  __device__ __forceinline__ explicit Tf32Operand(float x) : big(to_tf32(x)), small(0) {
    if constexpr (kSplit) small = to_tf32(x - __uint_as_float(big));
  }
};

// c += a * b on float32 fragments: one TF32 product, or 3xTF32 with kSplit (the small terms first, so they are
// not lost against the big one).
template <bool kSplit>
__device__ __forceinline__ void mma_1688_f32(float (&c)[4], const Tf32Operand<kSplit> (&a)[4],
                                             const Tf32Operand<kSplit>& b0, const Tf32Operand<kSplit>& b1) {
  const uint32_t big[4] = {a[0].big, a[1].big, a[2].big, a[3].big};
  if constexpr (kSplit) {
    const uint32_t small[4] = {a[0].small, a[1].small, a[2].small, a[3].small};
    mma_1688_tf32(c, small, b0.big, b1.big);
    mma_1688_tf32(c, big, b0.small, b1.small);
  }
  mma_1688_tf32(c, big, b0.big, b1.big);
}

template <int kHeadDim>
struct Tf32FwdConfig {
  static constexpr int kNWarps = 4, kBlockM = 16 * kNWarps, kBlockN = 64, kThreads = 32 * kNWarps;
  static constexpr int kStride = kHeadDim + 4;  // floats; 4 mod 32 banks (see the file comment)
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kStride * 4 + kBlockN;  // + keep flags
  static_assert(kHeadDim % 8 == 0, "head dims in steps of the k8 products");
};

// Rows [row0, row0 + kRows) of a float32 (rows_total, kCols) matrix into shared memory rows of kCols + 4 floats,
// 16 bytes a copy; rows past rows_total are zero-filled. Needs 16-byte aligned rows (the host ensures).
template <int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_rows_f32(float* smem, const float* gmem, int64_t row_stride, int row0,
                                              int rows_total, int tid) {
  constexpr int kChunks = kCols / 4;
#pragma unroll
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 4;
    const bool valid = row0 + r < rows_total;
    const float* src = valid ? gmem + static_cast<int64_t>(row0 + r) * row_stride + col : gmem;
    cp_async_16(smem_addr(smem + r * (kCols + 4) + col), src, valid);
  }
}

template <int kHeadDim, bool kSplit, bool kBias>
__global__ void __launch_bounds__(Tf32FwdConfig<kHeadDim>::kThreads) flash_fwd_tf32_kernel(const FlashFwdParams p) {
  using Cfg = Tf32FwdConfig<kHeadDim>;
  using Operand = Tf32Operand<kSplit>;
  constexpr int kD = kHeadDim, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads;
  constexpr int kStride = Cfg::kStride;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* sQ = reinterpret_cast<float*>(smem_raw);
  float* sK = sQ + kBlockM * kStride;
  float* sV = sK + kBlockN * kStride;
  bool* sKeep = reinterpret_cast<bool*>(sV + kBlockN * kStride);

  const int m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head % p.kv_heads;  // x-transformers' (r kvh) head expansion
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;  // mma fragment coordinates: row group, thread in group
  const int row0 = m_block * kBlockM, row_last = min(row0 + kBlockM, p.queries) - 1;
  const int w0 = warp * 16;  // this warp's first row in the CTA tile
  const int rows[2] = {row0 + w0 + g, row0 + w0 + g + 8};
  const TileRange tiles = visible_key_tiles<kBlockN>(p, row0, row_last);

  const float* q = static_cast<const float*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const float* k = static_cast<const float*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const float* v = static_cast<const float*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;

  load_rows_f32<kBlockM, kD, kThreads>(sQ, q, p.q_row_stride, row0, p.queries, tid);
  cp_async_commit();

  const LogitTransform logit = make_logit_transform(p, head);
  constexpr bool kRawScores = !kBias;  // as flash_fwd_tile: the scale enters at the exponent
  const float score_factor = kRawScores ? logit.scale_log2 : 1.f;
  float acc_o[kD / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int tile = tiles.begin; tile < tiles.end; ++tile) {
    const int key0 = tile * kBlockN;
    // Bit 0: some key of the tile is kept; bit 1: all are. `keep` is uniform, so the barrier is collective.
    int state = (key0 < p.keys ? 1 : 0) | (key0 + kBlockN <= p.keys ? 2 : 0);
    if (keep != nullptr) {
      const bool kept = tid < kBlockN && key0 + tid < p.keys && keep[(key0 + tid) * p.mask_key_stride];
      if (tid < kBlockN) sKeep[tid] = kept;
      const int count = __syncthreads_count(kept);
      state = (count > 0 ? 1 : 0) | (count == kBlockN ? 2 : 0);
    }
    if (!(state & 1)) continue;  // every key padded: nothing to load
    load_rows_f32<kBlockN, kD, kThreads>(sK, k, p.k_row_stride, key0, p.keys, tid);
    load_rows_f32<kBlockN, kD, kThreads>(sV, v, p.v_row_stride, key0, p.keys, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x 64 keys: A (row, k) = Q[row][dim], B (k, n) = K[key n][dim].
    float s[kBlockN / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kD / 8; ++kk) {
      const float* qr = sQ + (w0 + g) * kStride + kk * 8 + t;
      const Operand a[4] = {Operand(qr[0]), Operand(qr[8 * kStride]), Operand(qr[4]), Operand(qr[8 * kStride + 4])};
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        const float* kr = sK + (nt * 8 + g) * kStride + kk * 8 + t;
        mma_1688_f32<kSplit>(s[nt], a, Operand(kr[0]), Operand(kr[4]));
      }
    }

    const bool whole_tile = (state & 2) && (!p.has_left || key0 >= row_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= row0 + p.key_offset + p.window_right);
    auto score_stage = [&](auto alibi, auto softcap, auto check) {
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col_local = nt * 8 + 2 * t + (e & 1), row = rows[e >> 1];
          float unused_tanh;
          float x = kRawScores ? s[nt][e]
                               : logit.template apply<decltype(alibi)::value, decltype(softcap)::value>(
                                     s[nt][e], row, key0 + col_local, unused_tanh);
          if constexpr (decltype(check)::value) {
            const bool kept = keep == nullptr ? key0 + col_local < p.keys : sKeep[col_local];
            if (!(kept && in_band(p, row, key0 + col_local))) x = -INFINITY;
          }
          s[nt][e] = x;
        }
      }
    };
    with_score_flags<kBias>(logit.has_alibi, logit.has_softcap, !whole_tile, score_stage);

    // Online softmax, as flash_fwd_tile: a row with no visible key yet keeps max -inf and reference 0.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float ref_f = (mx == -INFINITY ? 0.f : mx) * score_factor;
      const float correction = exp2_approx(row_max[r] * score_factor - ref_f);
      row_sum[r] *= correction;
#pragma unroll
      for (int dn = 0; dn < kD / 8; ++dn) {
        acc_o[dn][2 * r] *= correction;
        acc_o[dn][2 * r + 1] *= correction;
      }
      row_max[r] = mx;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        s[nt][2 * r] = exp2_approx(fmaf(s[nt][2 * r], score_factor, -ref_f));
        s[nt][2 * r + 1] = exp2_approx(fmaf(s[nt][2 * r + 1], score_factor, -ref_f));
        row_sum[r] += s[nt][2 * r] + s[nt][2 * r + 1];
      }
    }

    // O += P V, 8 keys a step in the order k = t <-> key 2t, k = t + 4 <-> key 2t + 1 (the file comment).
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      const Operand a[4] = {Operand(s[j][0]), Operand(s[j][2]), Operand(s[j][1]), Operand(s[j][3])};
      const float* vr = sV + (j * 8 + 2 * t) * kStride + g;
#pragma unroll
      for (int dn = 0; dn < kD / 8; ++dn)
        mma_1688_f32<kSplit>(acc_o[dn], a, Operand(vr[dn * 8]), Operand(vr[kStride + dn * 8]));
    }
    __syncthreads();  // every warp is done with sK, sV and sKeep before the next tile lands there
  }
  cp_async_wait<0>();  // no copy may outlive the CTA (the Q copy is pending when no tile was live)

  float* out = static_cast<float*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + (static_cast<int64_t>(batch) * p.heads + head) * p.queries;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum != 0.f ? 1.f / sum : 0.f;  // no visible key: 0 and lse -inf; NaN goes on (fwd.cuh)
    if (rows[r] < p.queries) {
      float* out_row = out + rows[r] * p.o_row_stride;
#pragma unroll
      for (int dn = 0; dn < kD / 8; ++dn)
        *reinterpret_cast<float2*>(out_row + dn * 8 + 2 * t) =
            make_float2(acc_o[dn][2 * r] * inv, acc_o[dn][2 * r + 1] * inv);
      if (t == 0) lse[rows[r]] = sum != 0.f ? (row_max[r] * score_factor + __log2f(sum)) * kLn2 : -INFINITY;
    }
  }
}

template <int kHeadDim, bool kSplit, bool kBias>
cudaError_t launch_flash_fwd_tf32(const FlashFwdParams& params, cudaStream_t stream) {
  using Cfg = Tf32FwdConfig<kHeadDim>;
  auto kernel = flash_fwd_tf32_kernel<kHeadDim, kSplit, kBias>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(ceil_div(params.queries, Cfg::kBlockM), params.heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace detail

template <int kHeadDim, bool kSplit>
cudaError_t run_flash_fwd_tf32(const FlashFwdParams& params, cudaStream_t stream) {
  // kBias == false keeps raw scores until the exponent, which needs a positive scale to keep the row maxima.
  if (params.alibi_slopes != nullptr || params.softcap > 0 || !(params.scale > 0))
    return detail::launch_flash_fwd_tf32<kHeadDim, kSplit, true>(params, stream);
  return detail::launch_flash_fwd_tf32<kHeadDim, kSplit, false>(params, stream);
}

}  // namespace xtc::cuda
