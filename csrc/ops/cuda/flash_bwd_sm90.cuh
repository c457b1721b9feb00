// Hopper (sm_90a) backward kernel of xtc::flash_attention: the op of flash_bwd_kernel (flash_bwd.cuh), with its
// five products on warpgroup MMA (wgmma.mma_async), for d in {64, 128}. The D / dq_accum prologue and the dQ
// epilogue are flash_bwd.cuh's.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k/v.
//
// One CTA per (key tile of 128 keys, kv head, batch): two warpgroups, each owning 64 keys (each warp 16 of them)
// and their dK, dV accumulators. The CTA walks every query head of its GQA group and every 64-query tile the band
// can reach, with Q / dO tiles (and lse, D) double-buffered through cp.async. All tiles use the 128-byte swizzled
// layout of flash_fwd_sm90.cuh. Per query tile, each warpgroup computes
//   S^T = K Q^T and dP^T = V dO^T   wgmma m64n64k16, both operands K-major in shared memory;
//   P^T, dS^T                       in registers (keys as rows, as in flash_bwd_kernel);
//   dV += P^T dO, dK += dS^T Q      wgmma m64n{d}k16, P^T / dS^T from registers, dO / Q read MN-major;
// then dS^T goes to shared memory (swizzled) and dQ = dS K is one more product, read MN-major on both sides:
// for d = 128 each warpgroup takes 64 of the head dims over all 128 keys; for d = 64 each takes its own 64 keys
// over all head dims. The fp32 dQ block is added to dq_accum with atomics, as in flash_bwd_kernel.
#pragma once

#include "flash_bwd.cuh"
#include "flash_fwd_sm90.cuh"

namespace xtc::cuda {
namespace detail {

template <int kHeadDim>
struct BwdSm90Config {
  static constexpr int kBlockM = 64;   // queries per tile
  static constexpr int kBlockN = 128;  // keys per CTA: two warpgroups x 64
  static constexpr int kThreads = 256;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kDsBytes = kBlockN * kBlockM * 2;  // dS^T: 128 key rows of 64 queries (128 bytes)
  // dQ split between the warpgroups: by head dims (64 each) when d = 128, by keys (64 each) when d = 64.
  static constexpr bool kDqSplitKeys = kHeadDim == 64;
  // K, V, then (Q, dO) per stage, dS^T, then lse and D per stage, the keep flags; 1024 more to align the tiles.
  static constexpr int kSmemBytes =
      1024 + 2 * kKVBytes + 4 * kQBytes + kDsBytes + 2 * 2 * kBlockM * 4 + kBlockN;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "128-byte swizzled rows and an m64n{d} accumulator");
};

// One CTA's key tile of (kv head, batch). kVarlen: p is narrowed to one packed sequence (batch 0).
template <typename T, int kHeadDim, bool kVarlen>
__device__ __forceinline__ void flash_bwd_sm90_tile(const FlashBwdParams& p, int n_block, int kv_head, int batch) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = BwdSm90Config<kHeadDim>;
  constexpr int kD = kHeadDim, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t sK = (raw + 1023u) & ~1023u;
  const uint32_t sV = sK + Cfg::kKVBytes;
  auto sQ = [&](int stage) { return sV + Cfg::kKVBytes + stage * 2 * Cfg::kQBytes; };
  auto sdO = [&](int stage) { return sQ(stage) + Cfg::kQBytes; };
  const uint32_t sdS = sQ(2);
  unsigned char* const tail = smem_raw + (sdS - raw) + Cfg::kDsBytes;
  float* sLse = reinterpret_cast<float*>(tail);  // [2][kBlockM], as saved (natural log)
  float* sD = sLse + 2 * kBlockM;                 // [2][kBlockM]
  bool* sKeep = reinterpret_cast<bool*>(sD + 2 * kBlockM);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4;                // warpgroup: keys wg * 64 .. wg * 64 + 63 of the tile
  const int g = lane >> 2, t = lane & 3;  // accumulator coordinates: row group, thread in group
  const int key0 = n_block * kBlockN;
  const int key_last = min(key0 + kBlockN, p.keys) - 1;
  const int kw0 = wg * 64 + (warp % 4) * 16;  // this warp's first key row within the tile

