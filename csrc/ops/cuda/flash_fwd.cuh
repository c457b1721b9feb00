// Forward kernels of xtc::flash_attention on CUDA, plus the device helpers the backward shares.
//
// Shape legend: b batch, h query heads, hk kv heads, n queries, m keys, d head dim of q/k, dv head dim of v.
//
// Tensor-core kernel (FlashAttention-2 style): one CTA per (query tile of kBlockM rows, head, batch); each warp
// owns kWarpM = 16 or 32 query rows (32 for d >= 64, so each K / V fragment feeds two m16 tiles). The Q tile is
// staged in shared memory once and read as mma A fragments (kept in registers when a warp has 16 rows); the
// CTA walks the K/V tiles (kBlockN keys) that the causal/window band can reach, skips tiles whose keys are all
// padded, and keeps the running row max / row sum of the online softmax in fp32. Products use
// mma.sync.m16n8k16 (bf16 or fp16 in, fp32 accumulate), fed by ldmatrix from padded shared memory: a 16-byte
// pad per row makes the 8 row addresses of each ldmatrix hit 8 distinct bank groups for every head dim.
// Causal, window, ALiBi, softcap and the mask are runtime flags (uniform branches), so only dtype x head dim
// multiply the instantiations; the per-element visibility test runs only on tiles that straddle a boundary.
//
// The simple kernel (float / double) gives one warp per query row and no tensor cores: it exists so that fp32
// and fp64 inputs are computed exactly, never routed through a low-precision path.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "flash_launch.h"
#include "flash_varlen.h"

namespace xtc::cuda {
namespace detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte asynchronous copy global -> shared; with valid == false the destination is zero-filled and the source
// is not read, which is how row tails past n or m become zeros (so 0 * garbage never makes a NaN).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// 4-byte asynchronous copy (one float); with valid == false the destination is zero-filled, nothing is read.
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c (16x8 fp32) += a (16x16, row) * b (16x8, col).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one 32-bit register of T pairs; the first value lands in the low half (lower column index),
// matching the mma fragment layouts.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Explicit conversions: torch extension builds define __CUDA_NO_HALF_CONVERSIONS__ and friends.
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// 2^x with the hardware approximation (relative error ~2^-22, far below bf16/fp16 rounding); 2^-inf = +0.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Copies rows [row0, row0 + kRows) of a (rows_total, kCols) row-major global matrix into shared memory with row
// stride kCols + 8 elements; rows past rows_total are zero-filled. Needs 16-byte aligned rows (host ensures).
// Each thread owns one 16-byte column chunk and every kRowsPerPass-th row from its first, so the addresses of its
// copies differ by constants: one 64-bit product per call, then an add and a compare per copy (the generic
// per-chunk index arithmetic cost ~25 instructions a copy, a third of the forward's issue slots).
template <typename T, int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int row0, int rows_total,
                                                int tid) {
  constexpr int kChunksPerRow = kCols / 8;  // 16-byte chunks of 8 two-byte elements
  constexpr int kStride = kCols + 8;
  static_assert(kThreads % kChunksPerRow == 0, "every thread keeps one column chunk");
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  const int row = tid / kChunksPerRow, col = (tid % kChunksPerRow) * 8;
  if constexpr (kRows % kRowsPerPass == 0) {
    const T* src = gmem + static_cast<int64_t>(row0 + row) * row_stride + col;
    const int64_t src_step = static_cast<int64_t>(kRowsPerPass) * row_stride;
    const uint32_t dst = smem_addr(smem + row * kStride + col);
#pragma unroll
    for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
      // A row past the end copies 0 bytes (zero fill): its address is formed but never read.
      const bool valid = row0 + row + pass * kRowsPerPass < rows_total;
      cp_async_16(dst + pass * kRowsPerPass * kStride * static_cast<int>(sizeof(T)), src, valid);
      src += src_step;
    }
  } else {
#pragma unroll
    for (int r = row; r < kRows; r += kRowsPerPass) {
      const bool valid = row0 + r < rows_total;
      const T* src = valid ? gmem + static_cast<int64_t>(row0 + r) * row_stride + col : gmem;
      cp_async_16(smem_addr(smem + r * kStride + col), src, valid);
    }
  }
}

