#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <xtc/nn/functional/positional.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/positional.h>
#include <xtc/nn/modules/torch_layers.h>

#include <cmath>

namespace xtc::nn {

RotaryEmbeddingImpl::RotaryEmbeddingImpl(int64_t dim, bool use_xpos, double base_rescale_factor)
    : dim(dim), use_xpos(use_xpos), base_rescale_factor(base_rescale_factor) {
  reset();
}

void RotaryEmbeddingImpl::reset() {
  inv_freq = register_buffer("inv_freq", module_tensor({dim / 2}));
  if (use_xpos) scale = register_buffer("scale", module_tensor({dim / 2}));
  reset_parameters();
}

void RotaryEmbeddingImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const auto pairs = at::arange(0, dim, 2, inv_freq.options());  // on meta too, as the buffers
  const double r = static_cast<double>(dim);
  // NTK-aware rescaling of the base (x-transformers' base_rescale_factor).
  const double base = 10000.0 * std::pow(base_rescale_factor, r / (r - 2));
  inv_freq.copy_(1.0 / at::pow(base, pairs / r));
  // xPos: the per-pair decay (2k + 0.4 r) / (1.4 r).
  if (use_xpos) scale.copy_((pairs + 0.4 * r) / (1.4 * r));
}

void RotaryEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::RotaryEmbedding(" << dim << (use_xpos ? ", use_xpos=true" : "") << ")";
}

PolarEmbeddingImpl::PolarEmbeddingImpl(int64_t dim, int64_t heads, bool bias_uniform_init)
    : dim(dim), heads(heads), bias_uniform_init(bias_uniform_init) {
  reset();
}

void PolarEmbeddingImpl::reset() {
  inv_freq = register_buffer("inv_freq", module_tensor({dim}));
  {
    torch::NoGradGuard no_grad;
    inv_freq.copy_(1.0 / at::pow(10000.0, at::arange(0, dim, inv_freq.options()) / static_cast<double>(dim)));
  }
  learned_bias = register_parameter("learned_bias", module_tensor({heads, 1, dim}).zero_());
  if (bias_uniform_init) {
    torch::NoGradGuard no_grad;
    learned_bias.uniform_(-2 * M_PI, 0.0);
  }
}

void PolarEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::PolarEmbedding(" << dim << ", heads=" << heads
         << (bias_uniform_init ? ", bias_uniform_init=true" : "") << ")";
}

RelativePositionBiasImpl::RelativePositionBiasImpl(int64_t heads, int64_t num_buckets)
    : heads(heads), num_buckets(num_buckets) {
  reset();
}

void RelativePositionBiasImpl::reset() {
  relative_attention_bias = register_module("relative_attention_bias", Embedding(num_buckets, heads));
}

void RelativePositionBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::RelativePositionBias(heads=" << heads << ", num_buckets=" << num_buckets << ")";
}

DynamicPositionBiasImpl::DynamicPositionBiasImpl(int64_t dim, int64_t heads, int64_t depth, bool norm)
    : dim(dim), heads(heads), depth(depth), norm(norm) {
  reset();
}

void DynamicPositionBiasImpl::reset() {
  // x-transformers' Sequentials drop the None norms, so the names shift with `norm`.
  const int64_t d = dim / 4;
  mlp = register_module("mlp", torch::nn::ModuleList());
  torch::nn::Sequential first(Linear(1, d));
  if (norm) first->push_back(LayerNorm(d, /*unit_offset=*/false));
  first->push_back(torch::nn::SiLU());
  mlp->push_back(first);
  for (int64_t l = 1; l < depth; ++l) {
    torch::nn::Sequential hidden(Linear(d, d));
    if (norm) hidden->push_back(TorchLayerNorm(d));
    hidden->push_back(torch::nn::SiLU());
    mlp->push_back(hidden);
  }
  mlp->push_back(Linear(d, heads));
}

void DynamicPositionBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::DynamicPositionBias(" << dim << ", heads=" << heads << ", depth=" << depth
         << (norm ? ", norm=true" : "") << ")";
}

namespace {

// x-transformers keeps these linears first in a Sequential, so they sit at `<name>.0`.
Linear register_first_of_sequential(torch::nn::Module& parent, const char* name, Linear linear) {
  parent.register_module(name, torch::nn::Sequential(linear));
  return linear;
}

}  // namespace

DataDependentAlibiImpl::DataDependentAlibiImpl(int64_t dim, int64_t heads, bool causal, double bias_init,
                                               double post_log_scale)
    : dim(dim), heads(heads), causal(causal), bias_init(bias_init), post_log_scale(post_log_scale) {
  reset();
}

void DataDependentAlibiImpl::reset() {
  to_forget_gates =
      register_first_of_sequential(*this, "to_forget_gates", Linear(dim, heads * (causal ? 1 : 2)));
  torch::nn::init::constant_(to_forget_gates->bias, bias_init);
}

void DataDependentAlibiImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::DataDependentAlibi(dim=" << dim << ", heads=" << heads
         << (causal ? ", causal=true" : "") << ")";
}

at::Tensor DataDependentAlibiImpl::forward(const at::Tensor& x) {
  return functional::data_dependent_alibi(x, to_forget_gates->weight, to_forget_gates->bias, heads, causal,
                                          post_log_scale);
}

PerRowDataDependentAlibiImpl::PerRowDataDependentAlibiImpl(int64_t dim, int64_t heads, int64_t dim_head,
                                                           double post_log_scale)
    : dim(dim), heads(heads), dim_head(dim_head), post_log_scale(post_log_scale) {
  reset();
}

void PerRowDataDependentAlibiImpl::reset() {
  to_forget_gates = register_first_of_sequential(
      *this, "to_forget_gates", Linear(torch::nn::LinearOptions(dim, 2 * heads * dim_head).bias(false)));
}

void PerRowDataDependentAlibiImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::PerRowDataDependentAlibi(dim=" << dim << ", heads=" << heads
         << ", dim_head=" << dim_head << ")";
}

at::Tensor PerRowDataDependentAlibiImpl::forward(const at::Tensor& x) {
  return functional::per_row_data_dependent_alibi(x, to_forget_gates->weight, heads, dim_head,
                                                  post_log_scale);
}

RelativeProjPositionalBiasImpl::RelativeProjPositionalBiasImpl(int64_t dim, int64_t heads,
                                                               int64_t num_distance_basis, int64_t max_dist)
    : dim(dim), heads(heads), num_distance_basis(num_distance_basis), max_dist(max_dist) {
  reset();
}

void RelativeProjPositionalBiasImpl::reset() {
  // x-transformers' draw order: the linear, then the bank.
  Linear weights(dim, heads * num_distance_basis);
  distance_bank =
      register_parameter("distance_bank", module_tensor({num_distance_basis, max_dist}).normal_(0, 0.02));
  to_distance_weights = register_first_of_sequential(*this, "to_distance_weights", weights);
}

void RelativeProjPositionalBiasImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::RelativeProjPositionalBias(dim=" << dim << ", heads=" << heads
         << ", num_distance_basis=" << num_distance_basis << ", max_dist=" << max_dist << ")";
}

at::Tensor RelativeProjPositionalBiasImpl::forward(const at::Tensor& x, int64_t keys) {
  return functional::relative_projection_bias(x, to_distance_weights->weight, to_distance_weights->bias,
                                              distance_bank, heads, keys);
}

}  // namespace xtc::nn
