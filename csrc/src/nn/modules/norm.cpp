#include <torch/nn/init.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/norm.h>

namespace xtc::nn {

LayerNormImpl::LayerNormImpl(int64_t dim, bool unit_offset) : dim(dim), unit_offset(unit_offset) { reset(); }

void LayerNormImpl::reset() {
  TORCH_CHECK_VALUE(dim > 0, "LayerNorm: expected dim > 0, got ", dim);
  gamma = register_parameter("gamma", module_tensor({dim}));
  reset_parameters();
}

void LayerNormImpl::reset_parameters() { torch::nn::init::constant_(gamma, unit_offset ? 0.0 : 1.0); }

void LayerNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::LayerNorm(" << dim << (unit_offset ? ", unit_offset=true" : "") << ")";
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  return functional::layer_norm(x, gamma, unit_offset);
}

RMSNormImpl::RMSNormImpl(int64_t dim, bool unit_offset, bool scalar_gain)
    : dim(dim), unit_offset(unit_offset), scalar_gain(scalar_gain) {
  reset();
}

void RMSNormImpl::reset() {
  TORCH_CHECK_VALUE(dim > 0, "RMSNorm: expected dim > 0, got ", dim);
  g = register_parameter("g", module_tensor({scalar_gain ? 1 : dim}));
  reset_parameters();
}

void RMSNormImpl::reset_parameters() { torch::nn::init::constant_(g, unit_offset ? 0.0 : 1.0); }

void RMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::" << (scalar_gain ? "ScaleNorm(" : "RMSNorm(") << dim
         << (unit_offset ? ", unit_offset=true" : "") << ")";
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return functional::rms_norm(x, g, unit_offset); }

SimpleRMSNormImpl::SimpleRMSNormImpl(int64_t dim) : dim(dim) {}

void SimpleRMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::SimpleRMSNorm(" << dim << ")";
}

at::Tensor SimpleRMSNormImpl::forward(const at::Tensor& x) { return functional::rms_norm(x, at::Tensor()); }

DynamicTanhImpl::DynamicTanhImpl(int64_t dim, double init_alpha, bool unit_offset)
    : dim(dim), init_alpha(init_alpha), unit_offset(unit_offset) {
  reset();
}

void DynamicTanhImpl::reset() {
  TORCH_CHECK_VALUE(dim > 0, "DynamicTanh: expected dim > 0, got ", dim);
  // x-transformers' registration order: pre_tanh_scale, gamma, beta.
  pre_tanh_scale = register_parameter("pre_tanh_scale", module_tensor({}));
  gamma = register_parameter("gamma", module_tensor({dim}));
  beta = register_parameter("beta", module_tensor({dim}));
  reset_parameters();
}

void DynamicTanhImpl::reset_parameters() {
  torch::nn::init::constant_(pre_tanh_scale, unit_offset ? 0.0 : init_alpha);
  torch::nn::init::constant_(gamma, unit_offset ? 0.0 : 1.0);
  torch::nn::init::zeros_(beta);
}

void DynamicTanhImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::DynamicTanh(" << dim << ", init_alpha=" << init_alpha
         << (unit_offset ? ", unit_offset=true" : "") << ")";
}

at::Tensor DynamicTanhImpl::forward(const at::Tensor& x) {
  return functional::dynamic_tanh(x, {gamma, pre_tanh_scale, beta, at::Tensor()}, unit_offset, init_alpha);
}

DerfImpl::DerfImpl(int64_t dim, bool unit_offset) : dim(dim), unit_offset(unit_offset) { reset(); }

void DerfImpl::reset() {
  TORCH_CHECK_VALUE(dim > 0, "Derf: expected dim > 0, got ", dim);
  // x-transformers' registration order: alpha, s, gamma, beta.
  alpha = register_parameter("alpha", module_tensor({}));
  s = register_parameter("s", module_tensor({}));
  gamma = register_parameter("gamma", module_tensor({dim}));
  beta = register_parameter("beta", module_tensor({dim}));
  reset_parameters();
}

void DerfImpl::reset_parameters() {
  const double offset = unit_offset ? 1.0 : 0.0;
  torch::nn::init::constant_(alpha, 0.5 - offset);
  torch::nn::init::zeros_(s);
  torch::nn::init::constant_(gamma, 1.0 - offset);
  torch::nn::init::zeros_(beta);
}

void DerfImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Derf(" << dim << (unit_offset ? ", unit_offset=true" : "") << ")";
}

at::Tensor DerfImpl::forward(const at::Tensor& x) {
  functional::NormWeights w;
  w.gain = gamma;
  w.pre_tanh_scale = alpha;
  w.beta = beta;
  w.shift = s;
  return functional::derf(x, w, unit_offset);
}

AdaptiveNormImpl::AdaptiveNormImpl(NormKind kind, int64_t dim, int64_t dim_condition)
    : kind(kind), dim(dim), dim_condition(dim_condition) {
  TORCH_INTERNAL_ASSERT(kind == NormKind::AdaptiveLayerNorm || kind == NormKind::AdaptiveRMSNorm);
  reset();
}

void AdaptiveNormImpl::reset() {
  to_gamma = register_module("to_gamma", Linear(torch::nn::LinearOptions(dim_condition, dim).bias(false)));
  reset_parameters();
}

void AdaptiveNormImpl::reset_parameters() { torch::nn::init::zeros_(to_gamma->weight); }

void AdaptiveNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::" << (kind == NormKind::AdaptiveLayerNorm ? "AdaptiveLayerNorm" : "AdaptiveRMSNorm")
         << "(" << dim << ", dim_condition=" << dim_condition << ")";
}

at::Tensor AdaptiveNormImpl::forward(const at::Tensor& x, const at::Tensor& condition) {
  return functional::adaptive_norm(kind, x, to_gamma(condition));
}

MultiheadRMSNormImpl::MultiheadRMSNormImpl(int64_t heads, int64_t dim_head)
    : heads(heads), dim_head(dim_head) {
  reset();
}

void MultiheadRMSNormImpl::reset() {
  gamma = register_parameter("gamma", module_tensor({heads, 1, dim_head}));
  reset_parameters();
}

void MultiheadRMSNormImpl::reset_parameters() { torch::nn::init::zeros_(gamma); }

void MultiheadRMSNormImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::MultiheadRMSNorm(heads=" << heads << ", dim_head=" << dim_head << ")";
}

}  // namespace xtc::nn
