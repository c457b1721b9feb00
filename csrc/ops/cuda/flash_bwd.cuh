// Backward kernels of xtc::flash_attention on CUDA.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k, dv head dim of v.
//
// Tensor-core kernel (FlashAttention-2 style):
//   1. D = rowsum(dO * O) per (b, h, query), so dS = P * (dP - D) needs no second pass over the keys.
//   2. One CTA per (key tile of kBlockN keys, kv head, batch); each warp owns 16 keys and keeps their dK, dV rows
//      in fp32 registers. The CTA walks every query head of its GQA group and every query tile the band can
//      reach (double-buffered Q / dO tiles through cp.async), so dK and dV are summed over the group in registers
//      and written once, without atomics. Working on S^T = K Q^T (keys as rows) puts P^T and dS^T straight into
//      the A-fragment layout of the dV += P^T dO and dK += dS^T Q products.
//   3. dQ needs a sum over key tiles that live in different CTAs: dS^T goes through shared memory, each warp
//      forms a dS K block and adds it with fp32 atomicAdd into dq_accum (b, n, h, d); the host scales and casts.
// The atomics make dQ non-deterministic in its last bits (the order of fp32 additions varies run to run).
// A deterministic variant is not offered: it would need a per-key-tile dQ buffer and a reduction pass
// (m / kBlockN times the dq_accum memory), which costs more than it is worth here.
//
// The simple kernel (float / double) recomputes each row's probabilities, one warp per query row, and adds dK and
// dV with atomics in the accumulation type; it favours exactness over speed.
#pragma once

#include "flash_fwd.cuh"

