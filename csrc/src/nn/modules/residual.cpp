#include <ATen/ops/cat.h>
#include <torch/nn/init.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/residual.h>

namespace xtc::nn {

ResidualImpl::ResidualImpl(int64_t dim, bool scale_residual, double scale_residual_constant)
    : dim(dim), scale_residual(scale_residual), scale_residual_constant(scale_residual_constant) {
  reset();
}

void ResidualImpl::reset() {
  if (scale_residual) residual_scale = register_parameter("residual_scale", module_tensor({dim}).fill_(1));
}

at::Tensor ResidualImpl::forward(const at::Tensor& branch, const at::Tensor& residual) {
  functional::ResidualWeights weights;
  weights.residual_scale = residual_scale;
  return functional::residual(ResidualKind::Add, branch, residual, weights, scale_residual_constant);
}

GRUGatingImpl::GRUGatingImpl(int64_t dim, bool scale_residual) : dim(dim), scale_residual(scale_residual) {
  reset();
}

void GRUGatingImpl::reset() {
  gru = register_module("gru", GRUCell(dim, dim));
  if (scale_residual) residual_scale = register_parameter("residual_scale", module_tensor({dim}).fill_(1));
}

at::Tensor GRUGatingImpl::forward(const at::Tensor& branch, const at::Tensor& residual) {
  return functional::residual(ResidualKind::GRUGating, branch, residual,
                              {residual_scale, gru->weight_ih, gru->weight_hh, gru->bias_ih, gru->bias_hh},
                              1.0);
}

LayerScaleImpl::LayerScaleImpl(std::shared_ptr<torch::nn::Module> fn, int64_t dim, double init_value,
                               bool unit_offset)
    : fn(std::move(fn)), dim(dim), init_value(init_value), unit_offset(unit_offset) {
  reset();
}

void LayerScaleImpl::reset() {
  gamma = register_parameter("gamma", module_tensor({dim}));
  torch::nn::init::constant_(gamma, init_value - (unit_offset ? 1.0 : 0.0));
  register_module("fn", fn);
}

ScaleImpl::ScaleImpl(double value, std::shared_ptr<torch::nn::Module> fn) : value(value), fn(std::move(fn)) {
  reset();
}

void ScaleImpl::reset() { register_module("fn", fn); }

ShiftTokensImpl::ShiftTokensImpl(int64_t shift, std::shared_ptr<torch::nn::Module> fn)
    : shift(shift), fn(std::move(fn)) {
  reset();
}

void ShiftTokensImpl::reset() { register_module("fn", fn); }

AdaptiveLayerScaleImpl::AdaptiveLayerScaleImpl(std::shared_ptr<torch::nn::Module> fn, int64_t dim,
                                               int64_t dim_condition)
    : fn(std::move(fn)), dim(dim), dim_condition(dim_condition) {
  reset();
}

void AdaptiveLayerScaleImpl::reset() {
  // x-transformers registers the wrapped block first, then to_gamma.
  register_module("fn", fn);
  to_gamma = register_module("to_gamma", Linear(dim_condition, dim));
  reset_parameters();
}

void AdaptiveLayerScaleImpl::reset_parameters() {
  torch::nn::init::zeros_(to_gamma->weight);
  torch::nn::init::constant_(to_gamma->bias, -2.0);
}

void AdaptiveLayerScaleImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::AdaptiveLayerScale(" << dim << ", dim_condition=" << dim_condition << ")";
}

ConcatCombineImpl::ConcatCombineImpl(int64_t dim) : dim(dim) { reset(); }

void ConcatCombineImpl::reset() {
  combine = register_module("combine", Linear(torch::nn::LinearOptions(2 * dim, dim).bias(false)));
}

void ConcatCombineImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::ConcatCombine(" << dim << ")";
}

at::Tensor ConcatCombineImpl::forward(const at::Tensor& x, const at::Tensor& skip) {
  return combine(at::cat({skip, x}, -1));
}

void ResidualImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Residual(" << dim << (scale_residual ? ", scale_residual=true" : "");
  if (scale_residual_constant != 1.0) stream << ", scale_residual_constant=" << scale_residual_constant;
  stream << ")";
}

void GRUGatingImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::GRUGating(" << dim << (scale_residual ? ", scale_residual=true" : "") << ")";
}

void LayerScaleImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::LayerScale(" << dim << ", init_value=" << init_value << ")";
}

void ScaleImpl::pretty_print(std::ostream& stream) const { stream << "xtc::nn::Scale(" << value << ")"; }

void ShiftTokensImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::ShiftTokens(" << shift << ")";
}

}  // namespace xtc::nn
