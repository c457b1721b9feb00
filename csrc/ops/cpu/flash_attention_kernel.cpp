// CPU flash attention, forward and backward.
//
// Shape legend: b batch, n queries, m keys, h query heads, hk kv heads (query head i reads kv head i % hk),
// d head dim of q and k, dv head dim of v. q (b, n, h, d), k (b, m, hk, d), v (b, m, hk, dv), read strided.
//
// Why this shape of kernel: the logits of one block of queries against one block of keys are made by a small
// GEMM (the BLAS torch links, see blas.h), turned into probabilities with an online softmax, and folded into
// the output by a second GEMM, so memory per thread is a block and never n x m. Causality and the sliding
// window make the visible keys of a query row one contiguous range, so key blocks outside the range of a
// query block are never visited; key blocks whose padding mask is all False are skipped as well. The backward
// pass recomputes the logits from the saved row log-sum-exp (FlashAttention-2) and runs one task per (batch,
// kv head), which owns dk/dv of that head and dq of the query heads reading it, so no two threads write the
// same row.
//
// Precision: float64 and float32 run in their own type (ALiBi slopes included). bfloat16 runs its two
// products per block through ATen's CPU matmul (oneDNN, on the CPU's bf16 units) and everything else in
// float32: logits are the bf16 product widened, then scaled, biased, capped and masked in float32; the online
// softmax, its statistics and the output accumulation are float32; P (and dS in the backward) is rounded to
// bf16 as a product's operand only, as every bf16 flash kernel does. On a CPU without AVX512-BF16 and for
// float16 (no fp16 units here; ATen's fp16 matmul measured 1-4 GFLOP/s), the inputs are widened to float32
// and the float32 kernel runs; results come back in the input dtype, lse in float32. Disabling the
// cpu_bf16_matmul backend (xtc/backends.h) forces the widening path for bf16 too.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
#include <xtc/backends.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "ops/cpu/bf16_blocks.h"
#include "ops/cpu/blas.h"
#include "ops/flash_attention_checks.h"

namespace xtc::ops {
namespace {

using cpu::gemm;
using TransposeType = cpu::Trans;
using Vec = at::vec::Vectorized<float>;
namespace bf16_blocks = cpu::bf16_blocks;

// Large blocks keep the per-GEMM overhead small next to its work (PyTorch's CPU flash attention uses 256 x
// 512 too); memory per thread stays a block: kQueryBlock x kKeyBlock logits.
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kKeyBlock = 512;

/// Everything a block needs to know about visibility and the logit transform, resolved once per call.
template <typename scalar_t>
struct AttentionRule {
  int64_t keys, key_offset, window_left, window_right;
  bool causal;
  scalar_t scale, softcap;
  const scalar_t* slopes;  // (h) in scalar_t (float64 stays float64), or nullptr
  const bool* mask;        // (b, m) contiguous or nullptr

  // Visible key range [lo, hi) of query i from causality and the window (the padding mask is applied per
  // key).
  void visible_range(int64_t i, int64_t& lo, int64_t& hi) const {
    const int64_t pos = i + key_offset;
    lo = window_left >= 0 ? std::max<int64_t>(0, pos - window_left) : 0;
    int64_t last = keys - 1;
    if (causal) last = std::min(last, pos);
    if (window_right >= 0) last = std::min(last, pos + window_right);
    hi = std::max(lo, last + 1);
  }

  // The key blocks queries [i0, i1) visit: from the block holding the first one's first visible key up to the
  // end of the visible keys (each row's visible keys are one contiguous range that only moves right with i).
  std::pair<int64_t, int64_t> key_blocks(int64_t i0, int64_t i1) const {
    int64_t lo_first, hi_first, lo_last, hi_last;
    visible_range(i0, lo_first, hi_first);
    visible_range(i1 - 1, lo_last, hi_last);
    return {(lo_first / kKeyBlock) * kKeyBlock, std::max(hi_first, hi_last)};
  }
};

template <typename scalar_t>
bool block_has_key(const bool* mask_row, int64_t j0, int64_t j1) {
  if (mask_row == nullptr) return true;
  return std::any_of(mask_row + j0, mask_row + j1, [](bool keep) { return keep; });
}

// The logit transform of rows [i0, i1) against keys [j0, j1) for one head, on raw scaled products s = scale q
// k^T already in `logits` (rows `ld` apart; 0: cols): + alibi, then the soft-cap, then invisible entries set
// to -inf. `tanh_out` (optional, the same layout) receives tanh(s / softcap) for the backward chain rule.
template <typename scalar_t>
void transform_logits(const AttentionRule<scalar_t>& rule, int64_t head, const bool* mask_row, int64_t i0,
                      int64_t i1, int64_t j0, int64_t j1, scalar_t* logits, scalar_t* tanh_out,
                      int64_t ld = 0) {
  const int64_t rows = i1 - i0, cols = j1 - j0;
  if (ld == 0) ld = cols;
  const scalar_t slope = rule.slopes != nullptr ? rule.slopes[head] : scalar_t(0);
  const scalar_t neg_inf = -std::numeric_limits<scalar_t>::infinity();
  // A block whose keys are all kept (padding sits at the end, mostly) needs no per-row scalar pass over the
  // mask.
  if (mask_row != nullptr && std::all_of(mask_row + j0, mask_row + j1, [](bool keep) { return keep; }))
    mask_row = nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* s = logits + r * ld;
    const int64_t i = i0 + r;
    if (slope != 0) {
      const int64_t pos = i + rule.key_offset;
      for (int64_t c = 0; c < cols; ++c) s[c] -= slope * static_cast<scalar_t>(std::abs(pos - (j0 + c)));
    }
    if (rule.softcap > 0) {
      scalar_t* t = tanh_out + r * ld;
      const scalar_t inv = scalar_t(1) / rule.softcap;
      for (int64_t c = 0; c < cols; ++c) {
        t[c] = std::tanh(s[c] * inv);
        s[c] = rule.softcap * t[c];
      }
    }
    int64_t lo, hi;
    rule.visible_range(i, lo, hi);
    const int64_t c_lo = std::clamp<int64_t>(lo - j0, 0, cols), c_hi = std::clamp<int64_t>(hi - j0, 0, cols);
    std::fill(s, s + std::max(c_lo, int64_t(0)), neg_inf);
    std::fill(s + std::max(c_hi, c_lo), s + cols, neg_inf);
    if (mask_row != nullptr) {
      for (int64_t c = c_lo; c < c_hi; ++c)
        if (!mask_row[j0 + c]) s[c] = neg_inf;
    }
  }
}

// Logits of rows [i0, i1) against keys [j0, j1) for one head (float / double): the BLAS product, then the
// transform.
template <typename scalar_t>
void block_logits(const AttentionRule<scalar_t>& rule, int64_t head, const bool* mask_row, const scalar_t* q,
                  int64_t q_stride, const scalar_t* k, int64_t k_stride, int64_t head_dim, int64_t i0,
                  int64_t i1, int64_t j0, int64_t j1, scalar_t* logits, scalar_t* tanh_out) {
  const int64_t rows = i1 - i0, cols = j1 - j0;
  gemm(TransposeType::Yes, TransposeType::No, cols, rows, head_dim, rule.scale, k, k_stride, q, q_stride,
       scalar_t(0), logits, cols);
  transform_logits(rule, head, mask_row, i0, i1, j0, j1, logits, tanh_out);
}

// exp(x - shift) in place over n entries, returning their sum; vectorised for float.
template <typename scalar_t>
scalar_t exp_shift_sum(scalar_t* x, int64_t n, scalar_t shift) {
  scalar_t sum = 0;
  for (int64_t c = 0; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

template <>
float exp_shift_sum<float>(float* x, int64_t n, float shift) {
  const Vec shift_vec(shift);
  Vec acc(0.f);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec e = (Vec::loadu(x + c) - shift_vec).exp_u20();
    e.store(x + c);
    acc = acc + e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    sum += x[c];
  }
  return sum;
}

// max(a, b), NaN if either is: a NaN logit (from NaN or Inf in the input) must reach the row's output, as it
// does through x-transformers' softmax, not be dropped by the comparison (std::max keeps its first argument
// then).
template <typename scalar_t>
scalar_t max_keeping_nan(scalar_t a, scalar_t b) {
  return std::isnan(a) || a > b ? a : b;
}

template <typename scalar_t>
scalar_t max_of(const scalar_t* x, int64_t n) {
  scalar_t result = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t c = 0; c < n; ++c) result = max_keeping_nan(result, x[c]);
  return result;
}

template <>
float max_of<float>(const float* x, int64_t n) {
  float result = -std::numeric_limits<float>::infinity();
  int64_t c = 0;
  if (n >= Vec::size()) {
    Vec acc = Vec::loadu(x);
    for (c = Vec::size(); c + Vec::size() <= n; c += Vec::size())
      acc = at::vec::maximum(acc, Vec::loadu(x + c));
    result = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, acc);
  }
  for (; c < n; ++c) result = max_keeping_nan(result, x[c]);  // at::vec::maximum keeps NaN too
  return result;
}