// Logit of query `row` and key `col` in log2 units, from the raw dot product; softcap_tanh receives
// tanh(x / softcap) for the backward's chain rule (0 when softcap is off). The ALiBi / softcap choice is a
// template argument: see with_score_flags for why it must not be a per-score runtime test.
struct LogitTransform {
  float scale, scale_log2, softcap, inv_softcap, slope;  // slope = 0 when ALiBi is off; scale_log2 = scale*log2(e)
  int key_offset;
  bool has_alibi, has_softcap;

  template <bool kAlibi, bool kSoftcap>
  __device__ __forceinline__ float apply(float dot, int row, int col, float& softcap_tanh) const {
    softcap_tanh = 0.f;
    if constexpr (!kAlibi && !kSoftcap) {
      return dot * scale_log2;  // plain scaled dot product: one multiply
    } else {
      float x = dot * scale;
      if constexpr (kAlibi) x -= slope * fabsf(static_cast<float>(row + key_offset - col));
      if constexpr (kSoftcap) {
        softcap_tanh = tanhf(x * inv_softcap);
        x = softcap * softcap_tanh;
      }
      return x * kLog2e;
    }
  }
};

// Calls f(alibi, softcap, check) with three std::bool_constant values, so that the per-score stage of a tile is
// straight-line code specialised for the runtime flags. Tested per score, the flags stayed in the unrolled loop
// as branches (ptxas did not unswitch them): about 20 instructions per score, several times the issue slots of
// the tile's mma.sync, which capped the kernels near 120 TFLOP/s on an H100. With kBias false the ALiBi and
// softcap variants are not instantiated at all (two variants instead of eight), which keeps their registers out
// of the forward kernel's allocation when the call uses neither.
template <bool kBias, typename F>
__device__ __forceinline__ void with_score_flags(bool alibi, bool softcap, bool check, F&& f) {
  auto by_check = [&](auto a, auto s) {
    if (check) f(a, s, std::true_type{});
    else f(a, s, std::false_type{});
  };
  if constexpr (!kBias) {
    by_check(std::false_type{}, std::false_type{});
  } else {
    auto by_softcap = [&](auto a) {
      if (softcap) by_check(a, std::true_type{});
      else by_check(a, std::false_type{});
    };
    if (alibi) by_softcap(std::true_type{});
    else by_softcap(std::false_type{});
  }
}

__device__ __forceinline__ LogitTransform make_logit_transform(const FlashFwdParams& p, int head) {
  LogitTransform t;
  t.scale = static_cast<float>(p.scale);
  t.scale_log2 = static_cast<float>(p.scale * static_cast<double>(kLog2e));
  t.has_softcap = p.softcap > 0;
  t.softcap = static_cast<float>(p.softcap);
  t.inv_softcap = t.has_softcap ? static_cast<float>(1.0 / p.softcap) : 0.f;
  t.has_alibi = p.alibi_slopes != nullptr;
  t.slope = t.has_alibi ? static_cast<float>(p.alibi_slopes[head]) : 0.f;
  t.key_offset = p.key_offset;
  return t;
}

// Band test of the causal / window flags (key padding is tested separately).
__device__ __forceinline__ bool in_band(const FlashFwdParams& p, int row, int col) {
  const int diag = row + p.key_offset;
  return (!p.has_left || col >= diag - p.window_left) && (!p.has_right || col <= diag + p.window_right);
}