namespace xtc::cuda {
namespace detail {

template <int kHeadDim>
struct BwdPrologue {
  static constexpr int kLanesPerRow = kHeadDim / 8;  // each lane reads 8 elements (16 bytes) of dO and of O
  static constexpr int kThreads = 128;
  static constexpr int kRowsPerBlock = kThreads / kLanesPerRow;
};

// Tensor-core path, before the main kernel: D[b, h, i] = sum_c dO[b, i, h, c] * O[b, i, h, c] with 16-byte loads,
// kHeadDim / 8 lanes per (b, i, h) row, and the row's fp32 dq_accum zeroed in the same pass (one launch and one
// write of dq_accum, instead of a separate memset).
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(BwdPrologue<kHeadDim>::kThreads) flash_bwd_prologue_kernel(const FlashBwdParams p) {
  using Pro = BwdPrologue<kHeadDim>;
  const int64_t row_id = static_cast<int64_t>(blockIdx.x) * Pro::kRowsPerBlock + threadIdx.x / Pro::kLanesPerRow;
  const int part = threadIdx.x % Pro::kLanesPerRow;
  const bool valid = row_id < static_cast<int64_t>(p.batch) * p.queries * p.heads;
  float sum = 0.f;
  int batch = 0, i = 0, head = 0;
  if (valid) {
    head = static_cast<int>(row_id % p.heads);
    i = static_cast<int>((row_id / p.heads) % p.queries);
    batch = static_cast<int>(row_id / (static_cast<int64_t>(p.heads) * p.queries));
    const uint4 dout_raw = *reinterpret_cast<const uint4*>(
        static_cast<const T*>(p.dout) + batch * p.do_batch_stride + i * p.do_row_stride + head * p.do_head_stride +
        part * 8);
    const uint4 out_raw = *reinterpret_cast<const uint4*>(
        static_cast<const T*>(p.out) + batch * p.o_batch_stride + i * p.o_row_stride + head * p.o_head_stride +
        part * 8);
    const T* dout8 = reinterpret_cast<const T*>(&dout_raw);
    const T* out8 = reinterpret_cast<const T*>(&out_raw);
#pragma unroll
    for (int c = 0; c < 8; ++c) sum += to_float(dout8[c]) * to_float(out8[c]);
    // dq_accum is (b, n, h, d) contiguous: row_id * d is the row's start.
    float4* dq_row = reinterpret_cast<float4*>(static_cast<float*>(p.dq_accum) + row_id * kHeadDim + part * 8);
    dq_row[0] = make_float4(0.f, 0.f, 0.f, 0.f);
    dq_row[1] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int offset = Pro::kLanesPerRow / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (valid && part == 0)
    static_cast<float*>(p.dsum)[(static_cast<int64_t>(batch) * p.heads + head) * p.queries + i] = sum;
}

// Tensor-core path, after the main kernel: dq = dq_accum * scale in the input dtype, 8 elements per thread.
constexpr int kEpilogueThreads = 256;
template <typename T>
__global__ void __launch_bounds__(kEpilogueThreads) flash_bwd_dq_epilogue_kernel(const FlashBwdParams p, int64_t vectors) {
  const int64_t v8 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v8 >= vectors) return;
  const float4* src = reinterpret_cast<const float4*>(p.dq_accum) + 2 * v8;
  const float4 lo = src[0], hi = src[1];
  const float scale = static_cast<float>(p.scale);
  uint4 packed;
  packed.x = pack2<T>(lo.x * scale, lo.y * scale);
  packed.y = pack2<T>(lo.z * scale, lo.w * scale);
  packed.z = pack2<T>(hi.x * scale, hi.y * scale);
  packed.w = pack2<T>(hi.z * scale, hi.w * scale);
  reinterpret_cast<uint4*>(p.dq)[v8] = packed;
}

// P = exp(logit - lse) and dS = P (dP - D) (times d softcap / d logit), in place of S^T and dP^T, for one warp's
// 16 keys x kBlockM queries in the m16n8 accumulator layout: [nt][e] is key key_row0 + g (+ 8 for e >= 2) of the
// tile starting at key0, query q0 + 8 nt + 2t + e % 2. lse_tile and d_tile hold the query tile's lse (natural log,
// as saved) and D; keep_tile the key tile's padding flags (read only when kCheck).
template <int kBlockM, bool kAlibi, bool kSoftcap, bool kCheck>
__device__ __forceinline__ void bwd_probabilities_and_grads(float (&s)[kBlockM / 8][4], float (&dp)[kBlockM / 8][4],
                                                            const float* lse_tile, const float* d_tile,
                                                            const LogitTransform& logit, const FlashFwdParams& p,
                                                            const bool* keep_tile, int q0, int key0, int key_row0,
                                                            int g, int t) {
#pragma unroll
  for (int nt = 0; nt < kBlockM / 8; ++nt) {
    // lse and D of this thread's two query columns (2t, 2t + 1 of the n8 tile), one 8-byte read each; lse to
    // log2 units, +inf for rows that saw no key (lse = -inf), so that exp2(x - inf) = 0 gives P = 0 there.
    const float2 lse_raw = *reinterpret_cast<const float2*>(lse_tile + nt * 8 + 2 * t);
    const float2 lse2 = make_float2(lse_raw.x == -INFINITY ? INFINITY : lse_raw.x * kLog2e,
                                    lse_raw.y == -INFINITY ? INFINITY : lse_raw.y * kLog2e);
    const float2 d2 = *reinterpret_cast<const float2*>(d_tile + nt * 8 + 2 * t);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key_local = key_row0 + g + (e >= 2 ? 8 : 0);
      const int row = q0 + nt * 8 + 2 * t + (e & 1), key = key0 + key_local;
      float softcap_tanh;
      const float x = logit.template apply<kAlibi, kSoftcap>(s[nt][e], row, key, softcap_tanh);
      float prob = exp2_approx(x - ((e & 1) ? lse2.y : lse2.x));
      if constexpr (kCheck) {
        if (!(keep_tile[key_local] && in_band(p, row, key))) prob = 0.f;
      }
      float ds = prob * (dp[nt][e] - ((e & 1) ? d2.y : d2.x));
      if constexpr (kSoftcap) ds *= 1.f - softcap_tanh * softcap_tanh;
      s[nt][e] = prob;
      dp[nt][e] = ds;
    }
  }
}

// Writes one warp's dK (times the scale) and dV rows from m16n8-layout accumulators: [dn][e] is key
// key_row + g (+ 8 for e >= 2), head dim 8 dn + 2t + e % 2. Keys past m are skipped.
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_dk_dv(const FlashBwdParams& p, const float (&acc_dk)[kHeadDim / 8][4],
                                            const float (&acc_dv)[kHeadDim / 8][4], int batch, int kv_head,
                                            int key_row, int g, int t) {
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_row + g + 8 * r;
    if (key >= p.keys) continue;
    const int64_t offset = ((static_cast<int64_t>(batch) * p.keys + key) * p.kv_heads + kv_head) * kHeadDim;
    T* dk = static_cast<T*>(p.dk) + offset;
    T* dv = static_cast<T*>(p.dv) + offset;
#pragma unroll
    for (int dn = 0; dn < kHeadDim / 8; ++dn) {
      *reinterpret_cast<uint32_t*>(dk + dn * 8 + 2 * t) =
          pack2<T>(acc_dk[dn][2 * r] * scale, acc_dk[dn][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + dn * 8 + 2 * t) = pack2<T>(acc_dv[dn][2 * r], acc_dv[dn][2 * r + 1]);
    }
  }
}

template <typename T, int kHeadDim, int kBlockM, int kBlockN>
struct BwdConfig {
  static constexpr int kNWarps = kBlockN / 16;  // one warp per 16 keys
  static constexpr int kThreads = 32 * kNWarps;
  static constexpr int kStride = kHeadDim + 8;  // padded smem rows: conflict-free ldmatrix
  static constexpr int kDsStride = kBlockM + 8;
  static constexpr int kTileBytes = static_cast<int>(sizeof(T)) * kStride;
  static constexpr int kSmemBytes = 2 * kBlockN * kTileBytes                          // K, V
                                    + 2 * 2 * kBlockM * kTileBytes                    // Q, dO, double-buffered
                                    + kBlockN * kDsStride * static_cast<int>(sizeof(T))  // dS^T
                                    + 2 * 2 * kBlockM * static_cast<int>(sizeof(float))  // lse, D
                                    + kBlockN;                                        // keep flags
  static_assert(kHeadDim % 16 == 0 && kBlockM % 16 == 0 && kBlockN % 16 == 0, "tiles are mma multiples");
  // dQ = dS K split over the warps: 32 query rows per warp (16 where the head dims would split below 16), the
  // head dims shared among the warps of a row block.
  static constexpr int kDqTileM =
      kBlockM >= 32 && kHeadDim / (kNWarps / (kBlockM / 32)) >= 16 ? 32 : 16;
  static constexpr int kDqWarpsM = kBlockM / kDqTileM;
  static constexpr int kDqWarpsN = kNWarps / kDqWarpsM;
  static constexpr int kDqTileN = kHeadDim / kDqWarpsN;
  static_assert(kNWarps % kDqWarpsM == 0 && kDqTileN % 16 == 0 && kDqTileN * kDqWarpsN == kHeadDim,
                "the dQ product splits evenly over the warps");
};

// One CTA's key tile of (kv head, batch). kVarlen: p is narrowed to one packed sequence (batch 0).
template <typename T, int kHeadDim, int kBlockM, int kBlockN, bool kVarlen>
__device__ __forceinline__ void flash_bwd_tile(const FlashBwdParams& p, int n_block, int kv_head, int batch) {
  using Cfg = BwdConfig<T, kHeadDim, kBlockM, kBlockN>;
  constexpr int kD = kHeadDim, kThreads = Cfg::kThreads;
  constexpr int kStride = Cfg::kStride, kDsStride = Cfg::kDsStride;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBlockN * kStride;
  T* sQ = sV + kBlockN * kStride;    // [2][kBlockM][kStride]
  T* sdO = sQ + 2 * kBlockM * kStride;  // [2][kBlockM][kStride]
  T* sdS = sdO + 2 * kBlockM * kStride;  // [kBlockN][kDsStride], dS^T
  float* sLse = reinterpret_cast<float*>(sdS + kBlockN * kDsStride);  // [2][kBlockM], as saved (natural log)
  float* sD = sLse + 2 * kBlockM;                                       // [2][kBlockM]
  bool* sKeep = reinterpret_cast<bool*>(sD + 2 * kBlockM);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int key0 = n_block * kBlockN;
  const int key_last = min(key0 + kBlockN, p.keys) - 1;
  const int kw0 = warp * 16;  // this warp's first key row within the tile

  // The key tile is fixed for the CTA, so its padding flags are read once.
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;
  bool kept = true;
  if (tid < kBlockN) {
    const int j = key0 + tid;
    kept = j < p.keys && (keep == nullptr || keep[j * p.mask_key_stride]);
    sKeep[tid] = kept;
  }
  const bool any_kept = __syncthreads_or(tid < kBlockN && kept);
  const bool all_kept = __syncthreads_and(kept);

  const TileRange qtiles = reaching_query_tiles<kBlockM>(p, key0, key_last);
  const int qt_begin = qtiles.begin, n_qtiles = qtiles.end - qtiles.begin;
  const int group = p.heads / p.kv_heads;
  const int n_iter = any_kept ? group * n_qtiles : 0;  // (group head, query tile) pairs

  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const float* lse = static_cast<const float*>(p.lse);
  const float* dsum = static_cast<const float*>(p.dsum);
  float* dq_accum = static_cast<float*>(p.dq_accum);

  auto head_of = [&](int it) { return kv_head + (it / n_qtiles) * p.kv_heads; };
  auto q0_of = [&](int it) { return (qt_begin + it % n_qtiles) * kBlockM; };
  auto load_query_tile = [&](int it, int buf) {
    const int head = head_of(it), q0 = q0_of(it);
    const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
    const T* dout = static_cast<const T*>(p.dout) + batch * p.do_batch_stride + head * p.do_head_stride;
    load_tile_async<T, kBlockM, kD, kThreads>(sQ + buf * kBlockM * kStride, q, p.q_row_stride, q0, p.queries, tid);
    load_tile_async<T, kBlockM, kD, kThreads>(sdO + buf * kBlockM * kStride, dout, p.do_row_stride, q0, p.queries,
                                              tid);
    // lse and D through cp.async as well: a plain load would stall the loading warp for the global latency
    // before the barrier every iteration. Rows past n are zero-filled; their q and dO rows are zeros too, so
    // they add nothing to dK and dV.
    const int64_t stats = stats_offset<kVarlen>(p, batch, head) + q0;
    for (int r = tid; r < kBlockM; r += kThreads) {
      const bool valid = q0 + r < p.queries;
      cp_async_4(smem_addr(sLse + buf * kBlockM + r), lse + stats + r, valid);
      cp_async_4(smem_addr(sD + buf * kBlockM + r), dsum + stats + r, valid);
    }
  };

  load_tile_async<T, kBlockN, kD, kThreads>(sK, k, p.k_row_stride, key0, p.keys, tid);
  load_tile_async<T, kBlockN, kD, kThreads>(sV, v, p.v_row_stride, key0, p.keys, tid);
  if (n_iter > 0) load_query_tile(0, 0);
  cp_async_commit();

  float acc_dk[kD / 8][4], acc_dv[kD / 8][4];
#pragma unroll
  for (int i = 0; i < kD / 8; ++i) {
    acc_dk[i][0] = acc_dk[i][1] = acc_dk[i][2] = acc_dk[i][3] = 0.f;
    acc_dv[i][0] = acc_dv[i][1] = acc_dv[i][2] = acc_dv[i][3] = 0.f;
  }

  for (int it = 0; it < n_iter; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_iter) load_query_tile(it + 1, buf ^ 1);  // overlaps this tile's math
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int head = head_of(it), q0 = q0_of(it);
    const T* cQ = sQ + buf * kBlockM * kStride;
    const T* cdO = sdO + buf * kBlockM * kStride;
    const float* cLse = sLse + buf * kBlockM;
    const float* cD = sD + buf * kBlockM;
    const LogitTransform logit = make_logit_transform(p, head);

    // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x kBlockM queries.
    float s[kBlockM / 8][4], dp[kBlockM / 8][4];
#pragma unroll
    for (int i = 0; i < kBlockM / 8; ++i) {
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const int a_off = (kw0 + (lane % 8) + ((lane / 8) & 1) * 8) * kStride + kk * 16 + (lane / 16) * 8;
      uint32_t a_k[4], a_v[4];
      ldmatrix_x4(a_k, smem_addr(sK + a_off));
      ldmatrix_x4(a_v, smem_addr(sV + a_off));
#pragma unroll
      for (int np = 0; np < kBlockM / 16; ++np) {
        const int b_off = (np * 16 + (lane % 8) + (lane / 16) * 8) * kStride + kk * 16 + ((lane / 8) & 1) * 8;
        uint32_t b[4];
        ldmatrix_x4(b, smem_addr(cQ + b_off));
        mma_16816<T>(s[2 * np], a_k, b[0], b[1]);
        mma_16816<T>(s[2 * np + 1], a_k, b[2], b[3]);
        ldmatrix_x4(b, smem_addr(cdO + b_off));
        mma_16816<T>(dp[2 * np], a_v, b[0], b[1]);
        mma_16816<T>(dp[2 * np + 1], a_v, b[2], b[3]);
      }
    }

    // P = exp(logit - lse), dS = P (dP - D) times d softcap / d logit; s and dp now hold P^T and dS^T.
    const int q_last = min(q0 + kBlockM, p.queries) - 1;
    const bool whole_tile = all_kept && (!p.has_left || key0 >= q_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= q0 + p.key_offset + p.window_right);
    with_score_flags<true>(logit.has_alibi, logit.has_softcap, !whole_tile, [&](auto alibi, auto softcap, auto check) {
      bwd_probabilities_and_grads<kBlockM, decltype(alibi)::value, decltype(softcap)::value, decltype(check)::value>(
          s, dp, cLse, cD, logit, p, sKeep, q0, key0, kw0, g, t);
    });

    // dV += P^T dO, dK += dS^T Q (the scale is applied once, when dK is written).
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      const uint32_t a_p[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const uint32_t a_ds[4] = {pack2<T>(dp[2 * kk][0], dp[2 * kk][1]), pack2<T>(dp[2 * kk][2], dp[2 * kk][3]),
                                pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < kD / 16; ++dn) {
        const int b_off = (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * kStride + dn * 16 + (lane / 16) * 8;
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_addr(cdO + b_off));
        mma_16816<T>(acc_dv[2 * dn], a_p, b[0], b[1]);
        mma_16816<T>(acc_dv[2 * dn + 1], a_p, b[2], b[3]);
        ldmatrix_x4_trans(b, smem_addr(cQ + b_off));
        mma_16816<T>(acc_dk[2 * dn], a_ds, b[0], b[1]);
        mma_16816<T>(acc_dk[2 * dn + 1], a_ds, b[2], b[3]);
      }
    }

    // dS^T to shared memory, so that warps can regroup by query rows for dQ.
#pragma unroll
    for (int nt = 0; nt < kBlockM / 8; ++nt) {
      *reinterpret_cast<uint32_t*>(sdS + (kw0 + g) * kDsStride + nt * 8 + 2 * t) = pack2<T>(dp[nt][0], dp[nt][1]);
      *reinterpret_cast<uint32_t*>(sdS + (kw0 + g + 8) * kDsStride + nt * 8 + 2 * t) =
          pack2<T>(dp[nt][2], dp[nt][3]);
    }
    __syncthreads();

    // dQ[q0:q0+kBlockM] += dS K: each warp takes one (kDqTileM query rows, kDqTileN head dims) block, the largest
    // equal split, so that fewer warps re-read the same dS^T rows and K columns from shared memory.
    constexpr int kTileM = Cfg::kDqTileM, kTileN = Cfg::kDqTileN;
    {
      const int m0 = (warp / Cfg::kDqWarpsN) * kTileM, d0 = (warp % Cfg::kDqWarpsN) * kTileN;
      float acc[kTileM / 16][kTileN / 8][4];
#pragma unroll
      for (int mt = 0; mt < kTileM / 16; ++mt)
#pragma unroll
        for (int nt = 0; nt < kTileN / 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[kTileM / 16][4];
#pragma unroll
        for (int mt = 0; mt < kTileM / 16; ++mt)
          ldmatrix_x4_trans(a[mt], smem_addr(sdS + (kk * 16 + (lane % 8) + (lane / 16) * 8) * kDsStride + m0 +
                                             mt * 16 + ((lane / 8) & 1) * 8));
#pragma unroll
        for (int dn = 0; dn < kTileN / 16; ++dn) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, smem_addr(sK + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * kStride + d0 +
                                         dn * 16 + (lane / 16) * 8));
#pragma unroll
          for (int mt = 0; mt < kTileM / 16; ++mt) {
            mma_16816<T>(acc[mt][2 * dn], a[mt], b[0], b[1]);
            mma_16816<T>(acc[mt][2 * dn + 1], a[mt], b[2], b[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < kTileM / 16; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = q0 + m0 + mt * 16 + g + half * 8;
          if (row >= p.queries) continue;
          float* dq_row = dq_accum + ((static_cast<int64_t>(batch) * p.queries + row) * p.heads + head) * kD + d0;
#pragma unroll
          for (int nt = 0; nt < kTileN / 8; ++nt) {
            float* dst = dq_row + nt * 8 + 2 * t;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst), make_float2(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]));
#else
            atomicAdd(dst, acc[mt][nt][2 * half]);
            atomicAdd(dst + 1, acc[mt][nt][2 * half + 1]);
#endif
          }
        }
      }
    }
    __syncthreads();  // dS^T and this Q / dO buffer are free for the next iteration's writes
  }
  cp_async_wait<0>();  // no copy may outlive the CTA

  // dK, dV rows of this warp; keys that no query saw (padded, outside the band) get exact zeros.
  store_dk_dv<T, kD>(p, acc_dk, acc_dv, batch, kv_head, key0 + kw0, g, t);
}