  // The key tile is fixed for the CTA, so its padding flags are read once.
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;
  bool kept = true;
  if (tid < kBlockN) {
    const int j = key0 + tid;
    kept = j < p.keys && (keep == nullptr || keep[j * p.mask_key_stride]);
    sKeep[tid] = kept;
  }
  const int kept_count = __syncthreads_count(tid < kBlockN && kept);
  const bool any_kept = kept_count > 0, all_kept = kept_count == kBlockN;

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
  auto load_query_tile = [&](int it, int stage) {
    const int head = head_of(it), q0 = q0_of(it);
    const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
    const T* dout = static_cast<const T*>(p.dout) + batch * p.do_batch_stride + head * p.do_head_stride;
    load_tile_sw128<T, kBlockM, kD, kThreads>(sQ(stage), q, p.q_row_stride, q0, p.queries, tid);
    load_tile_sw128<T, kBlockM, kD, kThreads>(sdO(stage), dout, p.do_row_stride, q0, p.queries, tid);
    // Rows past n are zero-filled (lse and D too); their q and dO rows are zeros, so they add nothing to dK, dV.
    const int64_t stats = stats_offset<kVarlen>(p, batch, head) + q0;
    for (int r = tid; r < kBlockM; r += kThreads) {
      const bool valid = q0 + r < p.queries;
      cp_async_4(smem_addr(sLse + stage * kBlockM + r), lse + stats + r, valid);
      cp_async_4(smem_addr(sD + stage * kBlockM + r), dsum + stats + r, valid);
    }
  };

  load_tile_sw128<T, kBlockN, kD, kThreads>(sK, k, p.k_row_stride, key0, p.keys, tid);
  load_tile_sw128<T, kBlockN, kD, kThreads>(sV, v, p.v_row_stride, key0, p.keys, tid);
  if (n_iter > 0) load_query_tile(0, 0);
  cp_async_commit();

  float acc_dk[kD / 8][4], acc_dv[kD / 8][4];  // m64n{d} accumulators in the m16n8 layout of this warp's 16 keys
#pragma unroll
  for (int dn = 0; dn < kD / 8; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[dn][e] = acc_dv[dn][e] = 0.f;

  // Descriptors (see flash_fwd_sm90.cuh). K-major: k16 step kk is column block kk / 4, 32 bytes into the row.
  // MN-major: k16 step kk is 16 rows (2048 bytes) further; column blocks of 64 along N are rows * 128 bytes apart.
  auto kmajor_desc = [](uint32_t tile, int rows, int row0, int kk) {
    return sw128_desc(tile + (kk / 4) * rows * 128 + row0 * 128 + (kk % 4) * 32, 16, 1024);
  };
  auto mnmajor_desc = [](uint32_t tile, int rows, int row0, int col_block) {
    return sw128_desc(tile + col_block * rows * 128 + row0 * 128, rows * 128, 1024);
  };

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it & 1;
    cp_async_wait<0>();  // this query tile (and K, V on the first) landed
    fence_proxy_async_shared();
    __syncthreads();
    if (it + 1 < n_iter) load_query_tile(it + 1, stage ^ 1);  // overlaps this tile's products
    cp_async_commit();

    const int head = head_of(it), q0 = q0_of(it);
    const float* cLse = sLse + stage * kBlockM;
    const float* cD = sD + stage * kBlockM;
    const LogitTransform logit = make_logit_transform(p, head);

    // S^T = K Q^T and dP^T = V dO^T: this warpgroup's 64 keys x 64 queries; [nt][e] is key kw0 + g (+ 8 for
    // e >= 2), query q0 + 8 nt + 2t + e % 2.
    float s[kBlockM / 8][4], dp[kBlockM / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBlockM / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      Wgmma<T, kBlockM>::ss(flat(s), kmajor_desc(sK, kBlockN, wg * 64, kk), kmajor_desc(sQ(stage), kBlockM, 0, kk),
                            kk > 0 ? 1 : 0);
      Wgmma<T, kBlockM>::ss(flat(dp), kmajor_desc(sV, kBlockN, wg * 64, kk), kmajor_desc(sdO(stage), kBlockM, 0, kk),
                            kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(flat(s));
    pin_registers(flat(dp));

    // P = exp(logit - lse), dS = P (dP - D) times d softcap / d logit; s and dp then hold P^T and dS^T.
    const int q_last = min(q0 + kBlockM, p.queries) - 1;
    const bool whole_tile = all_kept && (!p.has_left || key0 >= q_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= q0 + p.key_offset + p.window_right);
    with_score_flags<true>(logit.has_alibi, logit.has_softcap, !whole_tile, [&](auto alibi, auto softcap, auto check) {
      bwd_probabilities_and_grads<kBlockM, decltype(alibi)::value, decltype(softcap)::value, decltype(check)::value>(
          s, dp, cLse, cD, logit, p, sKeep, q0, key0, kw0, g, t);
    });

    // dV += P^T dO, dK += dS^T Q (the scale is applied once, when dK is written). The accumulators of n8 blocks
    // 2 kk and 2 kk + 1 are the A fragment of k16 step kk.
    uint32_t a_p[kBlockM / 16][4], a_ds[kBlockM / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int nt = 2 * kk + e / 2, lo = 2 * (e % 2);
        a_p[kk][e] = pack2<T>(s[nt][lo], s[nt][lo + 1]);
        a_ds[kk][e] = pack2<T>(dp[nt][lo], dp[nt][lo + 1]);
      }
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      Wgmma<T, kD>::rs_b_mn_major(flat(acc_dv), a_p[kk], mnmajor_desc(sdO(stage), kBlockM, kk * 16, 0));
      Wgmma<T, kD>::rs_b_mn_major(flat(acc_dk), a_ds[kk], mnmajor_desc(sQ(stage), kBlockM, kk * 16, 0));
    }
    wgmma_commit();

    // dS^T to shared memory (swizzled, rows of 64 queries) while those products run, for dQ = dS K.
#pragma unroll
    for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = kw0 + g + 8 * half;
        const uint32_t addr = sdS + r * 128 + ((nt ^ (r % 8)) << 4) + 4 * t;
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(a_ds[nt / 2][(nt % 2) * 2 + half]));
      }
    }
    wgmma_wait<0>();
    pin_registers(flat(acc_dv));
    pin_registers(flat(acc_dk));
    pin_registers(a_p);
    pin_registers(a_ds);
    fence_proxy_async_shared();  // the dS^T stores are read next by wgmma
    __syncthreads();

    // dQ block of this warpgroup: 64 queries x 64 head dims (d = 128: head dims wg * 64 .., all keys; d = 64: all
    // head dims, keys wg * 64 ..). A = dS read from dS^T (MN-major), B = K read MN-major.
    float acc_dq[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc_dq[i] = 0.f;
    constexpr int kDqSteps = Cfg::kDqSplitKeys ? 4 : kBlockN / 16;
    const int dq_key0 = Cfg::kDqSplitKeys ? wg * 64 : 0;
    const int dq_col_block = Cfg::kDqSplitKeys ? 0 : wg;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kDqSteps; ++kk) {
      Wgmma<T, 64>::ss_mn_major(acc_dq, mnmajor_desc(sdS, kBlockN, dq_key0 + kk * 16, 0),
                                mnmajor_desc(sK, kBlockN, dq_key0 + kk * 16, dq_col_block), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(acc_dq);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = q0 + (warp % 4) * 16 + g + 8 * half;
      if (row >= p.queries) continue;
      float* dq_row = dq_accum + ((static_cast<int64_t>(batch) * p.queries + row) * p.heads + head) * kD +
                      dq_col_block * 64;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
        atomicAdd(reinterpret_cast<float2*>(dq_row + nt * 8 + 2 * t),
                  make_float2(acc_dq[4 * nt + 2 * half], acc_dq[4 * nt + 2 * half + 1]));
    }
    // No closing barrier: the next iteration writes this stage's Q / dO and dS^T only after its opening one,
    // which every thread reaches after its own products here have completed.
  }
  cp_async_wait<0>();  // no copy may outlive the CTA

  // dK, dV rows of this warp; keys that no query saw (padded, outside the band) get exact zeros.
  store_dk_dv<T, kD>(p, acc_dk, acc_dv, batch, kv_head, key0 + kw0, g, t);