// The key tiles [begin, end) of kBlockN keys that some query row in [row0, row_last] can see under the band;
// tiles outside are never loaded.
struct TileRange {
  int begin, end;
};
template <int kBlockN>
__device__ __forceinline__ TileRange visible_key_tiles(const FlashFwdParams& p, int row0, int row_last) {
  int key_begin = 0, key_end = p.keys;
  if (p.has_left) key_begin = max(0, row0 + p.key_offset - p.window_left);
  if (p.has_right) key_end = min(p.keys, row_last + p.key_offset + p.window_right + 1);
  const int begin = key_begin / kBlockN;
  return {begin, key_end > key_begin ? ceil_div(key_end, kBlockN) : begin};
}

// The query tiles [begin, end) of kBlockM queries whose band reaches some key in [key0, key_last]:
// j <= i + off + right  <=>  i >= j - off - right, and j >= i + off - left  <=>  i <= j - off + left.
template <int kBlockM>
__device__ __forceinline__ TileRange reaching_query_tiles(const FlashFwdParams& p, int key0, int key_last) {
  int q_begin = 0, q_end = p.queries;
  if (p.has_right) q_begin = max(0, key0 - p.key_offset - p.window_right);
  if (p.has_left) q_end = min(p.queries, key_last - p.key_offset + p.window_left + 1);
  const int begin = q_begin / kBlockM;
  return {begin, q_end > q_begin ? ceil_div(q_end, kBlockM) : begin};
}

// kWarpM query rows per warp (16 or 32): with 32, every K / V fragment read from shared memory feeds two m16
// tiles, which halves the ldmatrix traffic per mma (the limit of the 16-row layout on H100).
template <typename T, int kHeadDim, int kNWarps, int kBlockN, int kWarpM>
struct FwdConfig {
  static constexpr int kMi = kWarpM / 16;  // m16 tiles per warp
  static constexpr int kBlockM = kWarpM * kNWarps;
  static constexpr int kThreads = 32 * kNWarps;
  static constexpr int kStride = kHeadDim + 8;  // padded smem row (elements)
  static constexpr int kSmemBytes =
      (kBlockM + 2 * kBlockN) * kStride * static_cast<int>(sizeof(T)) + kBlockN;  // + keep flags
  static_assert(kWarpM == 16 || kWarpM == 32, "a warp owns one or two m16 tiles");
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "tiles are multiples of the mma shape");
  static_assert(kThreads >= kBlockN, "one thread per key scans the padding mask of a tile");
};