template <typename T, int kHeadDim, int kBlockM, int kBlockN, bool kVarlen>
__global__ void __launch_bounds__(2 * kBlockN) flash_bwd_kernel(const FlashBwdParams params) {
  if constexpr (kVarlen) {
    FlashBwdParams p = params;
    narrow_to_sequence<T, float>(p, blockIdx.z);
    // The grid covers the longest sequence: tiles past this one's keys have nothing to do.
    if (static_cast<int>(blockIdx.x) * kBlockN >= p.keys) return;
    flash_bwd_tile<T, kHeadDim, kBlockM, kBlockN, true>(p, blockIdx.x, blockIdx.y, 0);
  } else {
    flash_bwd_tile<T, kHeadDim, kBlockM, kBlockN, false>(params, blockIdx.x, blockIdx.y, blockIdx.z);
  }
}

// One warp per 16 keys. d = 128 takes 128 keys (8 warps) per CTA and 64-query tiles, FlashAttention-2's shape:
// the wider query tile halves the CTA's K / V fragment reloads and dQ atomics per query, and the dQ product's
// 32 x 32 warp blocks read less shared memory than 16-wide ones (benchmarks/NOTES.md has the A/B). Its 64 S^T / dP^T
// registers beside the 128 of the dK / dV accumulators reach the 255 cap with about 100 bytes of spills (ptxas
// report in CI); the A/B measured it faster than the spill-free 32-query tile all the same. Smaller head dims keep
// 64 keys (4 warps) by 64 queries.
template <int kHeadDim>
struct BwdLaunch {
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = kHeadDim >= 128 ? 128 : 64;
};