template <typename scalar_t>
AttentionRule<scalar_t> make_rule(const detail::FlashAttentionSizes<>& s, bool causal, int64_t window_left,
                                  int64_t window_right, double softcap, const at::Tensor& slopes,
                                  const at::Tensor& mask) {
  return AttentionRule<scalar_t>{s.keys,
                                 s.key_offset,
                                 window_left,
                                 window_right,
                                 causal,
                                 static_cast<scalar_t>(s.scale),
                                 static_cast<scalar_t>(softcap),
                                 slopes.defined() ? slopes.data_ptr<scalar_t>() : nullptr,
                                 mask.defined() ? mask.data_ptr<bool>() : nullptr};
}

/// A (b, rows, heads, dim) operand read row by row through its strides (only the innermost must be 1).
template <typename T>
struct RowOperand {
  const T* data;
  int64_t batch_stride, row_stride, head_stride;
  explicit RowOperand(const at::Tensor& t)
      : data(t.const_data_ptr<T>()),
        batch_stride(t.stride(0)),
        row_stride(t.stride(1)),
        head_stride(t.stride(2)) {}
  const T* at(int64_t batch, int64_t row, int64_t head) const {
    return data + batch * batch_stride + row * row_stride + head * head_stride;
  }
};

// The kernels read rows strided; only the innermost (head dim) stride must be 1 for the GEMMs.
at::Tensor with_unit_inner_stride(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

template <typename scalar_t>
void forward_impl(const detail::FlashAttentionSizes<>& s, const AttentionRule<scalar_t>& rule,
                  const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  at::Tensor& lse) {
  const int64_t n = s.queries, m = s.keys, h = s.heads, hk = s.kv_heads, d = s.head_dim,
                dv = s.value_head_dim;
  const int64_t q_blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const RowOperand<scalar_t> Q(q), K(k), V(v);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  scalar_t* lse_data = lse.data_ptr<scalar_t>();
  const scalar_t neg_inf = -std::numeric_limits<scalar_t>::infinity();

  at::parallel_for(0, s.batch * h * q_blocks, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlasGuard sequential_blas;
    std::vector<scalar_t> logits(kQueryBlock * kKeyBlock), acc(kQueryBlock * dv), row_max(kQueryBlock),
        row_sum(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % q_blocks, head = (task / q_blocks) % h, batch = task / (q_blocks * h);
      const int64_t kv_head = head % hk;
      const int64_t i0 = qb * kQueryBlock, i1 = std::min(n, i0 + kQueryBlock), rows = i1 - i0;
      const scalar_t* q_ptr = Q.at(batch, i0, head);
      const scalar_t* k_head = K.at(batch, 0, kv_head);
      const scalar_t* v_head = V.at(batch, 0, kv_head);
      const bool* mask_row = rule.mask != nullptr ? rule.mask + batch * m : nullptr;
      std::fill(acc.begin(), acc.begin() + rows * dv, scalar_t(0));
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), scalar_t(0));

      const auto [first_block, key_hi] = rule.key_blocks(i0, i1);
      for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock) {
        const int64_t j1 = std::min(m, j0 + kKeyBlock), cols = j1 - j0;
        if (!block_has_key<scalar_t>(mask_row, j0, j1)) continue;
        block_logits(rule, head, mask_row, q_ptr, Q.row_stride, k_head + j0 * K.row_stride, K.row_stride, d,
                     i0, i1, j0, j1, logits.data(), logits.data());
        bool any_visible = false;
        for (int64_t r = 0; r < rows; ++r) {
          scalar_t* p = logits.data() + r * cols;
          const scalar_t block_max = max_of(p, cols);
          const scalar_t new_max = max_keeping_nan(row_max[r], block_max);
          if (new_max == neg_inf) {  // nothing visible yet in this row
            std::fill(p, p + cols, scalar_t(0));
            continue;
          }
          any_visible = true;
          const scalar_t rescale = std::exp(row_max[r] - new_max);
          row_sum[r] = row_sum[r] * rescale + exp_shift_sum(p, cols, new_max);
          row_max[r] = new_max;
          if (rescale != scalar_t(1)) {
            scalar_t* o = acc.data() + r * dv;
            for (int64_t c = 0; c < dv; ++c) o[c] *= rescale;
          }
        }
        if (!any_visible) continue;
        gemm(TransposeType::No, TransposeType::No, dv, rows, cols, scalar_t(1), v_head + j0 * V.row_stride,
             V.row_stride, logits.data(), cols, scalar_t(1), acc.data(), dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* o = out_data + ((batch * n + i0 + r) * h + head) * dv;
        const scalar_t* a = acc.data() + r * dv;
        scalar_t* l = lse_data + (batch * h + head) * n + i0 + r;
        if (row_sum[r] != 0) {  // NaN (a NaN logit) goes on into the output and lse
          const scalar_t inv = scalar_t(1) / row_sum[r];
          for (int64_t c = 0; c < dv; ++c) o[c] = a[c] * inv;
          *l = row_max[r] + std::log(row_sum[r]);
        } else {
          std::fill(o, o + dv, scalar_t(0));
          *l = neg_inf;
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const detail::FlashAttentionSizes<>& s, const AttentionRule<scalar_t>& rule,
                   const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv_t) {
  const int64_t n = s.queries, m = s.keys, h = s.heads, hk = s.kv_heads, d = s.head_dim,
                dv = s.value_head_dim;
  const RowOperand<scalar_t> Q(q), K(k), V(v), O(out), dO(grad_out);
  const scalar_t* lse_data = lse.data_ptr<scalar_t>();
  scalar_t* dq_data = dq.data_ptr<scalar_t>();
  scalar_t* dk_data = dk.data_ptr<scalar_t>();
  scalar_t* dv_data = dv_t.data_ptr<scalar_t>();
  // dq (b, n, h, d), dk (b, m, hk, d), dv (b, m, hk, dv), all contiguous.
  const int64_t dq_sn = h * d, dk_sn = hk * d, dv_sn = hk * dv;
  const bool softcap = rule.softcap > 0;

  at::parallel_for(0, s.batch * hk, 1, [&](int64_t begin, int64_t end) {
    cpu::SequentialBlasGuard sequential_blas;
    const int64_t block = kQueryBlock * kKeyBlock;
    std::vector<scalar_t> p(block), dp(block), tanh_buf(softcap ? block : 0), delta(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kv_head = task % hk, batch = task / hk;
      const bool* mask_row = rule.mask != nullptr ? rule.mask + batch * m : nullptr;
      const scalar_t* k_head = K.at(batch, 0, kv_head);
      const scalar_t* v_head = V.at(batch, 0, kv_head);
      scalar_t* dk_head = dk_data + batch * m * dk_sn + kv_head * d;
      scalar_t* dv_head = dv_data + batch * m * dv_sn + kv_head * dv;
      for (int64_t head = kv_head; head < h; head += hk) {
        const scalar_t* lse_row = lse_data + (batch * h + head) * n;
        for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
          const int64_t i1 = std::min(n, i0 + kQueryBlock), rows = i1 - i0;
          const scalar_t* q_ptr = Q.at(batch, i0, head);
          const scalar_t* g_ptr = dO.at(batch, i0, head);
          const scalar_t* o_ptr = O.at(batch, i0, head);
          scalar_t* dq_ptr = dq_data + (batch * n + i0) * dq_sn + head * d;
          // delta_i = rowsum(dO_i * O_i): the softmax Jacobian's correction term.
          for (int64_t r = 0; r < rows; ++r) {
            scalar_t acc = 0;
            for (int64_t c = 0; c < dv; ++c)
              acc += g_ptr[r * dO.row_stride + c] * o_ptr[r * O.row_stride + c];
            delta[r] = acc;
          }
          const auto [first_block, key_hi] = rule.key_blocks(i0, i1);
          for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock) {
            const int64_t j1 = std::min(m, j0 + kKeyBlock), cols = j1 - j0;
            if (!block_has_key<scalar_t>(mask_row, j0, j1)) continue;
            block_logits(rule, head, mask_row, q_ptr, Q.row_stride, k_head + j0 * K.row_stride, K.row_stride,
                         d, i0, i1, j0, j1, p.data(), tanh_buf.data());
            bool any_visible = false;
            for (int64_t r = 0; r < rows; ++r) {
              scalar_t* pr = p.data() + r * cols;
              const scalar_t l = lse_row[i0 + r];
              if (l == -std::numeric_limits<scalar_t>::infinity()) {
                std::fill(pr, pr + cols, scalar_t(0));
                continue;
              }
              any_visible = true;
              exp_shift_sum(pr, cols, l);
            }
            if (!any_visible) continue;
            // dV += P^T dO
            gemm(TransposeType::No, TransposeType::Yes, dv, cols, rows, scalar_t(1), g_ptr, dO.row_stride,
                 p.data(), cols, scalar_t(1), dv_head + j0 * dv_sn, dv_sn);
            // dP = dO V^T
            gemm(TransposeType::Yes, TransposeType::No, cols, rows, dv, scalar_t(1),
                 v_head + j0 * V.row_stride, V.row_stride, g_ptr, dO.row_stride, scalar_t(0), dp.data(),
                 cols);
            // dS = P * (dP - delta), through the softcap's tanh when on; stored in dp.
            for (int64_t r = 0; r < rows; ++r) {
              scalar_t* ds = dp.data() + r * cols;
              const scalar_t* pr = p.data() + r * cols;
              for (int64_t c = 0; c < cols; ++c) ds[c] = pr[c] * (ds[c] - delta[r]);
              if (softcap) {
                const scalar_t* t = tanh_buf.data() + r * cols;
                for (int64_t c = 0; c < cols; ++c) ds[c] *= scalar_t(1) - t[c] * t[c];
              }
            }
            // dQ += scale * dS K ; dK += scale * dS^T Q
            gemm(TransposeType::No, TransposeType::No, d, rows, cols, rule.scale, k_head + j0 * K.row_stride,
                 K.row_stride, dp.data(), cols, scalar_t(1), dq_ptr, dq_sn);
            gemm(TransposeType::No, TransposeType::Yes, d, cols, rows, rule.scale, q_ptr, Q.row_stride,
                 dp.data(), cols, scalar_t(1), dk_head + j0 * dk_sn, dk_sn);
          }
        }
      }
    }
  });
}

// ---- bfloat16 forward on the CPU's bf16 units
// ---------------------------------------------------------------- Same blocks, visibility and online softmax
// as forward_impl<float>; the two products per block go through ATen's CPU matmul (oneDNN's bf16 kernels:
// 250-320 GFLOP/s a core on this block shape where the BLAS's fp32 gives 90, and MKL's bf16 GEMM and ATen's
// brgemm without AMX measured no faster than fp32), which writes bf16: the path of head dims the microkernels
// below do not take. The score product is widened and scaled in float32 at once, the softmax runs in
// bf16_blocks' passes (this path too runs only on AVX512-BF16 CPUs), P is rounded to bf16 only as the left
// operand of P V, and each block's P V is added into a float32 accumulator.
using BVec = at::vec::Vectorized<at::BFloat16>;

// dst[c] = float(src[c]) * scale over n entries.
void widen_scaled(const at::BFloat16* src, float* dst, int64_t n, float scale) {
  const Vec scale_vec(scale);
  int64_t c = 0;
  for (; c + BVec::size() <= n; c += BVec::size()) {
    auto [lo, hi] = at::vec::convert_bfloat16_float(BVec::loadu(src + c));
    (lo * scale_vec).store(dst + c);
    (hi * scale_vec).store(dst + c + Vec::size());
  }
  for (; c < n; ++c) dst[c] = static_cast<float>(src[c]) * scale;
}

// acc[c] += float(src[c]) over n entries.
void add_widened(const at::BFloat16* src, float* acc, int64_t n) {
  int64_t c = 0;
  for (; c + BVec::size() <= n; c += BVec::size()) {
    auto [lo, hi] = at::vec::convert_bfloat16_float(BVec::loadu(src + c));
    (Vec::loadu(acc + c) + lo).store(acc + c);
    (Vec::loadu(acc + c + Vec::size()) + hi).store(acc + c + Vec::size());
  }
  for (; c < n; ++c) acc[c] += static_cast<float>(src[c]);
}

// A (rows, cols) view with row stride `stride` over memory the kernel reads; from_blob neither copies nor
// owns it.
at::Tensor bf16_view(const at::BFloat16* data, int64_t rows, int64_t cols, int64_t stride) {
  return at::from_blob(const_cast<at::BFloat16*>(data), {rows, cols}, {stride, 1},
                       at::TensorOptions().dtype(at::kBFloat16));
}

// scratch[: rows * cols] = a b as a (rows, cols) bf16 block, through ATen's CPU matmul (no dispatcher round
// trip).
void bf16_product(at::Tensor& scratch, int64_t rows, int64_t cols, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor result = scratch.narrow(0, 0, rows * cols).view({rows, cols});
  at::cpu::mm_out(result, a, b);
}

const uint16_t* bits(const at::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint16_t* bits(at::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }

/// One query block's running softmax state and float32 output accumulator.
struct OnlineSoftmax {
  std::vector<float> acc, row_max, row_sum;
  OnlineSoftmax(int64_t rows, int64_t dv) : acc(rows * dv), row_max(rows), row_sum(rows) {}
  void reset(int64_t rows, int64_t dv) {
    std::fill(acc.begin(), acc.begin() + rows * dv, 0.f);
    std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<float>::infinity());
    std::fill(row_sum.begin(), row_sum.end(), 0.f);
  }
};

// P (bf16, rows `ld` apart) of one block's logits x, the row statistics and the accumulator rescaled. The
// logits are `scale` times x (plain blocks) or x itself. Returns whether any row saw a key.
bool block_probabilities(float* x, at::BFloat16* p, int64_t rows, int64_t cols, int64_t ld, float scale,
                         int64_t dv, OnlineSoftmax& state) {
  constexpr float kLog2e = 1.4426950408889634f;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  bool any_visible = false;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld;
    uint16_t* pr = bits(p + r * ld);
    const float new_max = max_keeping_nan(state.row_max[r], bf16_blocks::row_max(xr, cols) * scale);
    if (cols % 2 == 1) pr[cols] = 0;  // the pad of the last key pair
    if (new_max == neg_inf) {         // nothing visible yet in this row
      std::fill(pr, pr + cols, uint16_t(0));
      continue;
    }
    any_visible = true;
    const float rescale = std::exp(state.row_max[r] - new_max);
    state.row_sum[r] = state.row_sum[r] * rescale +
                       bf16_blocks::exp2_to_bf16(xr, pr, cols, scale * kLog2e, new_max * kLog2e);
    state.row_max[r] = new_max;
    if (rescale != 1.f) {
      float* o = state.acc.data() + r * dv;
      for (int64_t c = 0; c < dv; ++c) o[c] *= rescale;
    }
  }
  return any_visible;
}

