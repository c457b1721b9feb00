#include <ATen/ops/conv2d.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/gru_cell.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/rms_norm.h>
#include <torch/nn/init.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/torch_layers.h>

#include <cmath>

namespace xtc::nn {
namespace {

// torch's init of Linear and Conv2d: kaiming-uniform weight (a = sqrt 5), bias uniform in +-1/sqrt(fan_in).
void kaiming_uniform_with_bias(at::Tensor& weight, at::Tensor& bias) {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (!bias.defined()) return;
  const auto fan_in = std::get<0>(torch::nn::init::_calculate_fan_in_and_fan_out(weight));
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  torch::nn::init::uniform_(bias, -bound, bound);
}

}  // namespace

LinearImpl::LinearImpl(const torch::nn::LinearOptions& options) : options(options) { reset(); }

void LinearImpl::reset() {
  weight = register_parameter("weight", module_tensor({options.out_features(), options.in_features()}));
  if (options.bias()) bias = register_parameter("bias", module_tensor({options.out_features()}));
  reset_parameters();
}

void LinearImpl::reset_parameters() { kaiming_uniform_with_bias(weight, bias); }

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Linear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << (options.bias() ? "true" : "false")
         << ")";
}

at::Tensor LinearImpl::forward(const at::Tensor& input) { return at::linear(input, weight, bias); }

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
    : num_embeddings(num_embeddings), embedding_dim(embedding_dim) {
  reset();
}

void EmbeddingImpl::reset() {
  weight = register_parameter("weight", module_tensor({num_embeddings, embedding_dim}));
  reset_parameters();
}

void EmbeddingImpl::reset_parameters() { torch::nn::init::normal_(weight); }

void EmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Embedding(num_embeddings=" << num_embeddings << ", embedding_dim=" << embedding_dim
         << ")";
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& indices) { return at::embedding(weight, indices); }

GRUCellImpl::GRUCellImpl(int64_t input_size, int64_t hidden_size)
    : input_size(input_size), hidden_size(hidden_size) {
  reset();
}

void GRUCellImpl::reset() {
  weight_ih = register_parameter("weight_ih", module_tensor({3 * hidden_size, input_size}));
  weight_hh = register_parameter("weight_hh", module_tensor({3 * hidden_size, hidden_size}));
  bias_ih = register_parameter("bias_ih", module_tensor({3 * hidden_size}));
  bias_hh = register_parameter("bias_hh", module_tensor({3 * hidden_size}));
  reset_parameters();
}

void GRUCellImpl::reset_parameters() {
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden_size));
  for (auto* t : {&weight_ih, &weight_hh, &bias_ih, &bias_hh}) torch::nn::init::uniform_(*t, -bound, bound);
}

void GRUCellImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::GRUCell(" << input_size << ", " << hidden_size << ")";
}

at::Tensor GRUCellImpl::forward(const at::Tensor& input, const at::Tensor& hidden) {
  return at::gru_cell(input, hidden, weight_ih, weight_hh, bias_ih, bias_hh);
}

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, bool bias)
    : in_channels(in_channels), out_channels(out_channels), kernel_size(kernel_size), has_bias(bias) {
  reset();
}

void Conv2dImpl::reset() {
  weight = register_parameter("weight", module_tensor({out_channels, in_channels, kernel_size, kernel_size}));
  if (has_bias) bias = register_parameter("bias", module_tensor({out_channels}));
  reset_parameters();
}

void Conv2dImpl::reset_parameters() { kaiming_uniform_with_bias(weight, bias); }

void Conv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Conv2d(" << in_channels << ", " << out_channels << ", kernel_size=" << kernel_size
         << ", bias=" << (has_bias ? "true" : "false") << ")";
}

at::Tensor Conv2dImpl::forward(const at::Tensor& input) { return at::conv2d(input, weight, bias); }

TorchLayerNormImpl::TorchLayerNormImpl(int64_t dim, double eps, bool bias)
    : dim(dim), eps(eps), has_bias(bias) {
  reset();
}

void TorchLayerNormImpl::reset() {
  weight = register_parameter("weight", module_tensor({dim}));
  if (has_bias) bias = register_parameter("bias", module_tensor({dim}));
  reset_parameters();
}

void TorchLayerNormImpl::reset_parameters() {
  torch::nn::init::ones_(weight);
  if (has_bias) torch::nn::init::zeros_(bias);
}

void TorchLayerNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::TorchLayerNorm(" << dim << (has_bias ? "" : ", bias=false") << ")";
}

at::Tensor TorchLayerNormImpl::forward(const at::Tensor& input) {
  return at::layer_norm(input, {dim}, weight, bias, eps);
}

TorchRMSNormImpl::TorchRMSNormImpl(int64_t dim) : dim(dim) { reset(); }

void TorchRMSNormImpl::reset() {
  weight = register_parameter("weight", module_tensor({dim}));
  reset_parameters();
}

void TorchRMSNormImpl::reset_parameters() { torch::nn::init::ones_(weight); }

void TorchRMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::TorchRMSNorm(" << dim << ")";
}

at::Tensor TorchRMSNormImpl::forward(const at::Tensor& input) { return at::rms_norm(input, {dim}, weight); }

TorchRecurrentImpl::TorchRecurrentImpl(functional::RecurrentSpec spec) : spec(std::move(spec)) { reset(); }

void TorchRecurrentImpl::reset() {
  for (const auto& [name, shape] : spec.weights()) register_parameter(name, module_tensor(shape));
  reset_parameters();
}

void TorchRecurrentImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(spec.hidden_size));
  for (auto& p : parameters()) spec.given_weights ? p.zero_() : p.uniform_(-bound, bound);
}

void TorchRecurrentImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::TorchRecurrent(" << (spec.lstm ? "LSTM" : "GRU") << ", " << spec.input_size << ", "
         << spec.hidden_size << ", num_layers=" << spec.num_layers << ")";
}

std::vector<at::Tensor> TorchRecurrentImpl::flat_weights() const { return parameters(); }

}  // namespace xtc::nn