// One CTA's query tile of (head, batch). kBias: the call may use ALiBi or a softcap, or has a scale <= 0 (false
// only when none of these holds). kVarlen: p is narrowed to one packed sequence (batch 0; see flash_varlen.h).
template <typename T, int kHeadDim, int kNWarps, int kBlockN, int kWarpM, bool kBias, bool kVarlen>
__device__ __forceinline__ void flash_fwd_tile(const FlashFwdParams& p, int m_block, int head, int batch) {
  using Cfg = FwdConfig<T, kHeadDim, kNWarps, kBlockN, kWarpM>;
  constexpr int kBlockM = Cfg::kBlockM, kThreads = Cfg::kThreads, kStride = Cfg::kStride, kMi = Cfg::kMi;
  constexpr int kD = kHeadDim;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * kStride;
  T* sV = sK + kBlockN * kStride;
  bool* sKeep = reinterpret_cast<bool*>(sV + kBlockN * kStride);

  const int kv_head = head % p.kv_heads;  // x-transformers' (r kvh) head expansion
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;  // mma fragment coordinates: row group, thread in group
  const int row0 = m_block * kBlockM;
  const int row_last = min(row0 + kBlockM, p.queries) - 1;

  const TileRange tiles = visible_key_tiles<kBlockN>(p, row0, row_last);
  const int tile_begin = tiles.begin, tile_end = tiles.end;

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;

  // Without a mask the kept keys of a tile are exactly those below m: the state comes from arithmetic, with no
  // barrier and no sKeep write. With a mask, scan_tile writes the keep flag of each key of `tile` to sKeep (keys
  // past m count as dropped). Either way it returns bit 0: some key is kept, bit 1: every key is kept.
  // `keep` is uniform over the CTA, so every thread takes the same branch and the barriers stay collective.
  // read_keep is the global read of this thread's flag, split off so the loop can issue it a tile ahead.
  auto read_keep = [&](int tile) -> bool {
    const int j = tile * kBlockN + tid;
    return tid < kBlockN && j < p.keys && keep[j * p.mask_key_stride];
  };
  auto scan_tile = [&](int tile, bool kept) -> int {
    if (keep == nullptr) {
      const int j0 = tile * kBlockN;
      return (j0 < p.keys ? 1 : 0) | (j0 + kBlockN <= p.keys ? 2 : 0);
    }
    if (tid < kBlockN) sKeep[tid] = kept;
    const int count = __syncthreads_count(tid < kBlockN && kept);  // one barrier gives both bits
    return (count > 0 ? 1 : 0) | (count == kBlockN ? 2 : 0);
  };
  // Keep flag of key `key0 + col_local` of the current tile (read only on tiles that are not whole).
  auto key_kept = [&](int key0, int col_local) -> bool {
    return keep == nullptr ? key0 + col_local < p.keys : sKeep[col_local];
  };
  // First tile at or after `tile` with a kept key; fully padded tiles are skipped without loading K/V.
  // `first_kept` is this thread's flag of `tile`, already read.
  auto next_live_tile = [&](int tile, int& state, bool first_kept) {
    for (; tile < tile_end; ++tile) {
      state = scan_tile(tile, first_kept);
      if (state & 1) break;
      if (keep != nullptr && tile + 1 < tile_end) first_kept = read_keep(tile + 1);
    }
    return tile;
  };

  load_tile_async<T, kBlockM, kD, kThreads>(sQ, q, p.q_row_stride, row0, p.queries, tid);
  int state = 0;
  int tile = next_live_tile(tile_begin, state, keep != nullptr && tile_begin < tile_end && read_keep(tile_begin));
  if (tile < tile_end) load_tile_async<T, kBlockN, kD, kThreads>(sK, k, p.k_row_stride, tile * kBlockN, p.keys, tid);
  cp_async_commit();

  const LogitTransform logit = make_logit_transform(p, head);
  // Without ALiBi and softcap (and with a positive scale, which the host guarantees for kBias == false) the
  // scores stay raw q.k until the exponent, where score_factor = scale * log2(e) is applied; else they are
  // transformed to log2 units first and score_factor is 1.
  constexpr bool kRawScores = !kBias;
  const float score_factor = kRawScores ? logit.scale_log2 : 1.f;
  const int warp_row0 = warp * kWarpM;  // this warp's first row within the CTA tile
  // This thread's query rows: m16 tile mi, half r (row groups g and g + 8).
  int rows[kMi][2];
#pragma unroll
  for (int mi = 0; mi < kMi; ++mi) {
    rows[mi][0] = row0 + warp_row0 + mi * 16 + g;
    rows[mi][1] = rows[mi][0] + 8;
  }

  float acc_o[kMi][kD / 8][4];
#pragma unroll
  for (int mi = 0; mi < kMi; ++mi)
#pragma unroll
    for (int i = 0; i < kD / 8; ++i) acc_o[mi][i][0] = acc_o[mi][i][1] = acc_o[mi][i][2] = acc_o[mi][i][3] = 0.f;
  float row_max[kMi][2], row_sum[kMi][2];  // max in log2 units; sum partial over this thread's columns
#pragma unroll
  for (int mi = 0; mi < kMi; ++mi) {
    row_max[mi][0] = row_max[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.f;
  }
  // Q A-fragments: kept in registers across tiles when one m16 tile per warp; with two, they are re-read from
  // sQ (never overwritten) each tile, as FlashAttention-2 does, to leave registers for the larger accumulators.
  constexpr bool kQInRegs = kMi == 1;
  uint32_t q_frag[kQInRegs ? kD / 16 : 1][4];
  bool q_in_registers = false;
  auto q_frag_addr = [&](int mi, int kk) {
    return smem_addr(sQ + (warp_row0 + mi * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * kStride + kk * 16 +
                     (lane / 16) * 8);
  };

  while (tile < tile_end) {
    load_tile_async<T, kBlockN, kD, kThreads>(sV, v, p.v_row_stride, tile * kBlockN, p.keys, tid);
    // The next tile's mask flag, read now so its latency hides behind this tile's products.
    const bool next_kept = keep != nullptr && tile + 1 < tile_end && read_keep(tile + 1);
    cp_async_commit();
    cp_async_wait<1>();  // Q and this K tile have landed; V may still be in flight
    __syncthreads();
    if constexpr (kQInRegs) {
      if (!q_in_registers) {
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) ldmatrix_x4(q_frag[kk], q_frag_addr(0, kk));
        q_in_registers = true;
      }
    }

    // S = Q K^T for this warp's kWarpM rows x kBlockN keys.
    float s[kMi][kBlockN / 8][4];
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi)
#pragma unroll
      for (int i = 0; i < kBlockN / 8; ++i) s[mi][i][0] = s[mi][i][1] = s[mi][i][2] = s[mi][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      uint32_t qa[kMi][4];
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mi][e] = q_frag[kk][e];
        } else {
          ldmatrix_x4(qa[mi], q_frag_addr(mi, kk));
        }
      }
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, smem_addr(sK + (np * 16 + (lane % 8) + (lane / 16) * 8) * kStride + kk * 16 + ((lane / 8) & 1) * 8));
#pragma unroll
        for (int mi = 0; mi < kMi; ++mi) {
          mma_16816<T>(s[mi][2 * np], qa[mi], b[0], b[1]);
          mma_16816<T>(s[mi][2 * np + 1], qa[mi], b[2], b[3]);
        }
      }
    }

    const int key0 = tile * kBlockN;
    // The per-element test is needed only when some key is dropped or the band cuts through the tile.
    const bool whole_tile = (state & 2) && (!p.has_left || key0 >= row_last + p.key_offset - p.window_left) &&
                            (!p.has_right || key0 + kBlockN - 1 <= row0 + p.key_offset + p.window_right);
    auto score_stage = [&](auto alibi, auto softcap, auto check) {
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col_local = nt * 8 + 2 * t + (e & 1);
            const int row = rows[mi][e >> 1];
            float unused_tanh;
            float x = kRawScores ? s[mi][nt][e]
                                 : logit.template apply<decltype(alibi)::value, decltype(softcap)::value>(
                                       s[mi][nt][e], row, key0 + col_local, unused_tanh);
            if constexpr (decltype(check)::value) {
              if (!(key_kept(key0, col_local) && in_band(p, row, key0 + col_local))) x = -INFINITY;
            }
            s[mi][nt][e] = x;
          }
        }
      }
    };
    with_score_flags<kBias>(logit.has_alibi, logit.has_softcap, !whole_tile, score_stage);

    // Online softmax; a row that has seen no visible key yet keeps max -inf and uses 0 as its reference, so
    // exp2(-inf - 0) = 0 everywhere and no inf - inf NaN appears. With raw scores (kRawScores) the max is taken
    // on q.k and the scale enters the exponent as one FFMA, exp2(s * f - max * f), as FlashAttention-2 does.
    float row_max_new[kMi][2];
    bool unchanged = true;
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mi][r];
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * r], s[mi][nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        row_max_new[mi][r] = mx;
        unchanged = unchanged && mx == row_max[mi][r];
      }
    }
    // Once the running maxima settle, most tiles change none of a warp's rows: their correction is exactly 1
    // (or the row has no visible key yet and nothing to rescale), so the rescaling of O is skipped warp-wide.
    const bool rescale = !__all_sync(0xffffffffu, unchanged);
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float mx = row_max_new[mi][r];
        const float ref_f = (mx == -INFINITY ? 0.f : mx) * score_factor;
        if (rescale) {
          const float correction = exp2_approx(row_max[mi][r] * score_factor - ref_f);
          row_sum[mi][r] *= correction;
#pragma unroll
          for (int dn = 0; dn < kD / 8; ++dn) {
            acc_o[mi][dn][2 * r] *= correction;
            acc_o[mi][dn][2 * r + 1] *= correction;
          }
        }
        row_max[mi][r] = mx;
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
          s[mi][nt][2 * r] = exp2_approx(fmaf(s[mi][nt][2 * r], score_factor, -ref_f));
          s[mi][nt][2 * r + 1] = exp2_approx(fmaf(s[mi][nt][2 * r + 1], score_factor, -ref_f));
          row_sum[mi][r] += s[mi][nt][2 * r] + s[mi][nt][2 * r + 1];
        }
      }
    }

    cp_async_wait<0>();  // V landed
    __syncthreads();     // ... and every warp is done with sK and sKeep: the next K tile may overwrite them
    const int next = next_live_tile(tile + 1, state, next_kept);
    if (next < tile_end) load_tile_async<T, kBlockN, kD, kThreads>(sK, k, p.k_row_stride, next * kBlockN, p.keys, tid);
    cp_async_commit();

    // O += P V: the S accumulator fragments of two adjacent n8 tiles are exactly the A fragment of one k16 step;
    // each V fragment feeds every m16 tile of the warp.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMi][4];
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        a[mi][1] = pack2<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        a[mi][2] = pack2<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(
            b, smem_addr(sV + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * kStride + dp * 16 + (lane / 16) * 8));