// out = acc / sum and lse = max + log(sum) of one query block's rows; rows that saw no key give 0 and -inf.
void finish_rows(const OnlineSoftmax& state, int64_t rows, int64_t dv, at::BFloat16* out, int64_t out_stride,
                 float* lse) {
  for (int64_t r = 0; r < rows; ++r) {
    at::BFloat16* o = out + r * out_stride;
    const float* a = state.acc.data() + r * dv;
    if (state.row_sum[r] != 0) {  // NaN (a NaN logit) goes on into the output and lse
      const float inv = 1.f / state.row_sum[r];
      for (int64_t c = 0; c < dv; ++c) o[c] = static_cast<at::BFloat16>(a[c] * inv);
      lse[r] = state.row_max[r] + std::log(state.row_sum[r]);
    } else {
      std::fill(o, o + dv, at::BFloat16(0.f));
      lse[r] = -std::numeric_limits<float>::infinity();
    }
  }
}

void forward_bf16_onednn(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                         const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                         at::Tensor& lse) {
  const int64_t n = s.queries, m = s.keys, h = s.heads, hk = s.kv_heads, d = s.head_dim,
                dv = s.value_head_dim;
  const int64_t q_blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const RowOperand<at::BFloat16> Q(q), K(k), V(v);
  AttentionRule<float> unscaled = rule;  // the transform runs on scaled logits
  unscaled.scale = 1.f;

  at::parallel_for(0, s.batch * h * q_blocks, 1, [&](int64_t begin, int64_t end) {
    // Rows of an even width, so that block_probabilities' pad of an odd last key stays in its row.
    const int64_t width = kKeyBlock + kKeyBlock % 2;
    std::vector<float> logits(kQueryBlock * width);
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
    at::Tensor product = at::empty({kQueryBlock * std::max(kKeyBlock, dv)}, bf16);  // each product's result
    at::Tensor p_low = at::empty({kQueryBlock * width}, bf16);                      // P in bf16
    auto* product_data = product.data_ptr<at::BFloat16>();
    auto* p_data = p_low.data_ptr<at::BFloat16>();
    OnlineSoftmax state(kQueryBlock, dv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % q_blocks, head = (task / q_blocks) % h, batch = task / (q_blocks * h);
      const int64_t i0 = qb * kQueryBlock, i1 = std::min(n, i0 + kQueryBlock), rows = i1 - i0;
      const at::BFloat16* k_head = K.at(batch, 0, head % hk);
      const at::BFloat16* v_head = V.at(batch, 0, head % hk);
      const bool* mask_row = rule.mask != nullptr ? rule.mask + batch * m : nullptr;
      const at::Tensor q_block = bf16_view(Q.at(batch, i0, head), rows, d, Q.row_stride);
      state.reset(rows, dv);
      const auto [first_block, key_hi] = rule.key_blocks(i0, i1);
      for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock) {
        const int64_t j1 = std::min(m, j0 + kKeyBlock), cols = j1 - j0, ld = cols + cols % 2;
        if (!block_has_key<float>(mask_row, j0, j1)) continue;
        bf16_product(product, rows, cols, q_block,
                     bf16_view(k_head + j0 * K.row_stride, cols, d, K.row_stride).t());
        for (int64_t r = 0; r < rows; ++r)
          widen_scaled(product_data + r * cols, logits.data() + r * ld, cols, rule.scale);
        transform_logits(unscaled, head, mask_row, i0, i1, j0, j1, logits.data(), logits.data(), ld);
        if (!block_probabilities(logits.data(), p_data, rows, cols, ld, 1.f, dv, state)) continue;
        bf16_product(product, rows, dv, bf16_view(p_data, rows, cols, ld),
                     bf16_view(v_head + j0 * V.row_stride, cols, dv, V.row_stride));
        add_widened(product_data, state.acc.data(), rows * dv);
      }
      finish_rows(state, rows, dv, out.data_ptr<at::BFloat16>() + ((batch * n + i0) * h + head) * dv, h * dv,
                  lse.data_ptr<float>() + (batch * h + head) * n + i0);
    }
  });
}

