// AVX512-BF16 block work of the bf16 attention kernel; see bf16_blocks.h. Intrinsics only, no library headers
// with inline code (see there).
#include "ops/cpu/bf16_blocks.h"

#include <immintrin.h>

namespace xtc::ops::cpu::bf16_blocks {
namespace {

// Register tiles: kRows query rows x kGroups groups of 16 columns, 16 float32 accumulators of the 32
// registers.
constexpr int kRows = 4;
constexpr int kGroups = 4;

// Two adjacent bf16 of `pair` broadcast to every 32-bit lane: the left operand of vdpbf16ps.
inline __m512bh broadcast_pair(const uint16_t* pair) {
  int32_t bits;
  __builtin_memcpy(&bits, pair, sizeof(bits));
  return (__m512bh)_mm512_set1_epi32(bits);
}

inline __m512bh load_pairs(const uint16_t* src) { return (__m512bh)_mm512_loadu_si512(src); }

// s (R rows x G * 16 columns) = q . keys, over d / 2 pairs of dims; `keys` points at the first group's pairs.
template <int R, int G>
void score_tile(const uint16_t* q, int64_t q_stride, int64_t d, const uint16_t* keys, float* s,
                int64_t ld_s) {
  __m512 acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
  const int64_t group_size = 16 * d;
  for (int64_t t = 0; t < d / 2; ++t) {
    __m512bh b[G];
    for (int g = 0; g < G; ++g) b[g] = load_pairs(keys + g * group_size + t * 32);
    for (int r = 0; r < R; ++r) {
      const __m512bh a = broadcast_pair(q + r * q_stride + 2 * t);
      for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], a, b[g]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(s + r * ld_s + g * 16, acc[r][g]);
}

template <int R>
void score_rows(const uint16_t* q, int64_t q_stride, int64_t d, const uint16_t* keys, int64_t groups,
                float* s, int64_t ld_s) {
  int64_t g = 0;
  for (; g + kGroups <= groups; g += kGroups)
    score_tile<R, kGroups>(q, q_stride, d, keys + g * 16 * d, s + g * 16, ld_s);
  const uint16_t* rest = keys + g * 16 * d;
  switch (groups - g) {
    case 3:
      return score_tile<R, 3>(q, q_stride, d, rest, s + g * 16, ld_s);
    case 2:
      return score_tile<R, 2>(q, q_stride, d, rest, s + g * 16, ld_s);
    case 1:
      return score_tile<R, 1>(q, q_stride, d, rest, s + g * 16, ld_s);
    default:
      return;
  }
}

// acc (R rows x G * 16 value dims) += p . values over `pairs` key pairs; `values` points at the first group.
template <int R, int G>
void pv_tile(const uint16_t* p, int64_t ld_p, int64_t pairs, const uint16_t* values, int64_t dv, float* acc,
             int64_t ld_acc) {
  __m512 c[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) c[r][g] = _mm512_loadu_ps(acc + r * ld_acc + g * 16);
  const int64_t pair_size = 2 * dv;
  for (int64_t u = 0; u < pairs; ++u) {
    __m512bh b[G];
    for (int g = 0; g < G; ++g) b[g] = load_pairs(values + u * pair_size + g * 32);
    for (int r = 0; r < R; ++r) {
      const __m512bh a = broadcast_pair(p + r * ld_p + 2 * u);
      for (int g = 0; g < G; ++g) c[r][g] = _mm512_dpbf16_ps(c[r][g], a, b[g]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(acc + r * ld_acc + g * 16, c[r][g]);
}

template <int R>
void pv_rows(const uint16_t* p, int64_t ld_p, int64_t pairs, const uint16_t* values, int64_t dv, float* acc,
             int64_t ld_acc) {
  const int64_t groups = dv / 16;
  int64_t g = 0;
  for (; g + kGroups <= groups; g += kGroups)
    pv_tile<R, kGroups>(p, ld_p, pairs, values + g * 32, dv, acc + g * 16, ld_acc);
  switch (groups - g) {
    case 3:
      return pv_tile<R, 3>(p, ld_p, pairs, values + g * 32, dv, acc + g * 16, ld_acc);
    case 2:
      return pv_tile<R, 2>(p, ld_p, pairs, values + g * 32, dv, acc + g * 16, ld_acc);
    case 1:
      return pv_tile<R, 1>(p, ld_p, pairs, values + g * 32, dv, acc + g * 16, ld_acc);
    default:
      return;
  }
}

// 2^x for x <= 0: 2^round(x) (vscalefps) times a degree-6 polynomial of the rest in [-1/2, 1/2] (Taylor's
// coefficients of e^(f ln 2): relative error 1.2e-7, below float32's rounding of the sum it feeds); 0 below
// 2^-126 (bf16 P has no use for subnormals), NaN kept.
inline __m512 exp2_nonpositive(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5403530e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.f), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(_mm512_scalef_ps(p, n), tiny, _mm512_setzero_ps());
}

inline __mmask16 first(int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }

}  // namespace

void pack_keys(const uint16_t* k, int64_t k_stride, int64_t keys, int64_t d, uint16_t* packed) {
  // One gather per group and pair of dims: the 16 keys' pairs, k_stride / 2 pairs apart (k_stride is even:
  // rows hold whole pairs).
  const __m512i rows =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(static_cast<int32_t>(k_stride / 2)));
  for (int64_t group = 0; group * 16 < keys; ++group) {
    const int64_t present = keys - group * 16;
    const __mmask16 keep = present >= 16 ? __mmask16(0xffff) : first(present);
    const uint16_t* base = k + group * 16 * k_stride;
    uint16_t* out = packed + group * 16 * d;
    for (int64_t t = 0; t < d / 2; ++t)
      _mm512_storeu_si512(out + t * 32,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keep, rows, base + 2 * t, 4));
  }
}

void pack_values(const uint16_t* v, int64_t v_stride, int64_t keys, int64_t dv, uint16_t* packed) {
  // Per pair of keys and group of 16 dims: the even key's values in the low halves of 32-bit lanes, the odd
  // key's in the high halves.
  for (int64_t u = 0; u < (keys + 1) / 2; ++u) {
    const uint16_t* even = v + 2 * u * v_stride;
    const bool has_odd = 2 * u + 1 < keys;
    uint16_t* out = packed + u * 2 * dv;
    for (int64_t g = 0; g < dv / 16; ++g) {
      const __m512i lo =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + g * 16)));
      const __m512i hi = has_odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                       reinterpret_cast<const __m256i*>(even + v_stride + g * 16)))
                                 : _mm512_setzero_si512();
      _mm512_storeu_si512(out + g * 32, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

void scores(const uint16_t* q, int64_t q_stride, int64_t rows, int64_t d, const uint16_t* packed_k,
            int64_t cols, float* s, int64_t ld_s) {
  const int64_t groups = (cols + 15) / 16;
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    score_rows<kRows>(q + r * q_stride, q_stride, d, packed_k, groups, s + r * ld_s, ld_s);
  const uint16_t* q_rest = q + r * q_stride;
  float* s_rest = s + r * ld_s;
  switch (rows - r) {
    case 3:
      return score_rows<3>(q_rest, q_stride, d, packed_k, groups, s_rest, ld_s);
    case 2:
      return score_rows<2>(q_rest, q_stride, d, packed_k, groups, s_rest, ld_s);
    case 1:
      return score_rows<1>(q_rest, q_stride, d, packed_k, groups, s_rest, ld_s);
    default:
      return;
  }
}

void accumulate_pv(const uint16_t* p, int64_t ld_p, int64_t rows, int64_t cols, const uint16_t* packed_v,
                   int64_t dv, float* acc, int64_t ld_acc) {
  const int64_t pairs = (cols + 1) / 2;
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    pv_rows<kRows>(p + r * ld_p, ld_p, pairs, packed_v, dv, acc + r * ld_acc, ld_acc);
  const uint16_t* p_rest = p + r * ld_p;
  float* acc_rest = acc + r * ld_acc;
  switch (rows - r) {
    case 3:
      return pv_rows<3>(p_rest, ld_p, pairs, packed_v, dv, acc_rest, ld_acc);
    case 2:
      return pv_rows<2>(p_rest, ld_p, pairs, packed_v, dv, acc_rest, ld_acc);
    case 1:
      return pv_rows<1>(p_rest, ld_p, pairs, packed_v, dv, acc_rest, ld_acc);
    default:
      return;
  }
}

float row_max(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-__builtin_inff());
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + c));
  if (c < n) m = _mm512_mask_max_ps(m, first(n - c), m, _mm512_maskz_loadu_ps(first(n - c), x + c));
  return _mm512_reduce_max_ps(m);
}

