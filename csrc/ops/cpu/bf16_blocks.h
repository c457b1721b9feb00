// The bf16 attention kernel's block work on AVX512-BF16: the two products per block as register-tiled
// microkernels on vdpbf16ps (bf16 pairs multiplied, accumulated in float32), and the online softmax's row
// passes 16 lanes wide. Compiled for AVX512-BF16 in its own translation unit (see CMakeLists.txt); call only
// on a CPU that has it. bf16 travels as its bits (uint16_t), so that this file's code shares no inline
// function with the rest of the library (no c10 or std header compiled for AVX-512 could be picked by the
// linker for an older CPU).
//
// Packed layouts (FlashAttention's "K and V in the order the product reads them", here the order vdpbf16ps
// takes its pairs in):
// - keys: per group of 16 keys, per pair of head dims t, the 16 keys' (k[2t], k[2t+1]): 32 values; groups
// past
//   the last key hold zeros. Size: round_up(keys, 16) * d.
// - values: per pair of keys u, per group of 16 value dims g, (v[2u][16g + i], v[2u + 1][16g + i]) for i <
// 16:
//   32 values; a missing last key is zero. Size: round_up(keys, 2) * dv.
#pragma once

#include <cstdint>

namespace xtc::ops::cpu::bf16_blocks {

/// Whether the microkernels take these head dims: the forward an even d and dv a multiple of 16; the
/// backward, whose products also write rows of d, both multiples of 16.
inline bool fits(int64_t d, int64_t dv) { return d % 2 == 0 && dv % 16 == 0 && d > 0 && dv > 0; }
inline bool fits_backward(int64_t d, int64_t dv) { return d % 16 == 0 && fits(d, dv); }
inline int64_t packed_keys_size(int64_t keys, int64_t d) { return (keys + 15) / 16 * 16 * d; }
inline int64_t packed_values_size(int64_t keys, int64_t dv) { return (keys + 1) / 2 * 2 * dv; }

/// k (keys, d) with row stride k_stride into the packed key layout.
void pack_keys(const uint16_t* k, int64_t k_stride, int64_t keys, int64_t d, uint16_t* packed);
/// v (keys, dv) with row stride v_stride into the packed value layout.
void pack_values(const uint16_t* v, int64_t v_stride, int64_t keys, int64_t dv, uint16_t* packed);

/// s[r * ld_s + c] = q[r] . k[c] in float32 for rows x round_up(cols, 16) (the padded keys give 0), q (rows,
/// d) with row stride q_stride, packed_k the packed keys from the block's first key (a multiple of 16).
void scores(const uint16_t* q, int64_t q_stride, int64_t rows, int64_t d, const uint16_t* packed_k,
            int64_t cols, float* s, int64_t ld_s);

/// acc[r * ld_acc + c] += sum_j p[r * ld_p + j] v[j][c] for rows x dv, over cols keys from an even first key;
/// p[r * ld_p + cols] must be 0 when cols is odd.
void accumulate_pv(const uint16_t* p, int64_t ld_p, int64_t rows, int64_t cols, const uint16_t* packed_v,
                   int64_t dv, float* acc, int64_t ld_acc);

/// acc[i * ld_acc + j] += sum_r x[r][i] y[r][j] for dims x round_up(cols, 16) (the backward's dV and dK,
/// transposed): x (rows, dims) in the packed value layout (pairs of rows), y as to_bf16_pairs writes it,
/// pairs of rows ld_pairs columns wide (a multiple of 16).
void accumulate_transposed(const uint16_t* packed_rows, int64_t dims, int64_t rows, const uint16_t* pairs,
                           int64_t ld_pairs, int64_t cols, float* acc, int64_t ld_acc);

/// max of x[0..n) (a NaN may or may not be kept: it reaches the row through exp2_to_bf16's sum).
float row_max(const float* x, int64_t n);
/// x[c] *= scale over n entries.
void scale_in_place(float* x, int64_t n, float scale);
/// p[c] = bf16(2^(x[c] * mul - shift)) over n entries (0 where the exponent is below -126, -inf included);
/// returns the float32 sum of the unrounded powers. A polynomial 2^x: truncation error 1.2e-7 relative,
/// within 4e-7 of float64 with its float32 roundings (tests/cpp/test_bf16_blocks.cpp).
float exp2_to_bf16(const float* x, uint16_t* p, int64_t n, float mul, float shift);

/// x[c] = 2^(x[c] * mul - shift) in place (exp2_to_bf16's power, in float32).
void exp2_in_place(float* x, int64_t n, float mul, float shift);
/// dp[c] = scale * p[c] * (dp[c] - delta), times 1 - t[c]^2 where t (the soft-cap's tanh) is given: the
/// softmax's gradient, scaled for the products that follow.
void softmax_grad(const float* p, float* dp, int64_t n, float delta, float scale, const float* t);
/// out[c] = bf16(x[c]) over n entries.
void to_bf16(const float* x, int64_t n, uint16_t* out);
/// Two rows (row1 may be null: zeros) as bf16 pairs, per group of 16 columns the 16 (row0[c], row1[c]):
/// round_up(n, 16) * 2 values, zeros past n (the packed value layout's order, for a pair of query rows).
void to_bf16_pairs(const float* row0, const float* row1, int64_t n, uint16_t* out);

}  // namespace xtc::ops::cpu::bf16_blocks
