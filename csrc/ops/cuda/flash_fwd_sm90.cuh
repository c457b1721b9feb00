// Hopper (sm_90a) forward kernel of xtc::flash_attention: the op of flash_fwd_kernel (flash_fwd.cuh), with both
// products on warpgroup MMA (wgmma.mma_async) instead of mma.sync, for d in {64, 128}.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k/v.
//
// One CTA per (128 query rows, head, batch): two warpgroups of four warps, each warpgroup owning 64 query rows and
// each warp 16 of them. The warpgroups share the K / V tiles of 128 keys, double-buffered in shared memory and
// copied with cp.async, so that the next tile's copy runs under this tile's products. Every tile is stored in the
// 128-byte swizzled layout that wgmma reads (tile bases 1024-byte aligned): column block cb of 64 elements at
// + cb * rows * 128 bytes, row r at + r * 128, its 16-byte chunk c at + (c ^ (r % 8)) * 16.
//   S = Q K^T   wgmma m64n128k16, Q and K from shared memory (both K-major);
//   O += P V    wgmma m64n{d}k16, P from registers (a warp's S accumulator layout is the mma.m16n8k16 A layout,
//               as in the mma.sync kernel), V from shared memory read MN-major (transposed).
// Masking, ALiBi, softcap, the band, the skipping of padded or out-of-band tiles and the online softmax are the
// mma.sync kernel's, per warp on its 16 rows.
#pragma once

#include "flash_fwd.cuh"
#include "wgmma.h"

namespace xtc::cuda {
namespace detail {

// The wgmma bracket: fence before issuing (registers written by ordinary instructions become visible to the
// tensor cores), commit the issued group, wait until at most kPending groups are in flight.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Pins registers at this point of the program. wgmma reads its A registers and reads / writes its accumulators
// asynchronously, between issue and wait; the compiler knows none of that, so the accumulators pass through this
// empty asm right after the wait (no read of them moves above it) and the A registers too (they stay allocated,
// unchanged, until then).
template <int N>
__device__ __forceinline__ void pin_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N, int M>
__device__ __forceinline__ void pin_registers(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// An accumulator kept in the m16n8 layout [n8 block][4] seen as the flat register list a wgmma call takes (the
// same registers, element 4 nb + e).
template <int kBlocks>
__device__ __forceinline__ float (&flat(float (&a)[kBlocks][4]))[kBlocks * 4] {
  return reinterpret_cast<float(&)[kBlocks * 4]>(a);
}

// Shared memory written by cp.async (the generic proxy) is read next by wgmma (the async proxy): each writing
// thread fences after its copies land and before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// wgmma shared-memory matrix descriptor of a 128-byte swizzled operand (PTX ISA, "Matrix Descriptor Format"):
// start address, leading and stride byte offsets (16-byte units), layout type 1 = 128-byte swizzle, base offset 0
// (tile bases are 1024-byte aligned).
//   K-major (rows of 64 elements, K contiguous): stride = 1024 bytes between groups of 8 rows; leading unused.
//   MN-major (B read transposed): leading = bytes between column blocks of 64 along N, stride = 1024 bytes between
//   groups of 8 rows along K.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((addr >> 4) & 0x3FFF) | (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// Copies rows [row0, row0 + kRows) of a (rows_total, kCols) global matrix with 16-byte aligned rows into the
// swizzled tile at shared address `tile`; rows past rows_total are zero-filled. Each thread keeps one 16-byte chunk
// column and every kRowsPerPass-th row (a multiple of 8, so its swizzled column stays the same every pass).
template <typename T, int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_tile_sw128(uint32_t tile, const T* gmem, int64_t row_stride, int row0,
                                                int rows_total, int tid) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kCols % 64 == 0 && kThreads % kChunksPerRow == 0 && kRowsPerPass % 8 == 0 &&
                    kRows % kRowsPerPass == 0,
                "whole 128-byte rows, and a fixed swizzle per thread");
  const int row = tid / kChunksPerRow, chunk = tid % kChunksPerRow;
  const T* src = gmem + static_cast<int64_t>(row0 + row) * row_stride + chunk * 8;
  const int64_t src_step = static_cast<int64_t>(kRowsPerPass) * row_stride;
  const uint32_t dst = tile + (chunk / 8) * kRows * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) << 4);
#pragma unroll
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    // A row past the end copies 0 bytes (zero fill): its address is formed but never read.
    cp_async_16(dst + pass * kRowsPerPass * 128, src, row0 + row + pass * kRowsPerPass < rows_total);
    src += src_step;
  }
}

