// xtc::ops::flash_attention from C++: forward and backward against a dense float64 reference, autograd
// through the C++ Function, and the argument checks.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <xtc/ops/flash_attention.h>

namespace {

struct Reference {
  torch::Tensor out, lse;
};

// Dense float64 attention with the op's semantics (query head i reads kv head i % hk, right-aligned
// causality).
Reference reference(torch::Tensor q, torch::Tensor k, torch::Tensor v, const torch::Tensor& mask,
                    bool causal) {
  q = q.to(torch::kDouble);
  k = k.to(torch::kDouble);
  v = v.to(torch::kDouble);
  const int64_t n = q.size(1), m = k.size(1), h = q.size(2), hk = k.size(2);
  const auto kv_index = torch::arange(h).remainder(hk);
  const auto qh = q.transpose(1, 2), kh = k.index_select(2, kv_index).transpose(1, 2),
             vh = v.index_select(2, kv_index).transpose(1, 2);
  auto s = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  auto keep = torch::ones({1, 1, n, m}, torch::kBool);
  if (causal) keep = keep & (torch::arange(m).view({1, m}) <= torch::arange(n).view({n, 1}) + (m - n));
  if (mask.defined()) keep = keep & mask.view({mask.size(0), 1, 1, m});
  s = s.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  const auto lse = torch::logsumexp(s, -1);
  const auto p = torch::nan_to_num(torch::exp(s - lse.unsqueeze(-1)), 0.0);
  return {torch::matmul(p, vh).transpose(1, 2), lse};
}

struct Shape {
  int64_t b, n, m, h, hk, d;
  bool causal, masked;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "b=" << s.b << " n=" << s.n << " m=" << s.m << " h=" << s.h << " hk=" << s.hk << " d=" << s.d
      << " causal=" << s.causal << " masked=" << s.masked;
}

class FlashAttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(FlashAttentionTest, MatchesFloat64ReferenceForwardAndBackward) {
  const auto s = GetParam();
  torch::manual_seed(s.n * 1000 + s.m);
  auto q = torch::randn({s.b, s.n, s.h, s.d}).requires_grad_();
  auto k = torch::randn({s.b, s.m, s.hk, s.d}).requires_grad_();
  auto v = torch::randn({s.b, s.m, s.hk, s.d}).requires_grad_();
  torch::Tensor mask;
  if (s.masked) {
    mask = torch::rand({s.b, s.m}) > 0.3;
    mask.index_put_({s.b - 1}, false);  // a batch row with every key padded
  }
  auto [out, lse] =
      xtc::ops::flash_attention(q, k, v, mask.defined() ? std::optional(mask) : std::nullopt, s.causal);
  const auto ref = reference(q, k, v, mask, s.causal);
  EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), ref.out, 1e-4, 2e-5));

  const auto grad = torch::randn_like(out);
  const auto got = torch::autograd::grad({out}, {q, k, v}, {grad});
  const auto expected = torch::autograd::grad({ref.out}, {q, k, v}, {grad.to(torch::kDouble)});
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::isfinite(got[i]).all().item<bool>());
    EXPECT_TRUE(torch::allclose(got[i].to(torch::kDouble), expected[i].to(torch::kDouble), 1e-3, 1e-4))
        << "gradient " << i << " max diff " << (got[i] - expected[i]).abs().max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, FlashAttentionTest,
                         ::testing::Values(Shape{1, 1, 7, 1, 1, 16, false, false},
                                           Shape{3, 97, 130, 8, 2, 40, false, true},
                                           Shape{3, 97, 130, 8, 2, 40, true, true},
                                           Shape{2, 256, 200, 2, 1, 64, true, false},
                                           Shape{2, 7, 7, 4, 4, 128, true, true}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const auto& s = info.param;
                           return "b" + std::to_string(s.b) + "_n" + std::to_string(s.n) + "_m" +
                                  std::to_string(s.m) + "_h" + std::to_string(s.h) + "_hk" +
                                  std::to_string(s.hk) + "_d" + std::to_string(s.d) +
                                  (s.causal ? "_causal" : "") + (s.masked ? "_masked" : "");
                         });

TEST(FlashAttention, FullyMaskedRowsAreZero) {
  torch::manual_seed(0);
  const auto q = torch::randn({2, 5, 2, 16}), k = torch::randn({2, 9, 2, 16}),
             v = torch::randn({2, 9, 2, 16});
  auto mask = torch::ones({2, 9}, torch::kBool);
  mask.index_put_({1}, false);
  auto [out, lse] = xtc::ops::flash_attention(q, k, v, mask);
  EXPECT_TRUE(torch::equal(out[1], torch::zeros_like(out[1])));
  EXPECT_TRUE(torch::isinf(lse[1]).all().item<bool>());
  EXPECT_FALSE(torch::isnan(out).any().item<bool>());
}

TEST(FlashAttention, BadArgumentsThrowNamingThem) {
  const auto q = torch::randn({2, 5, 4, 16}), k = torch::randn({2, 7, 4, 16}),
             v = torch::randn({2, 7, 4, 16});
  try {
    xtc::ops::flash_attention(q, k, v, torch::ones({2, 6}, torch::kBool));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("key_padding_mask of shape (2, 7)"),
              std::string::npos)
        << e.what_without_backtrace();
  }
  EXPECT_THROW(xtc::ops::flash_attention(q, k.narrow(2, 0, 3), v.narrow(2, 0, 3)), c10::Error);
  EXPECT_THROW(xtc::ops::flash_attention(q.to(torch::kInt), k.to(torch::kInt), v.to(torch::kInt)),
               c10::Error);
}

}  // namespace