// ---- bfloat16 forward in our own microkernels (bf16_blocks.h)
// ------------------------------------------------------------------------------------------- The same blocks
// as forward_bf16_onednn, with K and V packed once per call into the order vdpbf16ps reads, and both products
// as register-tiled microkernels: no library call per block, and the scores come out in float32 (not rounded
// to bf16 as a bf16 matmul writes them). A block that every row sees whole, with no ALiBi or soft-cap, takes
// the scale into its exp2 (FlashAttention-3's folding): one max pass and one exp2 pass over the raw products.

enum class Packing { Keys, Values };  // bf16_blocks.h's two layouts

// Every (batch, kv head)'s rows of t (b, keys, hk, dim) in a packed layout, one after the other.
at::Tensor pack_per_kv_head(const detail::FlashAttentionSizes<>& s, const at::Tensor& t, int64_t dim,
                            Packing packing) {
  const int64_t size = packing == Packing::Keys ? bf16_blocks::packed_keys_size(s.keys, dim)
                                                : bf16_blocks::packed_values_size(s.keys, dim);
  at::Tensor packed = at::empty({s.batch * s.kv_heads * size}, t.options().dtype(at::kBFloat16));
  const RowOperand<at::BFloat16> T(t);
  uint16_t* out = bits(packed.data_ptr<at::BFloat16>());
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const uint16_t* rows = bits(T.at(task / s.kv_heads, 0, task % s.kv_heads));
      if (packing == Packing::Keys)
        bf16_blocks::pack_keys(rows, T.row_stride, s.keys, dim, out + task * size);
      else
        bf16_blocks::pack_values(rows, T.row_stride, s.keys, dim, out + task * size);
    }
  });
  return packed;
}

// Whether every row of [i0, i1) sees every key of [j0, j1) and the logits are the scaled products alone.
bool plain_block(const AttentionRule<float>& rule, const bool* mask_row, int64_t i0, int64_t i1, int64_t j0,
                 int64_t j1) {
  if (rule.slopes != nullptr || rule.softcap > 0 || !(rule.scale > 0)) return false;
  if (mask_row != nullptr && !std::all_of(mask_row + j0, mask_row + j1, [](bool keep) { return keep; }))
    return false;
  int64_t lo_first, hi_first, lo_last, hi_last;  // each row's range moves right with i
  rule.visible_range(i0, lo_first, hi_first);
  rule.visible_range(i1 - 1, lo_last, hi_last);
  return lo_last <= j0 && hi_first >= j1;
}