#pragma unroll
        for (int mi = 0; mi < kMi; ++mi) {
          mma_16816<T>(acc_o[mi][2 * dp], a[mi], b[0], b[1]);
          mma_16816<T>(acc_o[mi][2 * dp + 1], a[mi], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with sV before the next V tile lands there
    tile = next;
  }
  cp_async_wait<0>();  // no copy may outlive the CTA (the Q copy is pending when no tile was live)

  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = static_cast<float*>(p.lse) + stats_offset<kVarlen>(p, batch, head);
#pragma unroll
  for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[mi][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      // A row with no visible key has sum 0: out = 0 and lse = -inf, as the op promises. A NaN logit makes the
      // sum NaN, and `!= 0` (not `> 0`) lets it reach out and lse as the CPU kernel does; for any other row
      // the sum is > 0 or 0, so the two tests agree.
      const float inv = sum != 0.f ? 1.f / sum : 0.f;
      const int row = rows[mi][r];
      if (row < p.queries) {
        T* out_row = out + row * p.o_row_stride;
#pragma unroll
        for (int dn = 0; dn < kD / 8; ++dn)
          *reinterpret_cast<uint32_t*>(out_row + dn * 8 + 2 * t) =
              pack2<T>(acc_o[mi][dn][2 * r] * inv, acc_o[mi][dn][2 * r + 1] * inv);
        if (t == 0) lse[row] = sum != 0.f ? (row_max[mi][r] * score_factor + __log2f(sum)) * kLn2 : -INFINITY;
      }
    }
  }
}