template <int kHeadDim>
struct FwdSm90Config {
  static constexpr int kBlockM = 128;  // two warpgroups x 64 query rows
  static constexpr int kBlockN = 128;
  static constexpr int kThreads = 256;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  // Q, then (K, V) per stage, then the keep flags per stage; 1024 more to align the tiles.
  static constexpr int kSmemBytes = 1024 + kQBytes + 4 * kKVBytes + 2 * kBlockN;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "128-byte swizzled rows and an m64n{d} accumulator");
};

// One CTA's query tile of (head, batch). kBias: as in flash_fwd_tile (ALiBi, softcap or a scale <= 0 possible; false
// keeps raw scores to the exponent). kVarlen: p is narrowed to one packed sequence (batch 0; flash_varlen.h).
template <typename T, int kHeadDim, bool kBias, bool kVarlen>
__device__ __forceinline__ void flash_fwd_sm90_tile(const FlashFwdParams& p, int m_block, int head, int batch) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = FwdSm90Config<kHeadDim>;
  constexpr int kD = kHeadDim, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kThreads = Cfg::kThreads;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = smem_addr(smem_raw);
  const uint32_t sQ = (raw + 1023u) & ~1023u;
  auto sK = [&](int stage) { return sQ + Cfg::kQBytes + stage * 2 * Cfg::kKVBytes; };
  auto sV = [&](int stage) { return sK(stage) + Cfg::kKVBytes; };
  bool* sKeep = reinterpret_cast<bool*>(smem_raw + (sQ - raw) + Cfg::kQBytes + 4 * Cfg::kKVBytes);  // [2][kBlockN]

  const int kv_head = head % p.kv_heads;  // x-transformers' (r kvh) head expansion
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4;                // warpgroup: CTA rows wg * 64 .. wg * 64 + 63
  const int g = lane >> 2, t = lane & 3;  // accumulator coordinates: row group, thread in group
  const int row0 = m_block * kBlockM;
  const int row_last = min(row0 + kBlockM, p.queries) - 1;

  const TileRange tiles = visible_key_tiles<kBlockN>(p, row0, row_last);
  const int tile_begin = tiles.begin, tile_end = tiles.end;

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;

  // Tile states as in flash_fwd_kernel (bit 0: some key kept, bit 1: every key kept). Without a mask they come
  // from arithmetic; with one, the flags of a tile go to sKeep[stage] and one counting barrier gives both bits.
  // `keep` is uniform over the CTA, so the barriers stay collective. read_keep is this thread's global read of a
  // flag, issued a tile ahead so that its latency hides behind a tile's products.
  auto read_keep = [&](int tile) -> bool {
    const int j = tile * kBlockN + tid;
    return keep != nullptr && tid < kBlockN && j < p.keys && keep[j * p.mask_key_stride];
  };
  auto scan_tile = [&](int tile, int stage, bool kept) -> int {
    const int j0 = tile * kBlockN;
    if (keep == nullptr) return (j0 < p.keys ? 1 : 0) | (j0 + kBlockN <= p.keys ? 2 : 0);
    if (tid < kBlockN) sKeep[stage * kBlockN + tid] = kept;
    const int count = __syncthreads_count(kept);
    return (count > 0 ? 1 : 0) | (count == kBlockN ? 2 : 0);
  };
  // First tile at or after `tile` with a kept key, `first_kept` being this thread's flag of `tile`, already read;
  // fully padded tiles are skipped without loading K / V.
  auto next_live_tile = [&](int tile, int& state, int stage, bool first_kept) {
    for (; tile < tile_end; ++tile) {
      state = scan_tile(tile, stage, first_kept);
      if (state & 1) break;
      if (tile + 1 < tile_end) first_kept = read_keep(tile + 1);
    }
    return tile;
  };
  auto load_kv = [&](int tile, int stage) {
    load_tile_sw128<T, kBlockN, kD, kThreads>(sK(stage), k, p.k_row_stride, tile * kBlockN, p.keys, tid);
    load_tile_sw128<T, kBlockN, kD, kThreads>(sV(stage), v, p.v_row_stride, tile * kBlockN, p.keys, tid);
  };

  load_tile_sw128<T, kBlockM, kD, kThreads>(sQ, q, p.q_row_stride, row0, p.queries, tid);
  int stage = 0, state = 0;
  int tile = next_live_tile(tile_begin, state, stage, tile_begin < tile_end && read_keep(tile_begin));
  if (tile < tile_end) load_kv(tile, stage);
  cp_async_commit();
  bool next_kept = tile + 1 < tile_end && read_keep(tile + 1);

  const LogitTransform logit = make_logit_transform(p, head);
  constexpr bool kRawScores = !kBias;
  const float score_factor = kRawScores ? logit.scale_log2 : 1.f;
  const int rows[2] = {row0 + wg * 64 + (warp % 4) * 16 + g, row0 + wg * 64 + (warp % 4) * 16 + g + 8};

  // Descriptors: k16 step kk of Q / K is column block kk / 4, 32 bytes into the 128-byte row; k16 step kk of V is
  // keys 16 kk .. 16 kk + 15, i.e. 16 rows of 128 bytes further.
  auto q_desc = [&](int kk) { return sw128_desc(sQ + (kk / 4) * kBlockM * 128 + wg * 64 * 128 + (kk % 4) * 32, 16, 1024); };
  auto k_desc = [&](int kk) { return sw128_desc(sK(stage) + (kk / 4) * kBlockN * 128 + (kk % 4) * 32, 16, 1024); };
  auto v_desc = [&](int kk) { return sw128_desc(sV(stage) + kk * 16 * 128, kBlockN * 128, 1024); };

  float acc_o[kD / 2];  // m64n{d} accumulator of this thread: n8 block dn holds acc_o[4 dn .. 4 dn + 3]