void forward_bf16_tiled(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                        at::Tensor& lse) {
  const int64_t n = s.queries, m = s.keys, h = s.heads, hk = s.kv_heads, d = s.head_dim,
                dv = s.value_head_dim;
  const int64_t q_blocks = (n + kQueryBlock - 1) / kQueryBlock;
  const RowOperand<at::BFloat16> Q(q);
  const at::Tensor packed_keys = pack_per_kv_head(s, k, d, Packing::Keys),
                   packed_values = pack_per_kv_head(s, v, dv, Packing::Values);
  const int64_t key_size = bf16_blocks::packed_keys_size(m, d),
                value_size = bf16_blocks::packed_values_size(m, dv);
  AttentionRule<float> unscaled = rule;  // the transform runs on scaled logits
  unscaled.scale = 1.f;

  at::parallel_for(0, s.batch * h * q_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> logits(kQueryBlock * kKeyBlock);
    std::vector<at::BFloat16> p(kQueryBlock * kKeyBlock);
    OnlineSoftmax state(kQueryBlock, dv);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % q_blocks, head = (task / q_blocks) % h, batch = task / (q_blocks * h);
      const int64_t i0 = qb * kQueryBlock, i1 = std::min(n, i0 + kQueryBlock), rows = i1 - i0;
      const int64_t kv = batch * hk + head % hk;
      const uint16_t* keys = bits(packed_keys.const_data_ptr<at::BFloat16>()) + kv * key_size;
      const uint16_t* values = bits(packed_values.const_data_ptr<at::BFloat16>()) + kv * value_size;
      const bool* mask_row = rule.mask != nullptr ? rule.mask + batch * m : nullptr;
      state.reset(rows, dv);
      const auto [first_block, key_hi] = rule.key_blocks(i0, i1);
      for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock) {
        const int64_t j1 = std::min(m, j0 + kKeyBlock), cols = j1 - j0, ld = (cols + 15) / 16 * 16;
        if (!block_has_key<float>(mask_row, j0, j1)) continue;
        bf16_blocks::scores(bits(Q.at(batch, i0, head)), Q.row_stride, rows, d, keys + j0 * d, cols,
                            logits.data(), ld);
        float logit_scale = rule.scale;
        if (!plain_block(rule, mask_row, i0, i1, j0, j1)) {
          for (int64_t r = 0; r < rows; ++r)
            bf16_blocks::scale_in_place(logits.data() + r * ld, cols, rule.scale);
          transform_logits(unscaled, head, mask_row, i0, i1, j0, j1, logits.data(), logits.data(), ld);
          logit_scale = 1.f;
        }
        if (!block_probabilities(logits.data(), p.data(), rows, cols, ld, logit_scale, dv, state)) continue;
        bf16_blocks::accumulate_pv(bits(p.data()), ld, rows, cols, values + j0 * dv, dv, state.acc.data(),
                                   dv);
      }
      finish_rows(state, rows, dv, out.data_ptr<at::BFloat16>() + ((batch * n + i0) * h + head) * dv, h * dv,
                  lse.data_ptr<float>() + (batch * h + head) * n + i0);
    }
  });
}

void forward_bf16_impl(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                       const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                       at::Tensor& lse) {
  if (bf16_blocks::fits(s.head_dim, s.value_head_dim))
    forward_bf16_tiled(s, rule, q, k, v, out, lse);
  else
    forward_bf16_onednn(s, rule, q, k, v, out, lse);
}

// ---- bfloat16 backward on the CPU's bf16 units
// --------------------------------------------------------------- backward_impl's blocks and tasks with its
// five products per block on oneDNN's bf16 matmul: S = Q K^T, dV += P^T dO, dP - delta = dO V^T - delta (one
// product, see there), dQ += dS K, dK += dS^T Q. P and scale * dS are rounded to bf16 as operands (as the GPU
// flash kernels do); everything between the products (the softmax recomputed from lse, dS) is float32, and
// dq, dk, dv accumulate in float32 before one rounding to bf16 at the end.

// x[c] = exp(x[c] - shift) in place, and its bf16 rounding into p[c], over n entries.
void exp_shift_and_round(float* x, at::BFloat16* p, int64_t n, float shift) {
  const Vec shift_vec(shift);
  int64_t c = 0;
  for (; c + BVec::size() <= n; c += BVec::size()) {
    const Vec lo = (Vec::loadu(x + c) - shift_vec).exp_u20();
    const Vec hi = (Vec::loadu(x + c + Vec::size()) - shift_vec).exp_u20();
    lo.store(x + c);
    hi.store(x + c + Vec::size());
    at::vec::convert_float_bfloat16(lo, hi).store(p + c);
  }
  for (; c < n; ++c) {
    x[c] = std::exp(x[c] - shift);
    p[c] = static_cast<at::BFloat16>(x[c]);
  }
}

// ds[c] = bf16(scale * p[c] * float(dp_minus_delta[c]) (* (1 - t[c]^2) when t, the softcap's tanh, is
// given)).
void scaled_ds_to_bf16(const at::BFloat16* dp_minus_delta, const float* p, const float* t, float scale,
                       at::BFloat16* ds, int64_t n) {
  const Vec scale_vec(scale), one(1.f);
  int64_t c = 0;
  for (; c + BVec::size() <= n; c += BVec::size()) {
    auto [lo, hi] = at::vec::convert_bfloat16_float(BVec::loadu(dp_minus_delta + c));
    lo = lo * Vec::loadu(p + c) * scale_vec;
    hi = hi * Vec::loadu(p + c + Vec::size()) * scale_vec;
    if (t != nullptr) {
      const Vec t_lo = Vec::loadu(t + c), t_hi = Vec::loadu(t + c + Vec::size());
      lo = lo * (one - t_lo * t_lo);
      hi = hi * (one - t_hi * t_hi);
    }
    at::vec::convert_float_bfloat16(lo, hi).store(ds + c);
  }
  for (; c < n; ++c) {
    float value = scale * p[c] * static_cast<float>(dp_minus_delta[c]);
    if (t != nullptr) value *= 1.f - t[c] * t[c];
    ds[c] = static_cast<at::BFloat16>(value);
  }
}

// dst[r * dst_stride + c] += float(src[r * cols + c]) for a (rows, cols) bf16 block.
void add_widened_rows(const at::BFloat16* src, int64_t rows, int64_t cols, float* dst, int64_t dst_stride) {
  for (int64_t r = 0; r < rows; ++r) add_widened(src + r * cols, dst + r * dst_stride, cols);
}