#else
  __trap();  // built without sm_90a code: the host launches this kernel only where that code exists
#endif
}

template <typename T, int kHeadDim, bool kVarlen>
__global__ void __launch_bounds__(BwdSm90Config<kHeadDim>::kThreads, 1)
    flash_bwd_sm90_kernel(const FlashBwdParams params) {
  if constexpr (kVarlen) {
    FlashBwdParams p = params;
    narrow_to_sequence<T, float>(p, blockIdx.z);
    if (static_cast<int>(blockIdx.x) * BwdSm90Config<kHeadDim>::kBlockN >= p.keys) return;  // past its keys
    flash_bwd_sm90_tile<T, kHeadDim, true>(p, blockIdx.x, blockIdx.y, 0);
  } else {
    flash_bwd_sm90_tile<T, kHeadDim, false>(params, blockIdx.x, blockIdx.y, blockIdx.z);
  }
}
}  // namespace detail

// The prologue and epilogue of run_flash_bwd around the Hopper main kernel.
template <typename T, int kHeadDim, bool kVarlen>
cudaError_t run_flash_bwd_sm90(const FlashBwdParams& params, cudaStream_t stream) {
  using Cfg = detail::BwdSm90Config<kHeadDim>;
  cudaError_t err = detail::launch_flash_bwd_prologue<T, kHeadDim>(params, stream);
  if (err != cudaSuccess) return err;
  auto kernel = detail::flash_bwd_sm90_kernel<T, kHeadDim, kVarlen>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid = kVarlen ? dim3(detail::ceil_div(params.max_keys, Cfg::kBlockN), params.kv_heads, params.sequences)
                            : dim3(detail::ceil_div(params.keys, Cfg::kBlockN), params.kv_heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return detail::launch_flash_bwd_epilogue<T, kHeadDim>(params, stream);
}

}  // namespace xtc::cuda