template <typename T, int kHeadDim, int kNWarps, int kBlockN, int kWarpM, bool kBias, bool kVarlen>
__global__ void __launch_bounds__(32 * kNWarps) flash_fwd_kernel(const FlashFwdParams params) {
  if constexpr (kVarlen) {
    FlashFwdParams p = params;
    narrow_to_sequence<T, float>(p, blockIdx.z);
    // The grid covers the longest sequence: tiles past this one's queries have nothing to do.
    if (static_cast<int>(blockIdx.x) * FwdConfig<T, kHeadDim, kNWarps, kBlockN, kWarpM>::kBlockM >= p.queries) return;
    flash_fwd_tile<T, kHeadDim, kNWarps, kBlockN, kWarpM, kBias, true>(p, blockIdx.x, blockIdx.y, 0);
  } else {
    flash_fwd_tile<T, kHeadDim, kNWarps, kBlockN, kWarpM, kBias, false>(params, blockIdx.x, blockIdx.y, blockIdx.z);
  }
}

// Launch shape per head dim. d >= 64: 4 warps x 32 query rows (128 rows per CTA, FlashAttention-2's layout),
// so each K / V fragment feeds two m16 tiles and two CTAs can share an SM; d = 32 keeps 4 warps x 16 rows so
// short sequences still spread over the SMs.
template <int kHeadDim>
struct FwdLaunch {
  static constexpr int kNWarps = 4;
  static constexpr int kWarpM = kHeadDim >= 64 ? 32 : 16;
  static constexpr int kBlockN = 64;
};

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// One warp per (batch, head, query) row; lane c holds elements c, c + 32, ... of the head dims.
constexpr int kSimpleWarps = 4;
constexpr int kSimplePerLane = kSimpleMaxHeadDim / 32;