void backward_bf16_onednn(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                          const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                          at::Tensor& dk, at::Tensor& dv_t) {
  const int64_t n = s.queries, m = s.keys, h = s.heads, hk = s.kv_heads, d = s.head_dim,
                dv = s.value_head_dim;
  const RowOperand<at::BFloat16> Q(q), K(k), V(v), O(out), dO(grad_out);
  const float* lse_data = lse.const_data_ptr<float>();
  float* dq_data = dq.data_ptr<float>();
  float* dk_data = dk.data_ptr<float>();
  float* dv_data = dv_t.data_ptr<float>();
  const int64_t dq_sn = h * d, dk_sn = hk * d, dv_sn = hk * dv;  // float32 accumulators, contiguous
  const bool softcap = rule.softcap > 0;
  const float scale = rule.scale;
  AttentionRule<float> unscaled = rule;
  unscaled.scale = 1.f;

  at::parallel_for(0, s.batch * hk, 1, [&](int64_t begin, int64_t end) {
    const int64_t block = kQueryBlock * kKeyBlock;
    std::vector<float> p(block), tanh_buf(softcap ? block : 0);
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
    const int64_t aug = dv + 3;  // dO and V with three more columns for delta
    // [V | 1 1 1] of every key of the task's kv head, built once per task (each query block and head reads
    // it).
    at::Tensor g_aug = at::empty({kQueryBlock * aug}, bf16), v_aug = at::empty({m * aug}, bf16);
    auto* g_aug_data = g_aug.data_ptr<at::BFloat16>();
    auto* v_aug_data = v_aug.data_ptr<at::BFloat16>();
    const int64_t widest = std::max({kKeyBlock, d, dv});
    at::Tensor product = at::empty({std::max(kQueryBlock, kKeyBlock) * widest}, bf16);
    at::Tensor p_low = at::empty({block}, bf16), ds_low = at::empty({block}, bf16);
    auto* product_data = product.data_ptr<at::BFloat16>();
    auto* p_low_data = p_low.data_ptr<at::BFloat16>();
    auto* ds_low_data = ds_low.data_ptr<at::BFloat16>();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kv_head = task % hk, batch = task / hk;
      const bool* mask_row = rule.mask != nullptr ? rule.mask + batch * m : nullptr;
      const at::BFloat16* k_head = K.at(batch, 0, kv_head);
      const at::BFloat16* v_head = V.at(batch, 0, kv_head);
      float* dk_head = dk_data + batch * m * dk_sn + kv_head * d;
      float* dv_head = dv_data + batch * m * dv_sn + kv_head * dv;
      for (int64_t j = 0; j < m; ++j) {
        at::BFloat16* row = v_aug_data + j * aug;
        std::copy(v_head + j * V.row_stride, v_head + j * V.row_stride + dv, row);
        std::fill(row + dv, row + aug, at::BFloat16(1.f));
      }
      for (int64_t head = kv_head; head < h; head += hk) {
        const float* lse_row = lse_data + (batch * h + head) * n;
        for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
          const int64_t i1 = std::min(n, i0 + kQueryBlock), rows = i1 - i0;
          const at::BFloat16* q_ptr = Q.at(batch, i0, head);
          const at::BFloat16* g_ptr = dO.at(batch, i0, head);
          const at::BFloat16* o_ptr = O.at(batch, i0, head);
          float* dq_ptr = dq_data + (batch * n + i0) * dq_sn + head * d;
          const at::Tensor q_block = bf16_view(q_ptr, rows, d, Q.row_stride);
          const at::Tensor g_block = bf16_view(g_ptr, rows, dv, dO.row_stride);
          for (int64_t r = 0; r < rows;
               ++r) {  // delta_i = rowsum(dO_i * O_i), appended to dO_i as -(hi + mid + lo)
            float delta = 0;
            for (int64_t c = 0; c < dv; ++c)
              delta += static_cast<float>(g_ptr[r * dO.row_stride + c]) *
                       static_cast<float>(o_ptr[r * O.row_stride + c]);
            at::BFloat16* row = g_aug_data + r * aug;
            std::copy(g_ptr + r * dO.row_stride, g_ptr + r * dO.row_stride + dv, row);
            for (int64_t part = 0; part < 3; ++part) {
              row[dv + part] = static_cast<at::BFloat16>(-delta);
              delta += static_cast<float>(row[dv + part]);
            }
          }
          const at::Tensor g_aug_block = bf16_view(g_aug_data, rows, aug, aug);
          const auto [first_block, key_hi] = rule.key_blocks(i0, i1);
          for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock) {
            const int64_t j1 = std::min(m, j0 + kKeyBlock), cols = j1 - j0;
            if (!block_has_key<float>(mask_row, j0, j1)) continue;
            const at::Tensor k_block = bf16_view(k_head + j0 * K.row_stride, cols, d, K.row_stride);
            bf16_product(product, rows, cols, q_block, k_block.t());
            widen_scaled(product_data, p.data(), rows * cols, scale);
            transform_logits(unscaled, head, mask_row, i0, i1, j0, j1, p.data(), tanh_buf.data());
            bool any_visible = false;
            for (int64_t r = 0; r < rows; ++r) {
              float* pr = p.data() + r * cols;
              at::BFloat16* pl = p_low_data + r * cols;
              const float l = lse_row[i0 + r];
              if (l == -std::numeric_limits<float>::infinity()) {
                std::fill(pr, pr + cols, 0.f);
                std::fill(pl, pl + cols, at::BFloat16(0.f));
                continue;
              }
              any_visible = true;
              exp_shift_and_round(pr, pl, cols, l);
            }
            if (!any_visible) continue;
            const at::Tensor p_block = bf16_view(p_low_data, rows, cols, cols);
            // dV += P^T dO
            bf16_product(product, cols, dv, p_block.t(), g_block);
            add_widened_rows(product_data, cols, dv, dv_head + j0 * dv_sn, dv_sn);
            // dP - delta in one bf16 product: [dO | -delta in three bf16 parts] [V | 1 1 1]^T, accumulated in
            // float32 and rounded once, so the difference keeps its own relative accuracy (a bf16-rounded dP
            // would leave it off by |dP| 2^-9; a row that sees one key must get dS = 0).
            bf16_product(product, rows, cols, g_aug_block,
                         bf16_view(v_aug_data + j0 * aug, cols, aug, aug).t());
            // scale * dS = scale * P * (dP - delta), through the softcap's tanh when on; rounded to bf16.
            scaled_ds_to_bf16(product_data, p.data(), softcap ? tanh_buf.data() : nullptr, scale, ds_low_data,
                              rows * cols);
            const at::Tensor ds_block = bf16_view(ds_low_data, rows, cols, cols);
            // dQ += dS K ; dK += dS^T Q
            bf16_product(product, rows, d, ds_block, k_block);
            add_widened_rows(product_data, rows, d, dq_ptr, dq_sn);
            bf16_product(product, cols, d, ds_block.t(), q_block);
            add_widened_rows(product_data, cols, d, dk_head + j0 * dk_sn, dk_sn);
          }
        }
      }
    }
  });
}

// ---- bfloat16 backward in our own microkernels
// ---------------------------------------------------------------------------------------------------------
// backward_bf16_onednn's tasks (one per batch and kv head) and blocks, each product a bf16_blocks microkernel
// with float32 results: S and dP come out in float32, so dP - delta needs no augmented product; dQ += dS K
// reads K packed as values. dV and dK accumulate transposed (dims x keys, the layout whose product reads P
// and dS by pairs of query rows, written as they are made) in float32 per task, added into dv / dk at its
// end.

/// One query block's operands of the backward, packed by pairs of rows (the value layout): Q and dO.
struct QueryBlockPairs {
  std::vector<uint16_t> q, grad_out;
  QueryBlockPairs(int64_t d, int64_t dv)
      : q(bf16_blocks::packed_values_size(kQueryBlock, d)),
        grad_out(bf16_blocks::packed_values_size(kQueryBlock, dv)) {}
};

// rows of x (ld apart) by pairs of rows, as to_bf16_pairs writes them, into `pairs`.
void rows_to_pairs(const float* x, int64_t rows, int64_t cols, int64_t ld, uint16_t* pairs) {
  for (int64_t u = 0; 2 * u < rows; ++u)
    bf16_blocks::to_bf16_pairs(x + 2 * u * ld, 2 * u + 1 < rows ? x + (2 * u + 1) * ld : nullptr, cols,
                               pairs + u * 2 * ld);
}

// P of one block in place over its logits (rows ld apart) from the saved lse: 0 in rows that saw no key.
// Returns whether any row saw one.
bool recompute_probabilities(float* x, int64_t rows, int64_t cols, int64_t ld, const float* lse,
                             float scale) {
  constexpr float kLog2e = 1.4426950408889634f;
  bool any_visible = false;
  for (int64_t r = 0; r < rows; ++r) {
    if (lse[r] == -std::numeric_limits<float>::infinity()) {
      std::fill(x + r * ld, x + r * ld + cols, 0.f);
      continue;
    }
    any_visible = true;
    bf16_blocks::exp2_in_place(x + r * ld, cols, scale * kLog2e, lse[r] * kLog2e);
  }
  return any_visible;
}

// acc (b, keys, heads, dims) rows of one kv head += its transposed (dims, keys_pad) per-task accumulator.
void add_transposed(const std::vector<float>& transposed, int64_t dims, int64_t keys, int64_t keys_pad,
                    float* acc, int64_t acc_stride) {
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t c = 0; c < dims; ++c) acc[j * acc_stride + c] += transposed[c * keys_pad + j];
}

/// The backward's inputs for every task: the operands, K and V packed, the rule.
struct BackwardInputs {
  const detail::FlashAttentionSizes<>& s;
  const AttentionRule<float>& rule;
  AttentionRule<float> unscaled;  // the transform runs on scaled logits
  RowOperand<at::BFloat16> Q, O, dO;
  at::Tensor keys, keys_as_values, values_as_keys;  // packed per (batch, kv head)
  const float* lse;
  float *dq, *dk, *dv;  // float32 accumulators, contiguous

