// The torch.nn layers x-transformers builds on (nn.Linear, nn.Embedding, nn.GRUCell, nn.Conv2d,
// nn.LayerNorm, nn.RMSNorm, nn.GRU, nn.LSTM), with torch's parameter names, shapes and initialisation, draw
// for draw. LibTorch's own allocate on the CPU in their constructors; these allocate through module_tensor(),
// so that a whole model also builds on meta (construction.h).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/options/linear.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/hybrid.h>

namespace xtc::nn {

/// torch.nn.Linear: weight (out, in), bias (out) unless options.bias(false); torch's kaiming-uniform init.
class LinearImpl : public torch::nn::Cloneable<LinearImpl> {
 public:
  explicit LinearImpl(const torch::nn::LinearOptions& options);
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  torch::nn::LinearOptions options;
  at::Tensor weight, bias;
};
TORCH_MODULE(Linear);

/// torch.nn.Embedding: weight (num_embeddings, embedding_dim) ~ N(0, 1).
class EmbeddingImpl : public torch::nn::Cloneable<EmbeddingImpl> {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& indices);

  int64_t num_embeddings, embedding_dim;
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

/// torch.nn.GRUCell: weight_ih, weight_hh (3 hidden, in / hidden), bias_ih, bias_hh (3 hidden), all
/// uniform in +-1/sqrt(hidden).
class GRUCellImpl : public torch::nn::Cloneable<GRUCellImpl> {
 public:
  GRUCellImpl(int64_t input_size, int64_t hidden_size);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input, const at::Tensor& hidden);

  int64_t input_size, hidden_size;
  at::Tensor weight_ih, weight_hh, bias_ih, bias_hh;
};
TORCH_MODULE(GRUCell);

/// torch.nn.Conv2d(in, out, kernel, bias=...) with a square kernel, stride 1 and no padding, the form
/// x-transformers uses (talking heads: a 1x1 mix of the heads); torch's kaiming-uniform init.
class Conv2dImpl : public torch::nn::Cloneable<Conv2dImpl> {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, bool bias = true);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  int64_t in_channels, out_channels, kernel_size;
  bool has_bias;
  at::Tensor weight, bias;
};
TORCH_MODULE(Conv2d);

/// torch.nn.LayerNorm(dim, bias=...): weight 1 and bias 0 (x-transformers' own LayerNorm, norm.h, has `gamma`
/// only).
class TorchLayerNormImpl : public torch::nn::Cloneable<TorchLayerNormImpl> {
 public:
  explicit TorchLayerNormImpl(int64_t dim, double eps = 1e-5, bool bias = true);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  int64_t dim;
  double eps;
  bool has_bias;
  at::Tensor weight, bias;
};
TORCH_MODULE(TorchLayerNorm);

/// torch.nn.RMSNorm(dim): weight 1, eps the input dtype's machine epsilon (torch's eps=None).
class TorchRMSNormImpl : public torch::nn::Cloneable<TorchRMSNormImpl> {
 public:
  explicit TorchRMSNormImpl(int64_t dim);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  int64_t dim;
  at::Tensor weight;
};
TORCH_MODULE(TorchRMSNorm);

/// torch.nn.GRU / torch.nn.LSTM's parameters (weight_ih_l0, weight_hh_l0, bias_ih_l0, ...; torch's names,
/// shapes and order), drawn uniform in +-1/sqrt(hidden) as torch draws them, or zero when the spec's weights
/// are given (the caller fills them). functional::hybrid_heads runs them.
class TorchRecurrentImpl : public torch::nn::Cloneable<TorchRecurrentImpl> {
 public:
  explicit TorchRecurrentImpl(functional::RecurrentSpec spec);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  /// The parameters in the spec's order, what functional::hybrid_heads takes.
  std::vector<at::Tensor> flat_weights() const;

  functional::RecurrentSpec spec;
};
TORCH_MODULE(TorchRecurrent);

}  // namespace xtc::nn