// Query row i of (head, batch), computed by one warp. kVarlen: p is narrowed to one packed sequence.
template <typename T, bool kVarlen>
__device__ __forceinline__ void flash_fwd_simple_row(const FlashFwdParams& p, int batch, int head, int i) {
  const int lane = threadIdx.x % 32;
  const int kv_head = head % p.kv_heads;

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + i * p.q_row_stride + head * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  const bool* keep = p.key_padding_mask ? p.key_padding_mask + batch * p.mask_batch_stride : nullptr;
  const T scale = static_cast<T>(p.scale), softcap = static_cast<T>(p.softcap);
  const T slope = p.alibi_slopes ? static_cast<T>(p.alibi_slopes[head]) : T(0);

  T q_reg[kSimplePerLane], acc[kSimplePerLane];
#pragma unroll
  for (int c = 0; c < kSimplePerLane; ++c) {
    const int idx = lane + 32 * c;
    q_reg[c] = idx < p.head_dim ? q[idx] : T(0);
    acc[c] = T(0);
  }
  const int diag = i + p.key_offset;
  const int j_begin = p.has_left ? max(0, diag - p.window_left) : 0;
  const int j_end = p.has_right ? min(p.keys, diag + p.window_right + 1) : p.keys;
  T row_max = -INFINITY, row_sum = 0;
  for (int j = j_begin; j < j_end; ++j) {
    if (keep != nullptr && !keep[j * p.mask_key_stride]) continue;
    const T* k_row = k + j * p.k_row_stride;
    T dot = 0;
#pragma unroll
    for (int c = 0; c < kSimplePerLane; ++c) {
      const int idx = lane + 32 * c;
      if (idx < p.head_dim) dot += q_reg[c] * k_row[idx];
    }
    T x = warp_sum(dot) * scale;
    if (p.alibi_slopes) x -= slope * static_cast<T>(abs(diag - j));
    if (p.softcap > 0) x = softcap * tanh(x / softcap);
    const T new_max = row_max > x ? row_max : x;
    const T correction = exp(row_max - new_max);  // exp(-inf) = 0 on the first visible key
    const T weight = exp(x - new_max);
    row_sum = row_sum * correction + weight;
    const T* v_row = v + j * p.v_row_stride;
#pragma unroll
    for (int c = 0; c < kSimplePerLane; ++c) {
      const int idx = lane + 32 * c;
      acc[c] = acc[c] * correction + (idx < p.value_head_dim ? weight * v_row[idx] : T(0));
    }
    row_max = new_max;
  }
  const T inv = row_sum != 0 ? T(1) / row_sum : T(0);  // NaN (a NaN logit) reaches out and lse
  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + i * p.o_row_stride + head * p.o_head_stride;
#pragma unroll
  for (int c = 0; c < kSimplePerLane; ++c) {
    const int idx = lane + 32 * c;
    if (idx < p.value_head_dim) out[idx] = acc[c] * inv;
  }
  if (lane == 0)
    static_cast<T*>(p.lse)[stats_offset<kVarlen>(p, batch, head) + i] =
        row_sum != 0 ? row_max + log(row_sum) : -INFINITY;
}

