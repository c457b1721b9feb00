// Norm modules: LayerNorm, RMSNorm, ScaleNorm, SimpleRMSNorm, DynamicTanh, Derf, the adaptive norms and
// MultiheadRMSNorm, as x-transformers.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/modules/torch_layers.h>
#include <xtc/nn/options/attention_layers.h>

namespace xtc::nn {

/// x-transformers' LayerNorm (Ba et al. 2016, arXiv 1607.06450): no bias; gain `gamma`, stored as (gain - 1)
/// when `unit_offset` (then initialised to 0).
class LayerNormImpl : public torch::nn::Cloneable<LayerNormImpl> {
 public:
  explicit LayerNormImpl(int64_t dim, bool unit_offset = true);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  bool unit_offset;
  at::Tensor gamma;
};
TORCH_MODULE(LayerNorm);

/// RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467) as x-transformers: l2-normalise, times sqrt(dim), times
/// gain `g` of shape (dim); ScaleNorm (Nguyen & Salazar 2019, arXiv 1910.05895) is the same with a (1) gain.
class RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  RMSNormImpl(int64_t dim, bool unit_offset = true, bool scalar_gain = false);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  bool unit_offset, scalar_gain;
  at::Tensor g;
};
TORCH_MODULE(RMSNorm);

/// ScaleNorm: RMSNorm with a single learned gain.
inline RMSNorm ScaleNorm(int64_t dim, bool unit_offset = true) { return RMSNorm(dim, unit_offset, true); }

/// RMSNorm without a learned gain (Qin et al. 2023, arXiv 2307.14995).
class SimpleRMSNormImpl : public torch::nn::Cloneable<SimpleRMSNormImpl> {
 public:
  explicit SimpleRMSNormImpl(int64_t dim);
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
};
TORCH_MODULE(SimpleRMSNorm);

/// Dynamic tanh, a norm-free replacement (Zhu et al. 2025, arXiv 2503.10622): gamma * tanh(alpha * x) + beta,
/// with a learned scalar alpha; x-transformers' DynamicTanh, its offsets included under unit_offset.
class DynamicTanhImpl : public torch::nn::Cloneable<DynamicTanhImpl> {
 public:
  DynamicTanhImpl(int64_t dim, double init_alpha = 1.0, bool unit_offset = true);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  double init_alpha;
  bool unit_offset;
  at::Tensor pre_tanh_scale, gamma, beta;
};
TORCH_MODULE(DynamicTanh);

/// Derf, a norm-free replacement (arXiv 2512.10938): gamma * erf(alpha * x + s) + beta, learned scalars alpha
/// (0.5) and s (0); x-transformers' Derf, its offsets (1) stored out of alpha and gamma under unit_offset.
class DerfImpl : public torch::nn::Cloneable<DerfImpl> {
 public:
  explicit DerfImpl(int64_t dim, bool unit_offset = true);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t dim;
  bool unit_offset;
  at::Tensor alpha, s, gamma, beta;
};
TORCH_MODULE(Derf);

/// x-transformers' AdaptiveLayerNorm / AdaptiveRMSNorm (DiT's adaLN, Peebles & Xie 2022, arXiv 2212.09748):
/// the norm without a gain of its own, times (1 + to_gamma(condition)); to_gamma is zero-initialised, so a
/// fresh layer is the plain norm.
class AdaptiveNormImpl : public torch::nn::Cloneable<AdaptiveNormImpl> {
 public:
  AdaptiveNormImpl(NormKind kind, int64_t dim, int64_t dim_condition);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x, const at::Tensor& condition);

  NormKind kind;  // AdaptiveLayerNorm or AdaptiveRMSNorm
  int64_t dim, dim_condition;
  Linear to_gamma{nullptr};
};
TORCH_MODULE(AdaptiveNorm);

inline AdaptiveNorm AdaptiveLayerNorm(int64_t dim, int64_t dim_condition) {
  return AdaptiveNorm(NormKind::AdaptiveLayerNorm, dim, dim_condition);
}
inline AdaptiveNorm AdaptiveRMSNorm(int64_t dim, int64_t dim_condition) {
  return AdaptiveNorm(NormKind::AdaptiveRMSNorm, dim, dim_condition);
}

/// x-transformers' MultiheadRMSNorm (qk_rmsnorm, value_rmsnorm): SimpleRMSNorm of each head times (gamma +
/// 1), gamma (heads, 1, dim_head) zero-initialised.
class MultiheadRMSNormImpl : public torch::nn::Cloneable<MultiheadRMSNormImpl> {
 public:
  MultiheadRMSNormImpl(int64_t heads, int64_t dim_head);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  int64_t heads, dim_head;
  at::Tensor gamma;
};
TORCH_MODULE(MultiheadRMSNorm);

}  // namespace xtc::nn