  BackwardInputs(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                 const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv)
      : s(s),
        rule(rule),
        unscaled(rule),
        Q(q),
        O(out),
        dO(grad_out),
        keys(pack_per_kv_head(s, k, s.head_dim, Packing::Keys)),
        keys_as_values(pack_per_kv_head(s, k, s.head_dim, Packing::Values)),
        values_as_keys(pack_per_kv_head(s, v, s.value_head_dim, Packing::Keys)),
        lse(lse.const_data_ptr<float>()),
        dq(dq.data_ptr<float>()),
        dk(dk.data_ptr<float>()),
        dv(dv.data_ptr<float>()) {
    unscaled.scale = 1.f;
  }
  const uint16_t* packed(const at::Tensor& t, int64_t task) const {
    return bits(t.const_data_ptr<at::BFloat16>()) + task * (t.numel() / (s.batch * s.kv_heads));
  }
};

/// One thread's work of backward_bf16_tiled: its buffers, and the steps of a task (one batch and kv head).
class BackwardWorker {
 public:
  explicit BackwardWorker(const BackwardInputs& in)
      : in_(in),
        d_(in.s.head_dim),
        dv_(in.s.value_head_dim),
        keys_pad_((in.s.keys + 15) / 16 * 16),
        p_(kBlock),
        dp_(kBlock),
        tanh_(in.rule.softcap > 0 ? kBlock : 0),
        delta_(kQueryBlock),
        dk_t_(d_ * keys_pad_),
        dv_t_(dv_ * keys_pad_),
        p_pairs_(kBlock),
        ds_(kBlock),
        ds_pairs_(kBlock),
        pairs_(d_, dv_) {}

  void run(int64_t task) {
    batch_ = task / in_.s.kv_heads;
    kv_head_ = task % in_.s.kv_heads;
    mask_row_ = in_.rule.mask != nullptr ? in_.rule.mask + batch_ * in_.s.keys : nullptr;
    keys_ = in_.packed(in_.keys, task);
    keys_v_ = in_.packed(in_.keys_as_values, task);
    values_k_ = in_.packed(in_.values_as_keys, task);
    std::fill(dk_t_.begin(), dk_t_.end(), 0.f);
    std::fill(dv_t_.begin(), dv_t_.end(), 0.f);
    for (int64_t head = kv_head_; head < in_.s.heads; head += in_.s.kv_heads)
      for (int64_t i0 = 0; i0 < in_.s.queries; i0 += kQueryBlock) query_block(head, i0);
    const int64_t m = in_.s.keys, hk = in_.s.kv_heads;
    add_transposed(dk_t_, d_, m, keys_pad_, in_.dk + (batch_ * m * hk + kv_head_) * d_, hk * d_);
    add_transposed(dv_t_, dv_, m, keys_pad_, in_.dv + (batch_ * m * hk + kv_head_) * dv_, hk * dv_);
  }

 private:
  static constexpr int64_t kBlock = kQueryBlock * kKeyBlock;

  // delta_i = rowsum(dO_i * O_i), Q and dO by pairs of rows, then every key block the rows see.
  void query_block(int64_t head, int64_t i0) {
    head_ = head;
    i0_ = i0;
    i1_ = std::min(in_.s.queries, i0 + kQueryBlock);
    rows_ = i1_ - i0_;
    q_ = in_.Q.at(batch_, i0, head);
    g_ = in_.dO.at(batch_, i0, head);
    const at::BFloat16* o = in_.O.at(batch_, i0, head);
    for (int64_t r = 0; r < rows_; ++r) {
      float acc = 0;
      for (int64_t c = 0; c < dv_; ++c)
        acc += static_cast<float>(g_[r * in_.dO.row_stride + c]) *
               static_cast<float>(o[r * in_.O.row_stride + c]);
      delta_[r] = acc;
    }
    bf16_blocks::pack_values(bits(q_), in_.Q.row_stride, rows_, d_, pairs_.q.data());
    bf16_blocks::pack_values(bits(g_), in_.dO.row_stride, rows_, dv_, pairs_.grad_out.data());
    const auto [first_block, key_hi] = in_.rule.key_blocks(i0_, i1_);
    for (int64_t j0 = first_block; j0 < key_hi; j0 += kKeyBlock)
      key_block(j0, std::min(in_.s.keys, j0 + kKeyBlock));
  }

  // P recomputed from lse; dV^T += dO^T P; scale * dS = scale * P * (dO V^T - delta) (through the soft-cap's
  // tanh when on); dQ += dS K; dK^T += Q^T dS.
  void key_block(int64_t j0, int64_t j1) {
    if (!block_has_key<float>(mask_row_, j0, j1)) return;
    const int64_t cols = j1 - j0, ld = (cols + 15) / 16 * 16;
    const float scale = in_.rule.scale;
    bf16_blocks::scores(bits(q_), in_.Q.row_stride, rows_, d_, keys_ + j0 * d_, cols, p_.data(), ld);
    float logit_scale = scale;
    if (!plain_block(in_.rule, mask_row_, i0_, i1_, j0, j1)) {
      for (int64_t r = 0; r < rows_; ++r) bf16_blocks::scale_in_place(p_.data() + r * ld, cols, scale);
      transform_logits(in_.unscaled, head_, mask_row_, i0_, i1_, j0, j1, p_.data(), tanh_.data(), ld);
      logit_scale = 1.f;
    }
    const float* lse = in_.lse + (batch_ * in_.s.heads + head_) * in_.s.queries + i0_;
    if (!recompute_probabilities(p_.data(), rows_, cols, ld, lse, logit_scale)) return;
    rows_to_pairs(p_.data(), rows_, cols, ld, p_pairs_.data());
    bf16_blocks::accumulate_transposed(pairs_.grad_out.data(), dv_, rows_, p_pairs_.data(), ld, cols,
                                       dv_t_.data() + j0, keys_pad_);
    bf16_blocks::scores(bits(g_), in_.dO.row_stride, rows_, dv_, values_k_ + j0 * dv_, cols, dp_.data(), ld);
    for (int64_t r = 0; r < rows_; ++r) {
      bf16_blocks::softmax_grad(p_.data() + r * ld, dp_.data() + r * ld, cols, delta_[r], scale,
                                tanh_.empty() ? nullptr : tanh_.data() + r * ld);
      bf16_blocks::to_bf16(dp_.data() + r * ld, cols, ds_.data() + r * ld);
      if (cols % 2 == 1) ds_[r * ld + cols] = 0;  // the pad of the last key pair
    }
    const int64_t dq_stride = in_.s.heads * d_;
    bf16_blocks::accumulate_pv(ds_.data(), ld, rows_, cols, keys_v_ + j0 * d_, d_,
                               in_.dq + (batch_ * in_.s.queries + i0_) * dq_stride + head_ * d_, dq_stride);
    rows_to_pairs(dp_.data(), rows_, cols, ld, ds_pairs_.data());
    bf16_blocks::accumulate_transposed(pairs_.q.data(), d_, rows_, ds_pairs_.data(), ld, cols,
                                       dk_t_.data() + j0, keys_pad_);
  }

  const BackwardInputs& in_;
  const int64_t d_, dv_, keys_pad_;
  std::vector<float> p_, dp_, tanh_, delta_;
  std::vector<float> dk_t_, dv_t_;  // dK^T and dV^T of the task's kv head: (dims, keys_pad)
  std::vector<uint16_t> p_pairs_, ds_, ds_pairs_;
  QueryBlockPairs pairs_;
  // The task and the query block being run.
  int64_t batch_ = 0, kv_head_ = 0, head_ = 0, i0_ = 0, i1_ = 0, rows_ = 0;
  const bool* mask_row_ = nullptr;
  const uint16_t *keys_ = nullptr, *keys_v_ = nullptr, *values_k_ = nullptr;
  const at::BFloat16 *q_ = nullptr, *g_ = nullptr;
};

void backward_bf16_tiled(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                         const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                         at::Tensor& dk, at::Tensor& dv) {
  const BackwardInputs inputs(s, rule, grad_out, q, k, v, out, lse, dq, dk, dv);
  at::parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    BackwardWorker worker(inputs);
    for (int64_t task = begin; task < end; ++task) worker.run(task);
  });
}

