// Residual variants and branch wrappers: Residual, GRUGating, OrthogonalResidualUpdate,
// MVSplitResidualUpdate, HyperConnection, GatedMultiResidual, LayerScale, AdaptiveLayerScale, Scale,
// ShiftTokens, and the U-Net skips' ConcatCombine, as x-transformers.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/nn/modules/torch_layers.h>

namespace xtc::nn {

/// branch + residual, the residual optionally scaled by a learned per-feature `residual_scale` (NormFormer).
class ResidualImpl : public torch::nn::Cloneable<ResidualImpl> {
 public:
  ResidualImpl(int64_t dim, bool scale_residual = false, double scale_residual_constant = 1.0);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
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
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& branch, const at::Tensor& residual);

  int64_t dim;
  bool scale_residual;
  at::Tensor residual_scale;
  GRUCell gru{nullptr};
};
TORCH_MODULE(GRUGating);

/// residual + the branch's part orthogonal to the residual, each sequence one vector (Oh et al. 2025, arXiv
/// 2505.11881); the residual optionally scaled by `residual_scale` first.
class OrthogonalResidualUpdateImpl : public torch::nn::Cloneable<OrthogonalResidualUpdateImpl> {
 public:
  OrthogonalResidualUpdateImpl(int64_t dim, bool scale_residual = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& branch, const at::Tensor& residual);

  int64_t dim;
  bool scale_residual;
  at::Tensor residual_scale;
};
TORCH_MODULE(OrthogonalResidualUpdate);

/// The mean-variance split update (arXiv 2605.06169): residual + (x - mean x) * beta + (mean x - mean
/// residual) * alpha, the means over the kept tokens; alpha and beta learned vectors, or with `learned`
/// zero-initialised linears `to_alpha` / `to_beta` of mean x (biases at the initial values).
class MVSplitResidualUpdateImpl : public torch::nn::Cloneable<MVSplitResidualUpdateImpl> {
 public:
  MVSplitResidualUpdateImpl(int64_t dim, double init_alpha = 0.0, double init_beta = 0.03,
                            bool learned = false);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// mask (b, n) bool, True = keep; undefined = every token.
  at::Tensor forward(const at::Tensor& branch, const at::Tensor& residual, const at::Tensor& mask = {});

  int64_t dim;
  double init_alpha, init_beta;
  bool learned;
  at::Tensor alpha, beta;
  Linear to_alpha{nullptr}, to_beta{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(at::Tensor())})
};
TORCH_MODULE(MVSplitResidualUpdate);

/// Hyper-connections' residual update of layer `layer_index` (x-transformers' HyperConnection): reads the
/// branch input(s) from the streams and writes its output back to them (functional::hyper_connection_read).
/// Statics start at the identity mix with the layer's own stream as input; the dynamic weights at zero.
class HyperConnectionImpl : public torch::nn::Cloneable<HyperConnectionImpl> {
 public:
  HyperConnectionImpl(int64_t dim, int64_t layer_index, int64_t num_streams, int64_t views = 1,
                      int64_t sinkhorn_iters = 5);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  functional::HyperConnectionWeights weights() const;
  /// streams (b s, n, d) -> the branch input, the residuals and the write shares.
  functional::StreamRead prepare(const at::Tensor& streams);
  /// The branch output written back: (b s, n, d).
  at::Tensor forward(const at::Tensor& branch, const functional::StreamRead& read);

  int64_t dim, layer_index, num_streams, views, sinkhorn_iters;
  at::Tensor static_beta, static_alpha, dynamic_alpha_fn, dynamic_alpha_scale, dynamic_beta_fn,
      dynamic_beta_scale;
  TorchLayerNorm norm{nullptr};
};
TORCH_MODULE(HyperConnection);

/// The gated multi residual of layer `layer_index` (x-transformers' GatedMultiResidual): elementwise read
/// gates, anchored on the layer's own stream, and a write gate per stream, both from a low-rank bottleneck
/// of the normed streams that starts at zero.
class GatedMultiResidualImpl : public torch::nn::Cloneable<GatedMultiResidualImpl> {
 public:
  GatedMultiResidualImpl(int64_t dim, int64_t layer_index, int64_t num_streams, int64_t read_gate_rank,
                         int64_t views = 1);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  functional::GatedMultiResidualWeights weights() const;
  functional::StreamRead prepare(const at::Tensor& streams);
  at::Tensor forward(const at::Tensor& branch, const functional::StreamRead& read);

  int64_t dim, layer_index, num_streams, read_gate_rank, views;
  at::Tensor read_gain, static_read_logit, static_write_logit, dynamic_gate_scale;
  Linear to_bottleneck{nullptr}, to_read_gate{nullptr}, to_write_gate{nullptr};
};
TORCH_MODULE(GatedMultiResidual);

/// Holds a branch as `fn` with a learned per-feature output scale `gamma` (CaiT's LayerScale); with
/// `unit_offset` gamma is stored as (scale - 1). AttentionLayers applies it.
class LayerScaleImpl : public torch::nn::Cloneable<LayerScaleImpl> {
 public:
  LayerScaleImpl(std::shared_ptr<torch::nn::Module> fn, int64_t dim, double init_value, bool unit_offset);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  std::shared_ptr<torch::nn::Module> fn;
  int64_t dim;
  double init_value;
  bool unit_offset;
  at::Tensor gamma;
};
TORCH_MODULE(LayerScale);

/// x-transformers' AdaptiveLayerScale (adaLN-zero, DiT): holds a branch as `fn`, whose output AttentionLayers
/// multiplies by sigmoid(to_gamma(condition)); to_gamma starts at weight 0 and bias -2.
class AdaptiveLayerScaleImpl : public torch::nn::Cloneable<AdaptiveLayerScaleImpl> {
 public:
  AdaptiveLayerScaleImpl(std::shared_ptr<torch::nn::Module> fn, int64_t dim, int64_t dim_condition);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  std::shared_ptr<torch::nn::Module> fn;
  int64_t dim, dim_condition;
  Linear to_gamma{nullptr};
};
TORCH_MODULE(AdaptiveLayerScale);

/// x-transformers' ConcatCombine (unet_skips): a second-half block's input joined with its mirror block's by
/// a bias-less (2 dim -> dim) linear `combine`.
class ConcatCombineImpl : public torch::nn::Cloneable<ConcatCombineImpl> {
 public:
  explicit ConcatCombineImpl(int64_t dim);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x, const at::Tensor& skip);

  int64_t dim;
  Linear combine{nullptr};
};
TORCH_MODULE(ConcatCombine);

/// Holds a branch as `fn` whose output AttentionLayers multiplies by a constant (macaron's 0.5).
class ScaleImpl : public torch::nn::Cloneable<ScaleImpl> {
 public:
  ScaleImpl(double value, std::shared_ptr<torch::nn::Module> fn);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

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
  void pretty_print(std::ostream& stream) const override;

  int64_t shift;
  std::shared_ptr<torch::nn::Module> fn;
};
TORCH_MODULE(ShiftTokens);

}  // namespace xtc::nn
