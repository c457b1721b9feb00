// The bf16 attention kernel's AVX512-BF16 microkernels and row passes (ops/cpu/bf16_blocks.h) against float64
// references: odd sizes, strided rows, padded tails. Skipped on CPUs without AVX512-BF16, where the kernel
// never calls them.
#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "ops/cpu/bf16_blocks.h"

namespace {

namespace blocks = xtc::ops::cpu::bf16_blocks;

#define SKIP_WITHOUT_BF16_UNITS() \
  if (!__builtin_cpu_supports("avx512bf16")) GTEST_SKIP() << "this CPU has no AVX512-BF16"

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

double value(uint16_t bits) { return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits())); }

uint16_t bf16_bits(float x) { return c10::BFloat16(x).x; }

std::vector<uint16_t> random_bf16(int64_t n, std::mt19937& gen) {
  std::normal_distribution<float> normal;
  std::vector<uint16_t> out(n);
  for (auto& b : out) b = bf16_bits(normal(gen));
  return out;
}

// The float32-accumulation bound of a dot product of `terms` products with these magnitudes.
double dot_tolerance(double magnitude_sum, int64_t terms) {
  return 4 * terms * std::numeric_limits<float>::epsilon() * magnitude_sum + 1e-30;
}

TEST(Bf16Blocks, ScoresMatchFloat64) {
  SKIP_WITHOUT_BF16_UNITS();
  std::mt19937 gen(1);
  for (const auto [rows, cols, d] : {std::tuple{7, 37, 64}, {13, 512, 16}, {1, 3, 2}, {9, 100, 128}}) {
    const int64_t q_stride = d + 5, k_stride = d + 3, ld = round_up(cols, 16);  // odd strides too
    const auto q = random_bf16(rows * q_stride, gen), k = random_bf16(cols * k_stride, gen);
    std::vector<uint16_t> packed(blocks::packed_keys_size(cols, d));
    blocks::pack_keys(k.data(), k_stride, cols, d, packed.data());
    std::vector<float> s(rows * ld, -1.f);
    blocks::scores(q.data(), q_stride, rows, d, packed.data(), cols, s.data(), ld);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        double expected = 0, magnitude = 0;
        for (int64_t t = 0; t < d; ++t) {
          const double term = value(q[r * q_stride + t]) * value(k[c * k_stride + t]);
          expected += term;
          magnitude += std::abs(term);
        }
        ASSERT_NEAR(s[r * ld + c], expected, dot_tolerance(magnitude, d)) << rows << "x" << cols << "x" << d;
      }
      for (int64_t c = cols; c < ld; ++c) ASSERT_EQ(s[r * ld + c], 0.f);  // the padded keys
    }
  }
}

TEST(Bf16Blocks, AccumulatePvMatchesFloat64) {
  SKIP_WITHOUT_BF16_UNITS();
  std::mt19937 gen(2);
  std::normal_distribution<float> normal;
  for (const auto [rows, cols, dv] : {std::tuple{7, 37, 64}, {5, 512, 16}, {1, 1, 48}, {11, 100, 128}}) {
    const int64_t ld_p = round_up(cols, 2) + 4, v_stride = dv + 16, ld_acc = dv + 3;
    auto p = random_bf16(rows * ld_p, gen);
    for (int64_t r = 0; r < rows; ++r)
      if (cols % 2 == 1) p[r * ld_p + cols] = 0;  // the pad of the last key pair
    const auto v = random_bf16(cols * v_stride, gen);
    std::vector<uint16_t> packed(blocks::packed_values_size(cols, dv));
    blocks::pack_values(v.data(), v_stride, cols, dv, packed.data());
    std::vector<float> acc(rows * ld_acc);
    for (auto& a : acc) a = normal(gen);
    const auto before = acc;
    blocks::accumulate_pv(p.data(), ld_p, rows, cols, packed.data(), dv, acc.data(), ld_acc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < dv; ++c) {
        double expected = before[r * ld_acc + c], magnitude = std::abs(expected);
        for (int64_t j = 0; j < cols; ++j) {
          const double term = value(p[r * ld_p + j]) * value(v[j * v_stride + c]);
          expected += term;
          magnitude += std::abs(term);
        }
        ASSERT_NEAR(acc[r * ld_acc + c], expected, dot_tolerance(magnitude, cols + 1));
      }
  }
}