// The warp-per-row kernels' row of this warp in the (batch, n, h) frame, handed to row(p, batch, head, i). Packed,
// the row's sequence is found by a binary search over the offsets and the frame narrowed to it (batch 0).
template <typename T, bool kVarlen, typename Params, typename Row>
__device__ __forceinline__ void for_warp_row(const Params& params, Row&& row) {
  const int64_t row_id = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (row_id >= static_cast<int64_t>(params.batch) * params.heads * params.queries) return;
  const int i = static_cast<int>(row_id % params.queries);
  const int head = static_cast<int>((row_id / params.queries) % params.heads);
  const int batch = static_cast<int>(row_id / (static_cast<int64_t>(params.queries) * params.heads));
  if constexpr (kVarlen) {
    Params p = params;
    const int local = i - narrow_to_sequence<T, T>(p, sequence_of_row(p.cu_seqlens_q, p.sequences, i));
    if (local >= p.queries) return;  // a row the clamped offsets leave out
    row(p, 0, head, local);
  } else {
    row(params, batch, head, i);
  }
}

template <typename T, bool kVarlen>
__global__ void __launch_bounds__(32 * kSimpleWarps) flash_fwd_simple_kernel(const FlashFwdParams params) {
  for_warp_row<T, kVarlen>(params, [](const FlashFwdParams& p, int batch, int head, int i) {
    flash_fwd_simple_row<T, kVarlen>(p, batch, head, i);
  });
}

}  // namespace detail

namespace detail {
template <typename T, int kHeadDim, int kNWarps, int kBlockN, int kWarpM, bool kBias, bool kVarlen>
cudaError_t launch_flash_fwd(const FlashFwdParams& params, cudaStream_t stream) {
  using Cfg = FwdConfig<T, kHeadDim, kNWarps, kBlockN, kWarpM>;
  auto kernel = flash_fwd_kernel<T, kHeadDim, kNWarps, kBlockN, kWarpM, kBias, kVarlen>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in.
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid = kVarlen ? dim3(ceil_div(params.max_queries, Cfg::kBlockM), params.heads, params.sequences)
                            : dim3(ceil_div(params.queries, Cfg::kBlockM), params.heads, params.batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

template <typename T, int kHeadDim, int kBlockN, bool kVarlen>
cudaError_t launch_flash_fwd_tile(const FlashFwdParams& params, cudaStream_t stream) {
  using Launch = FwdLaunch<kHeadDim>;
  // kBias == false keeps raw scores until the exponent, which needs a positive scale to keep the row maxima.
  if (params.alibi_slopes != nullptr || params.softcap > 0 || !(params.scale > 0))
    return launch_flash_fwd<T, kHeadDim, Launch::kNWarps, kBlockN, Launch::kWarpM, true, kVarlen>(params, stream);
  return launch_flash_fwd<T, kHeadDim, Launch::kNWarps, kBlockN, Launch::kWarpM, false, kVarlen>(params, stream);
}
}  // namespace detail

template <typename T, int kHeadDim, bool kVarlen>
cudaError_t run_flash_fwd(const FlashFwdParams& params, cudaStream_t stream) {
  using Launch = detail::FwdLaunch<kHeadDim>;
  return detail::launch_flash_fwd_tile<T, kHeadDim, Launch::kBlockN, kVarlen>(params, stream);
}

// Packed or not, one warp per row of the (batch, n, h) frame.
template <typename T, bool kVarlen>
cudaError_t run_flash_fwd_simple(const FlashFwdParams& params, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(params.batch) * params.heads * params.queries;
  const int64_t blocks = (rows + detail::kSimpleWarps - 1) / detail::kSimpleWarps;
  detail::flash_fwd_simple_kernel<T, kVarlen>
      <<<static_cast<unsigned>(blocks), 32 * detail::kSimpleWarps, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace xtc::cuda
