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

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(BwdSm90Config<kHeadDim>::kThreads, 1) flash_bwd_sm90_kernel(const FlashBwdParams p) {
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

  const int n_block = blockIdx.x, kv_head = blockIdx.y, batch = blockIdx.z;
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

  // Queries whose band reaches this key tile (as in flash_bwd_kernel).
  int q_begin = 0, q_end = p.queries;
  if (p.has_right) q_begin = max(0, key0 - p.key_offset - p.window_right);
  if (p.has_left) q_end = min(p.queries, key_last - p.key_offset + p.window_left + 1);
  const int qt_begin = q_begin / kBlockM;
  const int n_qtiles = q_end > q_begin ? ceil_div(q_end, kBlockM) - qt_begin : 0;
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
    const int64_t stats = (static_cast<int64_t>(batch) * p.heads + head) * p.queries + q0;
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

  float acc_dk[kD / 2], acc_dv[kD / 2];  // m64n{d}: n8 block dn holds [4 dn .. 4 dn + 3]
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) acc_dk[i] = acc_dv[i] = 0.f;

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

    // S^T = K Q^T and dP^T = V dO^T: this warpgroup's 64 keys x 64 queries; [4 nt + e] is key kw0 + g (+ 8 for
    // e >= 2), query q0 + 8 nt + 2t + e % 2.
    float s[kBlockM / 2], dp[kBlockM / 2];
#pragma unroll
    for (int i = 0; i < kBlockM / 2; ++i) s[i] = dp[i] = 0.f;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      Wgmma<T, kBlockM>::ss(s, kmajor_desc(sK, kBlockN, wg * 64, kk), kmajor_desc(sQ(stage), kBlockM, 0, kk),
                            kk > 0 ? 1 : 0);
      Wgmma<T, kBlockM>::ss(dp, kmajor_desc(sV, kBlockN, wg * 64, kk), kmajor_desc(sdO(stage), kBlockM, 0, kk),
                            kk > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(s);
    pin_registers(dp);

    // P = exp(logit - lse), dS = P (dP - D) times d softcap / d logit; s and dp then hold P^T and dS^T.
    const int q_last = min(q0 + kBlockM, p.queries) - 1;
    const bool whole_tile = all_kept && (!p.has_left || key0 >= q_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= q0 + p.key_offset + p.window_right);
    auto score_stage = [&](auto alibi, auto softcap, auto check) {
      constexpr bool kSoftcap = decltype(softcap)::value;
#pragma unroll
      for (int nt = 0; nt < kBlockM / 8; ++nt) {
        // lse and D of this thread's two query columns; lse to log2 units, +inf for rows that saw no key.
        const float2 lse_raw = *reinterpret_cast<const float2*>(cLse + nt * 8 + 2 * t);
        const float2 lse2 = make_float2(lse_raw.x == -INFINITY ? INFINITY : lse_raw.x * kLog2e,
                                        lse_raw.y == -INFINITY ? INFINITY : lse_raw.y * kLog2e);
        const float2 d2 = *reinterpret_cast<const float2*>(cD + nt * 8 + 2 * t);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key_local = kw0 + g + (e >= 2 ? 8 : 0);
          const int row = q0 + nt * 8 + 2 * t + (e & 1), key = key0 + key_local;
          float softcap_tanh;
          const float x =
              logit.template apply<decltype(alibi)::value, kSoftcap>(s[4 * nt + e], row, key, softcap_tanh);
          float prob = exp2_approx(x - ((e & 1) ? lse2.y : lse2.x));
          if constexpr (decltype(check)::value) {
            if (!(sKeep[key_local] && in_band(p, row, key))) prob = 0.f;
          }
          float ds = prob * (dp[4 * nt + e] - ((e & 1) ? d2.y : d2.x));
          if constexpr (kSoftcap) ds *= 1.f - softcap_tanh * softcap_tanh;
          s[4 * nt + e] = prob;
          dp[4 * nt + e] = ds;
        }
      }
    };
    with_score_flags<true>(logit.has_alibi, logit.has_softcap, !whole_tile, score_stage);

    // dV += P^T dO, dK += dS^T Q (the scale is applied once, when dK is written). The accumulators of n8 blocks
    // 2 kk and 2 kk + 1 are the A fragment of k16 step kk.
    uint32_t a_p[kBlockM / 16][4], a_ds[kBlockM / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a_p[kk][e] = pack2<T>(s[8 * kk + 2 * e], s[8 * kk + 2 * e + 1]);
        a_ds[kk][e] = pack2<T>(dp[8 * kk + 2 * e], dp[8 * kk + 2 * e + 1]);
      }
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      Wgmma<T, kD>::rs_b_mn_major(acc_dv, a_p[kk], mnmajor_desc(sdO(stage), kBlockM, kk * 16, 0));
      Wgmma<T, kD>::rs_b_mn_major(acc_dk, a_ds[kk], mnmajor_desc(sQ(stage), kBlockM, kk * 16, 0));
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
    pin_registers(acc_dv);
    pin_registers(acc_dk);
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
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + kw0 + g + 8 * r;
    if (key >= p.keys) continue;
    const int64_t offset = ((static_cast<int64_t>(batch) * p.keys + key) * p.kv_heads + kv_head) * kD;
    T* dk = static_cast<T*>(p.dk) + offset;
    T* dv = static_cast<T*>(p.dv) + offset;
#pragma unroll
    for (int dn = 0; dn < kD / 8; ++dn) {
      *reinterpret_cast<uint32_t*>(dk + dn * 8 + 2 * t) =
          pack2<T>(acc_dk[4 * dn + 2 * r] * scale, acc_dk[4 * dn + 2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + dn * 8 + 2 * t) = pack2<T>(acc_dv[4 * dn + 2 * r], acc_dv[4 * dn + 2 * r + 1]);
    }
  }
#else
  __trap();  // built without sm_90a code: the host launches this kernel only where that code exists
#endif
}
}  // namespace detail

// The prologue and epilogue of run_flash_bwd around the Hopper main kernel.
template <typename T, int kHeadDim>
cudaError_t run_flash_bwd_sm90(const FlashBwdParams& params, cudaStream_t stream) {
  using Cfg = detail::BwdSm90Config<kHeadDim>;
  cudaError_t err = detail::launch_flash_bwd_prologue<T, kHeadDim>(params, stream);
  if (err != cudaSuccess) return err;
  auto kernel = detail::flash_bwd_sm90_kernel<T, kHeadDim>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(detail::ceil_div(params.keys, Cfg::kBlockN), params.kv_heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return detail::launch_flash_bwd_epilogue<T, kHeadDim>(params, stream);
}

}  // namespace xtc::cuda
