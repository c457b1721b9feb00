#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <torch/nn/init.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/nn/modules/residual.h>

namespace xtc::nn {

ResidualImpl::ResidualImpl(int64_t dim, bool scale_residual, double scale_residual_constant)
    : dim(dim), scale_residual(scale_residual), scale_residual_constant(scale_residual_constant) {
  reset();
}

void ResidualImpl::reset() {
  if (scale_residual) residual_scale = register_parameter("residual_scale", at::ones({dim}));
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
  gru = register_module("gru", torch::nn::GRUCell(dim, dim));
  if (scale_residual) residual_scale = register_parameter("residual_scale", at::ones({dim}));
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
  gamma = register_parameter("gamma", at::empty({dim}));
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

}  // namespace xtc::nn