void backward_bf16_impl(const detail::FlashAttentionSizes<>& s, const AttentionRule<float>& rule,
                        const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                        at::Tensor& dk, at::Tensor& dv_t) {
  if (bf16_blocks::fits_backward(s.head_dim, s.value_head_dim))
    backward_bf16_tiled(s, rule, grad_out, q, k, v, out, lse, dq, dk, dv_t);
  else
    backward_bf16_onednn(s, rule, grad_out, q, k, v, out, lse, dq, dk, dv_t);
}

// ---- entry points
// ------------------------------------------------------------------------------------------------

void check_cpu_inputs(const at::Tensor& q) {
  // This file is compiled for AVX2 + FMA (see CMakeLists.txt): refuse, rather than crash, on an older CPU.
  static const bool cpu_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  TORCH_CHECK(cpu_ok, "flash_attention (CPU): this build needs a CPU with AVX2 and FMA");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "flash_attention (CPU): expected q, k, v of dtype float64, float32, bfloat16 or float16, got ",
              dtype);
}

bool is_low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

/// How a call runs on the CPU kernel: bf16 products on the CPU's bf16 units where the dtype, the CPU and the
/// backend setting allow, else in float32 (low precision widened to it). float32 / float64 have no choice to
/// make (and the widened call does not make it again).
bool runs_on_bf16_units(const at::Tensor& t, const char* site) {
  if (!is_low_precision(t)) {
    if (!backend_enabled(Backend::CpuFlash))
      choose_backend(site, {{Backend::CpuFlash, {}}});  // throws, saying why
    return false;
  }
  std::vector<std::string> bf16_reasons;
  if (t.scalar_type() != at::kBFloat16) bf16_reasons.emplace_back("float16 has no CPU units here");
  static const bool cpu_has_bf16 = __builtin_cpu_supports("avx512bf16");
  if (!cpu_has_bf16) bf16_reasons.emplace_back("this CPU has no AVX512-BF16 units");
  if (!backend_enabled(Backend::CpuFlash))
    bf16_reasons.emplace_back("it runs inside cpu_flash, which is disabled");
  return choose_backend(site, {{Backend::CpuBf16Matmul, std::move(bf16_reasons)}, {Backend::CpuFlash, {}}}) ==
         Backend::CpuBf16Matmul;
}

at::Tensor contiguous_mask(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->contiguous() : at::Tensor();
}

// ALiBi slopes in the accumulation type: float64 for float64 inputs (exact), float32 otherwise.
at::Tensor accumulation_slopes(const std::optional<at::Tensor>& slopes, at::ScalarType input) {
  return slopes.has_value() ? slopes->to(detail::lse_dtype(input)).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> flash_attention_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::optional<at::Tensor>& key_padding_mask, bool causal, std::optional<double> scale,
    const std::optional<at::Tensor>& alibi_slopes, int64_t window_left, int64_t window_right,
    double softcap) {
  const auto sizes = detail::check_flash_attention_args(q_in, k_in, v_in, key_padding_mask, scale,
                                                        alibi_slopes, window_left, window_right, softcap);
  check_cpu_inputs(q_in);
  const bool bf16_units = runs_on_bf16_units(q_in, "flash_attention (CPU forward)");
  if (is_low_precision(q_in) && !bf16_units) {
    // Widened to float32; the float32 kernel's lse is already the low-precision call's lse (float32).
    auto [out, lse] = flash_attention_forward_kernel(q_in.to(at::kFloat), k_in.to(at::kFloat),
                                                     v_in.to(at::kFloat), key_padding_mask, causal, scale,
                                                     alibi_slopes, window_left, window_right, softcap);
    return {out.to(q_in.scalar_type()), lse};
  }
  const at::Tensor q = with_unit_inner_stride(q_in), k = with_unit_inner_stride(k_in),
                   v = with_unit_inner_stride(v_in);
  const at::Tensor mask = contiguous_mask(key_padding_mask);
  const at::Tensor slopes = accumulation_slopes(alibi_slopes, q.scalar_type());
  auto out = at::empty({sizes.batch, sizes.queries, sizes.heads, sizes.value_head_dim}, q.options());
  auto lse = at::empty({sizes.batch, sizes.heads, sizes.queries},
                       q.options().dtype(detail::lse_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse.fill_(-std::numeric_limits<double>::infinity())};
  if (q.scalar_type() == at::kBFloat16) {
    const auto rule = make_rule<float>(sizes, causal, window_left, window_right, softcap, slopes, mask);
    forward_bf16_impl(sizes, rule, q, k, v, out, lse);
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "flash_attention_forward_cpu", [&] {
    const auto rule = make_rule<scalar_t>(sizes, causal, window_left, window_right, softcap, slopes, mask);
    forward_impl<scalar_t>(sizes, rule, q, k, v, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attention_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, std::optional<double> scale, const std::optional<at::Tensor>& alibi_slopes,
    int64_t window_left, int64_t window_right, double softcap) {
  const auto sizes = detail::check_flash_attention_args(q_in, k_in, v_in, key_padding_mask, scale,
                                                        alibi_slopes, window_left, window_right, softcap);
  check_cpu_inputs(q_in);
  detail::check_flash_attention_backward_args(grad_out_in, out_in, lse_in, q_in, sizes);
  const bool bf16_units = runs_on_bf16_units(q_in, "flash_attention (CPU backward)");
  if (is_low_precision(q_in) && !bf16_units) {
    // Widened to float32: the gradients accumulate over every query / key block in float32 before one
    // rounding.
    const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [dq, dk, dv] = flash_attention_backward_kernel(f32(grad_out_in), f32(q_in), f32(k_in), f32(v_in),
                                                        f32(out_in), lse_in, key_padding_mask, causal, scale,
                                                        alibi_slopes, window_left, window_right, softcap);
    const auto dtype = q_in.scalar_type();
    return {dq.to(dtype), dk.to(dtype), dv.to(dtype)};
  }
  const at::Tensor q = with_unit_inner_stride(q_in), k = with_unit_inner_stride(k_in),
                   v = with_unit_inner_stride(v_in);
  const at::Tensor grad_out = with_unit_inner_stride(grad_out_in), out = with_unit_inner_stride(out_in);
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor mask = contiguous_mask(key_padding_mask);
  const at::Tensor slopes = accumulation_slopes(alibi_slopes, q.scalar_type());
  // bf16 accumulates in float32 buffers, rounded once at the end.
  const auto accumulation = q.options().dtype(detail::lse_dtype(q.scalar_type()));
  auto dq = at::zeros({sizes.batch, sizes.queries, sizes.heads, sizes.head_dim}, accumulation);
  auto dk = at::zeros({sizes.batch, sizes.keys, sizes.kv_heads, sizes.head_dim}, accumulation);
  auto dv = at::zeros({sizes.batch, sizes.keys, sizes.kv_heads, sizes.value_head_dim}, accumulation);
  if (q.scalar_type() == at::kBFloat16) {
    if (dq.numel() > 0 && dk.numel() > 0) {
      const auto rule = make_rule<float>(sizes, causal, window_left, window_right, softcap, slopes, mask);
      backward_bf16_impl(sizes, rule, grad_out, q, k, v, out, lse, dq, dk, dv);
    }
    return {dq.to(at::kBFloat16), dk.to(at::kBFloat16), dv.to(at::kBFloat16)};
  }
  if (dq.numel() == 0 || dk.numel() == 0) return {dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "flash_attention_backward_cpu", [&] {
    const auto rule = make_rule<scalar_t>(sizes, causal, window_left, window_right, softcap, slopes, mask);
    backward_impl<scalar_t>(sizes, rule, grad_out, q, k, v, out, lse, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(xtc, CPU, m) {
  m.impl("flash_attention", &flash_attention_forward_kernel);
  m.impl("flash_attention_backward", &flash_attention_backward_kernel);
}

}  // namespace xtc::ops
