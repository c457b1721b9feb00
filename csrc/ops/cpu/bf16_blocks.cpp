// AVX512-BF16 block work of the bf16 attention kernel; see bf16_blocks.h. Intrinsics only, no library headers
// with inline code (see there).
#include "ops/cpu/bf16_blocks.h"

#include <immintrin.h>

namespace xtc::ops::cpu::bf16_blocks {
namespace {

// Register tiles: kRows output rows x kGroups groups of 16 columns, 16 float32 accumulators of the 32
// registers (6 x 4 measured no faster).
constexpr int kRows = 4;
constexpr int kGroups = 4;

// Two adjacent bf16 of `pair` broadcast to every 32-bit lane: the left operand of vdpbf16ps.
inline __m512bh broadcast_pair(const uint16_t* pair) {
  int32_t bits;
  __builtin_memcpy(&bits, pair, sizeof(bits));
  return (__m512bh)_mm512_set1_epi32(bits);
}

inline __m512bh load_pairs(const uint16_t* src) { return (__m512bh)_mm512_loadu_si512(src); }

/// c (rows x groups * 16, float32, rows ldc apart) (+)= a . b over `inner` pairs: the left operand's pair
/// (row i, pair t) at a + i * a_row + t * a_inner, the right operand's 16 pairs of (group g, pair t) at
/// b + g * b_group + t * b_inner. Every product of the kernel is one of these.
struct Product {
  const uint16_t* a;
  int64_t a_row, a_inner;
  const uint16_t* b;
  int64_t b_group, b_inner, inner;
  float* c;
  int64_t ldc;
  bool accumulate;
};

template <int R, int G>
void product_tile(const Product& x, int64_t row, int64_t group) {
  const uint16_t* a = x.a + row * x.a_row;
  const uint16_t* b = x.b + group * x.b_group;
  float* c = x.c + row * x.ldc + group * 16;
  __m512 acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g)
      acc[r][g] = x.accumulate ? _mm512_loadu_ps(c + r * x.ldc + g * 16) : _mm512_setzero_ps();
  for (int64_t t = 0; t < x.inner; ++t) {
    __m512bh right[G];
    for (int g = 0; g < G; ++g) right[g] = load_pairs(b + g * x.b_group + t * x.b_inner);
    for (int r = 0; r < R; ++r) {
      const __m512bh left = broadcast_pair(a + r * x.a_row + t * x.a_inner);
      for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], left, right[g]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(c + r * x.ldc + g * 16, acc[r][g]);
}

// The tiles of R rows from `row`: whole kGroups tiles, then one of the remaining groups.
template <int R, int G = kGroups>
void product_rows(const Product& x, int64_t row, int64_t groups, int64_t group = 0) {
  if constexpr (G == kGroups)
    for (; group + kGroups <= groups; group += kGroups) product_tile<R, kGroups>(x, row, group);
  if constexpr (G > 0) {
    if (groups - group == G) return product_tile<R, G>(x, row, group);
    product_rows<R, G - 1>(x, row, groups, group);
  }
}

// The last `rows` (< kRows) rows, as tiles of that many.
template <int R>
void product_row_tail(const Product& x, int64_t row, int64_t rows, int64_t groups) {
  if constexpr (R > 0) {
    if (rows == R) return product_rows<R>(x, row, groups);
    product_row_tail<R - 1>(x, row, rows, groups);
  }
}

void run(const Product& x, int64_t rows, int64_t groups) {
  int64_t row = 0;
  for (; row + kRows <= rows; row += kRows) product_rows<kRows>(x, row, groups);
  product_row_tail<kRows - 1>(x, row, rows - row, groups);
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
  // One gather per group and pair of dims: the 16 keys' pairs, k_stride values apart (indices in 2-byte
  // units, so that any row stride, odd ones included, reads whole pairs).
  const __m512i rows =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(static_cast<int32_t>(k_stride)));
  for (int64_t group = 0; group * 16 < keys; ++group) {
    const int64_t present = keys - group * 16;
    const __mmask16 keep = present >= 16 ? __mmask16(0xffff) : first(present);
    const uint16_t* base = k + group * 16 * k_stride;
    uint16_t* out = packed + group * 16 * d;
    for (int64_t t = 0; t < d / 2; ++t)
      _mm512_storeu_si512(out + t * 32,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keep, rows, base + 2 * t, 2));
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
  run({q, q_stride, 2, packed_k, 16 * d, 32, d / 2, s, ld_s, false}, rows, (cols + 15) / 16);
}

void accumulate_pv(const uint16_t* p, int64_t ld_p, int64_t rows, int64_t cols, const uint16_t* packed_v,
                   int64_t dv, float* acc, int64_t ld_acc) {
  run({p, ld_p, 2, packed_v, 32, 2 * dv, (cols + 1) / 2, acc, ld_acc, true}, rows, dv / 16);
}

void accumulate_transposed(const uint16_t* packed_rows, int64_t dims, int64_t rows, const uint16_t* pairs,
                           int64_t ld_pairs, int64_t cols, float* acc, int64_t ld_acc) {
  run({packed_rows, 2, 2 * dims, pairs, 32, 2 * ld_pairs, (rows + 1) / 2, acc, ld_acc, true}, dims,
      (cols + 15) / 16);
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

void exp2_in_place(float* x, int64_t n, float mul, float shift) {
  const __m512 by = _mm512_set1_ps(mul), minus = _mm512_set1_ps(shift);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = c + 16 <= n ? __mmask16(0xffff) : first(n - c);
    const __m512 e = exp2_nonpositive(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(keep, x + c), by, minus));
    _mm512_mask_storeu_ps(x + c, keep, e);
  }
}

void softmax_grad(const float* p, float* dp, int64_t n, float delta, float scale, const float* t) {
  const __m512 minus = _mm512_set1_ps(delta), by = _mm512_set1_ps(scale), one = _mm512_set1_ps(1.f);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = c + 16 <= n ? __mmask16(0xffff) : first(n - c);
    __m512 ds = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(keep, p + c), by),
                              _mm512_sub_ps(_mm512_maskz_loadu_ps(keep, dp + c), minus));
    if (t != nullptr) {
      const __m512 tc = _mm512_maskz_loadu_ps(keep, t + c);
      ds = _mm512_mul_ps(ds, _mm512_fnmadd_ps(tc, tc, one));
    }
    _mm512_mask_storeu_ps(dp + c, keep, ds);
  }
}

void to_bf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = c + 16 <= n ? __mmask16(0xffff) : first(n - c);
    _mm256_mask_storeu_epi16(out + c, keep, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, x + c)));
  }
}

void to_bf16_pairs(const float* row0, const float* row1, int64_t n, uint16_t* out) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = c + 16 <= n ? __mmask16(0xffff) : first(n - c);
    const __m256i lo = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, row0 + c));
    const __m256i hi = row1 != nullptr ? (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(keep, row1 + c))
                                       : _mm256_setzero_si256();
    _mm512_storeu_si512(out + 2 * c, _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                                     _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
  }
}

}  // namespace xtc::ops::cpu::bf16_blocks