void scale_in_place(float* x, int64_t n, float scale) {
  const __m512 by = _mm512_set1_ps(scale);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) _mm512_storeu_ps(x + c, _mm512_mul_ps(_mm512_loadu_ps(x + c), by));
  if (c < n)
    _mm512_mask_storeu_ps(x + c, first(n - c), _mm512_mul_ps(_mm512_maskz_loadu_ps(first(n - c), x + c), by));
}

float exp2_to_bf16(const float* x, uint16_t* p, int64_t n, float mul, float shift) {
  const __m512 by = _mm512_set1_ps(mul), minus = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    const __m512 lo = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(x + c), by, minus));
    const __m512 hi = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(x + c + 16), by, minus));
    sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
    _mm512_storeu_si512(p + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
  for (; c < n; c += 16) {
    const __mmask16 keep = c + 16 <= n ? __mmask16(0xffff) : first(n - c);
    const __m512 e = _mm512_maskz_mov_ps(
        keep, exp2_nonpositive(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(keep, x + c), by, minus)));
    sum = _mm512_add_ps(sum, e);
    _mm256_mask_storeu_epi16(p + c, keep, (__m256i)_mm512_cvtneps_pbh(e));
  }
  return _mm512_reduce_add_ps(sum);
}

}  // namespace xtc::ops::cpu::bf16_blocks