TEST(Bf16Blocks, AccumulateTransposedMatchesFloat64) {
  SKIP_WITHOUT_BF16_UNITS();
  std::mt19937 gen(3);
  std::normal_distribution<float> normal;
  for (const auto [rows, dims, cols] : {std::tuple{7, 64, 37}, {256, 16, 512}, {1, 32, 5}}) {
    const int64_t x_stride = dims + 8, ld = round_up(cols, 16), ld_acc = ld + 16;
    const auto x = random_bf16(rows * x_stride, gen);
    std::vector<float> y(rows * ld);
    for (auto& e : y) e = normal(gen);
    std::vector<uint16_t> x_pairs(blocks::packed_values_size(rows, dims)), y_pairs(round_up(rows, 2) * ld);
    blocks::pack_values(x.data(), x_stride, rows, dims, x_pairs.data());
    for (int64_t u = 0; 2 * u < rows; ++u)
      blocks::to_bf16_pairs(y.data() + 2 * u * ld, 2 * u + 1 < rows ? y.data() + (2 * u + 1) * ld : nullptr,
                            cols, y_pairs.data() + u * 2 * ld);
    std::vector<float> acc(dims * ld_acc, 0.5f);
    blocks::accumulate_transposed(x_pairs.data(), dims, rows, y_pairs.data(), ld, cols, acc.data(), ld_acc);
    for (int64_t i = 0; i < dims; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        double expected = 0.5, magnitude = 0.5;
        for (int64_t r = 0; r < rows; ++r) {
          const double term = value(x[r * x_stride + i]) * value(bf16_bits(y[r * ld + j]));
          expected += term;
          magnitude += std::abs(term);
        }
        ASSERT_NEAR(acc[i * ld_acc + j], expected, dot_tolerance(magnitude, rows + 1)) << rows << " " << dims;
      }
  }
}

TEST(Bf16Blocks, Exp2AndRowPassesMatchFloat64) {
  SKIP_WITHOUT_BF16_UNITS();
  std::mt19937 gen(4);
  std::uniform_real_distribution<float> uniform(-140.f, 0.f);
  const int64_t n = 1000 + 13;
  std::vector<float> x(n);
  for (auto& e : x) e = uniform(gen);
  x[5] = -std::numeric_limits<float>::infinity();
  x[6] = 0.f;
  const float mul = 0.37f, shift = -1.25f;  // 2^(x * mul - shift)
  std::vector<uint16_t> p(n + 7, 0xffff);
  const float sum = blocks::exp2_to_bf16(x.data(), p.data(), n, mul, shift);
  std::vector<float> in_place = x;
  blocks::exp2_in_place(in_place.data(), n, mul, shift);
  double expected_sum = 0;
  for (int64_t c = 0; c < n; ++c) {
    // The kernel's exponent is one fused multiply-add, rounded once to float32.
    const double exponent =
        static_cast<float>(std::fma(static_cast<double>(x[c]), mul, -static_cast<double>(shift)));
    const double expected = exponent < -126 ? 0.0 : std::exp2(exponent);
    expected_sum += expected;
    // The polynomial's relative error, 1.2e-7, and its float32 evaluation's roundings.
    ASSERT_NEAR(in_place[c], expected, 4e-7 * expected) << x[c];
    ASSERT_NEAR(value(p[c]), expected, expected / 256 + 1e-38) << x[c];  // bf16's rounding
  }
  EXPECT_NEAR(sum, expected_sum, 1e-6 * expected_sum);
  EXPECT_EQ(p[n], 0xffff);  // nothing written past n
  EXPECT_EQ(blocks::row_max(x.data(), n), 0.f);
  std::vector<float> scaled = x;
  blocks::scale_in_place(scaled.data(), n, 0.5f);
  for (int64_t c = 0; c < n; ++c) ASSERT_EQ(scaled[c], x[c] * 0.5f);
}

TEST(Bf16Blocks, SoftmaxGradientMatchesFloat64) {
  SKIP_WITHOUT_BF16_UNITS();
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  const int64_t n = 77;
  std::vector<float> p(n), dp(n), t(n);
  for (int64_t c = 0; c < n; ++c) {
    p[c] = std::abs(normal(gen));
    dp[c] = normal(gen);
    t[c] = std::tanh(normal(gen));
  }
  for (const bool softcap : {false, true}) {
    std::vector<float> ds = dp;
    blocks::softmax_grad(p.data(), ds.data(), n, 0.3f, 0.125f, softcap ? t.data() : nullptr);
    for (int64_t c = 0; c < n; ++c) {
      double expected = 0.125 * p[c] * (static_cast<double>(dp[c]) - 0.3);
      if (softcap) expected *= 1 - static_cast<double>(t[c]) * t[c];
      ASSERT_NEAR(ds[c], expected, 1e-6 * (std::abs(expected) + 1e-3));
    }
  }
}

}  // namespace