#pragma unroll
  for (int i = 0; i < kD / 2; ++i) acc_o[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  while (tile < tile_end) {
    cp_async_wait<0>();  // Q and this tile's K / V have landed
    // The fence compiles to MEMBAR.ALL.CTA and FENCE.VIEW.ASYNC.S (SASS): the next tile's copies are issued only
    // after it, so that the memory barrier never waits on copies still in flight.
    fence_proxy_async_shared();
    __syncthreads();
    // The next live tile's K / V go to the other stage while this one is computed; the barrier above freed it
    // (every thread had finished the previous tile, which used it).
    int next_state = 0;
    const int next = next_live_tile(tile + 1, next_state, stage ^ 1, next_kept);
    if (next < tile_end) load_kv(next, stage ^ 1);
    cp_async_commit();
    next_kept = next + 1 < tile_end && read_keep(next + 1);  // used by the next iteration's scan

    // S = Q K^T: this warpgroup's 64 rows x 128 keys; s[4 nt + e] is row rows[e / 2], key nt * 8 + 2t + e % 2.
    float s[kBlockN / 2];
#pragma unroll
    for (int i = 0; i < kBlockN / 2; ++i) s[i] = 0.f;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) Wgmma<T, kBlockN>::ss(s, q_desc(kk), k_desc(kk), kk > 0 ? 1 : 0);
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(s);

    const int key0 = tile * kBlockN;
    const bool whole_tile = (state & 2) && (!p.has_left || key0 >= row_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= row0 + p.key_offset + p.window_right);
    const bool* tile_keep = sKeep + stage * kBlockN;
    auto score_stage = [&](auto alibi, auto softcap, auto check) {
#pragma unroll
      for (int i = 0; i < kBlockN / 2; ++i) {
        const int col_local = (i / 4) * 8 + 2 * t + (i & 1);
        const int row = rows[(i / 2) & 1];
        float unused_tanh;
        float x = kRawScores ? s[i]
                             : logit.template apply<decltype(alibi)::value, decltype(softcap)::value>(
                                   s[i], row, key0 + col_local, unused_tanh);
        if constexpr (decltype(check)::value) {
          const bool kept = keep == nullptr ? key0 + col_local < p.keys : tile_keep[col_local];
          if (!(kept && in_band(p, row, key0 + col_local))) x = -INFINITY;
        }
        s[i] = x;
      }
    };
    with_score_flags<kBias>(logit.has_alibi, logit.has_softcap, !whole_tile, score_stage);

    // Online softmax, as in flash_fwd_kernel: a row with no visible key yet keeps max -inf and reference 0; the
    // rescaling of O is skipped warp-wide when no row max of the warp moved.
    float row_max_new[2];
    bool unchanged = true;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * r], s[4 * nt + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      row_max_new[r] = mx;
      unchanged = unchanged && mx == row_max[r];
    }
    const bool rescale = !__all_sync(0xffffffffu, unchanged);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mx = row_max_new[r];
      const float ref_f = (mx == -INFINITY ? 0.f : mx) * score_factor;
      if (rescale) {
        const float correction = exp2_approx(row_max[r] * score_factor - ref_f);
        row_sum[r] *= correction;
#pragma unroll
        for (int dn = 0; dn < kD / 8; ++dn) {
          acc_o[4 * dn + 2 * r] *= correction;
          acc_o[4 * dn + 2 * r + 1] *= correction;
        }
      }
      row_max[r] = mx;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        s[4 * nt + 2 * r] = exp2_approx(fmaf(s[4 * nt + 2 * r], score_factor, -ref_f));
        s[4 * nt + 2 * r + 1] = exp2_approx(fmaf(s[4 * nt + 2 * r + 1], score_factor, -ref_f));
        row_sum[r] += s[4 * nt + 2 * r] + s[4 * nt + 2 * r + 1];
      }
    }

    // O += P V: the S accumulators of n8 blocks 2 kk and 2 kk + 1 are the A fragment of k16 step kk.
    uint32_t pa[kBlockN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) Wgmma<T, kD>::rs_b_mn_major(acc_o, pa[kk], v_desc(kk));
    wgmma_commit();
    wgmma_wait<0>();
    pin_registers(acc_o);
    pin_registers(pa);
    // No closing barrier: the next iteration refills this stage (and its keep flags) only after its opening one,
    // which every thread reaches after its own products here have completed.
    tile = next;
    state = next_state;
    stage ^= 1;
  }
  cp_async_wait<0>();  // no copy may outlive the CTA (the Q copy is pending when no tile was live)

  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + stats_offset<kVarlen>(p, batch, head);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    // A row with no visible key has sum 0: out = 0 and lse = -inf, as the op promises; a NaN sum (a NaN
    // logit) reaches out and lse, as in flash_fwd.cuh.
    const float inv = sum != 0.f ? 1.f / sum : 0.f;
    const int row = rows[r];
    if (row < p.queries) {
      T* out_row = out + row * p.o_row_stride;
#pragma unroll
      for (int dn = 0; dn < kD / 8; ++dn)
        *reinterpret_cast<uint32_t*>(out_row + dn * 8 + 2 * t) =
            pack2<T>(acc_o[4 * dn + 2 * r] * inv, acc_o[4 * dn + 2 * r + 1] * inv);
      if (t == 0) lse[row] = sum != 0.f ? (row_max[r] * score_factor + __log2f(sum)) * kLn2 : -INFINITY;
    }
  }
