#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
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

}  // namespace xtc::nn