// Query row i of (head, batch), one warp. kVarlen: p is narrowed to one packed sequence.
template <typename T, bool kVarlen>
__device__ __forceinline__ void flash_bwd_simple_row(const FlashBwdParams& p, int batch, int head, int i) {
  const int lane = threadIdx.x % 32;
  const int kv_head = head % p.kv_heads;

  const T lse = static_cast<const T*>(p.lse)[stats_offset<kVarlen>(p, batch, head) + i];
  if (lse == -INFINITY) return;  // the row saw no key: no gradient flows through it

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + i * p.q_row_stride + head * p.q_head_stride;
  const T* dout =
      static_cast<const T*>(p.dout) + batch * p.do_batch_stride + i * p.do_row_stride + head * p.do_head_stride;
  const T* out = static_cast<const T*>(p.out) + batch * p.o_batch_stride + i * p.o_row_stride + head * p.o_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;
  T* dk_accum = static_cast<T*>(p.dk_accum) + (static_cast<int64_t>(batch) * p.keys * p.kv_heads + kv_head) * p.head_dim;
  T* dv_accum =
      static_cast<T*>(p.dv_accum) + (static_cast<int64_t>(batch) * p.keys * p.kv_heads + kv_head) * p.value_head_dim;
  const T scale = static_cast<T>(p.scale), softcap = static_cast<T>(p.softcap);
  const T slope = p.alibi_slopes ? static_cast<T>(p.alibi_slopes[head]) : T(0);

  T q_reg[kSimplePerLane], do_reg[kSimplePerLane], dq[kSimplePerLane];
  T d_partial = 0;
#pragma unroll
  for (int c = 0; c < kSimplePerLane; ++c) {
    const int idx = lane + 32 * c;
    q_reg[c] = idx < p.head_dim ? q[idx] : T(0);
    do_reg[c] = idx < p.value_head_dim ? dout[idx] : T(0);
    if (idx < p.value_head_dim) d_partial += do_reg[c] * out[idx];
    dq[c] = T(0);
  }
  const T d_row = warp_sum(d_partial);

  const int diag = i + p.key_offset;
  const int j_begin = p.has_left ? max(0, diag - p.window_left) : 0;
  const int j_end = p.has_right ? min(p.keys, diag + p.window_right + 1) : p.keys;
  for (int j = j_begin; j < j_end; ++j) {
    if (keep != nullptr && !keep[j * p.mask_key_stride]) continue;
    const T* k_row = k + j * p.k_row_stride;
    const T* v_row = v + j * p.v_row_stride;
    T dot = 0, dprob = 0;
#pragma unroll
    for (int c = 0; c < kSimplePerLane; ++c) {
      const int idx = lane + 32 * c;
      if (idx < p.head_dim) dot += q_reg[c] * k_row[idx];
      if (idx < p.value_head_dim) dprob += do_reg[c] * v_row[idx];
    }
    T x = warp_sum(dot) * scale;
    dprob = warp_sum(dprob);
    if (p.alibi_slopes) x -= slope * static_cast<T>(abs(diag - j));
    T dcap = 1;
    if (p.softcap > 0) {
      const T th = tanh(x / softcap);
      x = softcap * th;
      dcap = 1 - th * th;
    }
    const T prob = exp(x - lse);
    const T ds = prob * (dprob - d_row) * dcap * scale;  // gradient wrt the raw dot product q.k
#pragma unroll
    for (int c = 0; c < kSimplePerLane; ++c) {
      const int idx = lane + 32 * c;
      if (idx < p.head_dim) {
        dq[c] += ds * k_row[idx];
        atomicAdd(dk_accum + static_cast<int64_t>(j) * p.kv_heads * p.head_dim + idx, ds * q_reg[c]);
      }
      if (idx < p.value_head_dim)
        atomicAdd(dv_accum + static_cast<int64_t>(j) * p.kv_heads * p.value_head_dim + idx, prob * do_reg[c]);
    }
  }
  // This warp alone owns the dq row, so a plain store suffices.
  T* dq_row = static_cast<T*>(p.dq_accum) + ((static_cast<int64_t>(batch) * p.queries + i) * p.heads + head) * p.head_dim;
#pragma unroll
  for (int c = 0; c < kSimplePerLane; ++c) {
    const int idx = lane + 32 * c;
    if (idx < p.head_dim) dq_row[idx] = dq[c];
  }
}

