// Residual variants and branch wrappers: Residual, GRUGating, LayerScale, Scale, as x-transformers.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/rnn.h>
#include <torch/nn/pimpl.h>

namespace xtc::nn {

/// branch + residual, the residual optionally scaled by a learned per-feature `residual_scale` (NormFormer).
class ResidualImpl : public torch::nn::Cloneable<ResidualImpl> {
 public:
  ResidualImpl(int64_t dim, bool scale_residual = false, double scale_residual_constant = 1.0);
  void reset() override;
  at::Tensor forward(const at::Tensor& branch, const at::Tensor& residual);

  int64_t dim;
  bool scale_residual;
  double scale_residual_constant;
  at::Tensor residual_scale;
};
TORCH_MODULE(Residual);

/// GRUCell(branch, residual) instead of addition (Parisotto et al. 2019, arXiv 1910.06764).
class GRUGatingImpl : public torch::nn::Cloneable<GRUGatingImpl> {
 public:
  GRUGatingImpl(int64_t dim, bool scale_residual = false);
  void reset() override;
  at::Tensor forward(const at::Tensor& branch, const at::Tensor& residual);

  int64_t dim;
  bool scale_residual;
  at::Tensor residual_scale;
  torch::nn::GRUCell gru{nullptr};
};
TORCH_MODULE(GRUGating);

/// Holds a branch as `fn` with a learned per-feature output scale `gamma` (CaiT's LayerScale); with
/// `unit_offset` gamma is stored as (scale - 1). AttentionLayers applies it.
class LayerScaleImpl : public torch::nn::Cloneable<LayerScaleImpl> {
 public:
  LayerScaleImpl(std::shared_ptr<torch::nn::Module> fn, int64_t dim, double init_value, bool unit_offset);
  void reset() override;

  std::shared_ptr<torch::nn::Module> fn;
  int64_t dim;
  double init_value;
  bool unit_offset;
  at::Tensor gamma;
};
TORCH_MODULE(LayerScale);

/// Holds a branch as `fn` whose output AttentionLayers multiplies by a constant (macaron's 0.5).
class ScaleImpl : public torch::nn::Cloneable<ScaleImpl> {
 public:
  ScaleImpl(double value, std::shared_ptr<torch::nn::Module> fn);
  void reset() override;

  double value;
  std::shared_ptr<torch::nn::Module> fn;
};
TORCH_MODULE(Scale);

/// Holds a branch as `fn` whose input AttentionLayers shifts along the sequence, segment by segment
/// (x-transformers' ShiftTokens).
class ShiftTokensImpl : public torch::nn::Cloneable<ShiftTokensImpl> {
 public:
  ShiftTokensImpl(int64_t shift, std::shared_ptr<torch::nn::Module> fn);
  void reset() override;

  int64_t shift;
  std::shared_ptr<torch::nn::Module> fn;
};
TORCH_MODULE(ShiftTokens);

}  // namespace xtc::nn