#else
  __trap();  // built without sm_90a code: the host launches this kernel only where that code exists
#endif
}

template <typename T, int kHeadDim, bool kBias, bool kVarlen>
__global__ void __launch_bounds__(FwdSm90Config<kHeadDim>::kThreads, 1)
    flash_fwd_sm90_kernel(const FlashFwdParams params) {
  if constexpr (kVarlen) {
    FlashFwdParams p = params;
    narrow_to_sequence<T, float>(p, blockIdx.z);
    if (static_cast<int>(blockIdx.x) * FwdSm90Config<kHeadDim>::kBlockM >= p.queries) return;  // past its queries
    flash_fwd_sm90_tile<T, kHeadDim, kBias, true>(p, blockIdx.x, blockIdx.y, 0);
  } else {
    flash_fwd_sm90_tile<T, kHeadDim, kBias, false>(params, blockIdx.x, blockIdx.y, blockIdx.z);
  }
}

template <typename T, int kHeadDim, bool kBias, bool kVarlen>
cudaError_t launch_flash_fwd_sm90(const FlashFwdParams& params, cudaStream_t stream) {
  using Cfg = FwdSm90Config<kHeadDim>;
  auto kernel = flash_fwd_sm90_kernel<T, kHeadDim, kBias, kVarlen>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid = kVarlen ? dim3(ceil_div(params.max_queries, Cfg::kBlockM), params.heads, params.sequences)
                            : dim3(ceil_div(params.queries, Cfg::kBlockM), params.heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}
}  // namespace detail

template <typename T, int kHeadDim, bool kVarlen>
cudaError_t run_flash_fwd_sm90(const FlashFwdParams& params, cudaStream_t stream) {
  // kBias == false keeps raw scores until the exponent, which needs a positive scale to keep the row maxima.
  if (params.alibi_slopes != nullptr || params.softcap > 0 || !(params.scale > 0))
    return detail::launch_flash_fwd_sm90<T, kHeadDim, true, kVarlen>(params, stream);
  return detail::launch_flash_fwd_sm90<T, kHeadDim, false, kVarlen>(params, stream);
}

}  // namespace xtc::cuda