template <typename T, bool kVarlen>
__global__ void __launch_bounds__(32 * kSimpleWarps) flash_bwd_simple_kernel(const FlashBwdParams params) {
  for_warp_row<T, kVarlen>(params, [](const FlashBwdParams& p, int batch, int head, int i) {
    flash_bwd_simple_row<T, kVarlen>(p, batch, head, i);
  });
}

}  // namespace detail

namespace detail {
template <typename T, int kHeadDim, bool kVarlen>
cudaError_t launch_flash_bwd(const FlashBwdParams& params, cudaStream_t stream) {
  using Launch = BwdLaunch<kHeadDim>;
  using Cfg = BwdConfig<T, kHeadDim, Launch::kBlockM, Launch::kBlockN>;
  auto kernel = flash_bwd_kernel<T, kHeadDim, Launch::kBlockM, Launch::kBlockN, kVarlen>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid = kVarlen ? dim3(ceil_div(params.max_keys, Launch::kBlockN), params.kv_heads, params.sequences)
                            : dim3(ceil_div(params.keys, Launch::kBlockN), params.kv_heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

// The passes around the main kernel, shared with the Hopper backward (flash_bwd_sm90.cuh).
template <typename T, int kHeadDim>
cudaError_t launch_flash_bwd_prologue(const FlashBwdParams& params, cudaStream_t stream) {
  using Pro = BwdPrologue<kHeadDim>;
  const int64_t rows = static_cast<int64_t>(params.batch) * params.queries * params.heads;
  flash_bwd_prologue_kernel<T, kHeadDim>
      <<<static_cast<unsigned>((rows + Pro::kRowsPerBlock - 1) / Pro::kRowsPerBlock), Pro::kThreads, 0, stream>>>(
          params);
  return cudaGetLastError();
}

template <typename T, int kHeadDim>
cudaError_t launch_flash_bwd_epilogue(const FlashBwdParams& params, cudaStream_t stream) {
  const int64_t vectors = static_cast<int64_t>(params.batch) * params.queries * params.heads * kHeadDim / 8;
  flash_bwd_dq_epilogue_kernel<T><<<static_cast<unsigned>((vectors + kEpilogueThreads - 1) / kEpilogueThreads),
                                    kEpilogueThreads, 0, stream>>>(params, vectors);
  return cudaGetLastError();
}
}  // namespace detail

// Three launches: the prologue (D and zeroed dq_accum), the main kernel (dK, dV, dq_accum), the dQ epilogue.
// Packed, the prologue and the epilogue are row-wise over the frame as they are over a dense batch.
template <typename T, int kHeadDim, bool kVarlen>
cudaError_t run_flash_bwd(const FlashBwdParams& params, cudaStream_t stream) {
  cudaError_t err = detail::launch_flash_bwd_prologue<T, kHeadDim>(params, stream);
  if (err != cudaSuccess) return err;
  err = detail::launch_flash_bwd<T, kHeadDim, kVarlen>(params, stream);
  if (err != cudaSuccess) return err;
  return detail::launch_flash_bwd_epilogue<T, kHeadDim>(params, stream);
}

template <typename T, bool kVarlen>
cudaError_t run_flash_bwd_simple(const FlashBwdParams& params, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(params.batch) * params.heads * params.queries;
  const int64_t blocks = (rows + detail::kSimpleWarps - 1) / detail::kSimpleWarps;
  detail::flash_bwd_simple_kernel<T, kVarlen>
      <<<static_cast<unsigned>(blocks), 32 * detail::kSimpleWarps, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace xtc::cuda
