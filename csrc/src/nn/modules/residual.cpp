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
                              {residual_scale, gru->weight_ih, gru->weight_hh, gru->bias_ih, gru->bias_hh,
                               at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()},
                              1.0);
}

OrthogonalResidualUpdateImpl::OrthogonalResidualUpdateImpl(int64_t dim, bool scale_residual)
    : dim(dim), scale_residual(scale_residual) {
  reset();
}

void OrthogonalResidualUpdateImpl::reset() {
  if (scale_residual) residual_scale = register_parameter("residual_scale", module_tensor({dim}).fill_(1));
}

at::Tensor OrthogonalResidualUpdateImpl::forward(const at::Tensor& branch, const at::Tensor& residual) {
  functional::ResidualWeights weights;
  weights.residual_scale = residual_scale;
  return functional::residual(ResidualKind::Orthogonal, branch, residual, weights, 1.0);
}

MVSplitResidualUpdateImpl::MVSplitResidualUpdateImpl(int64_t dim, double init_alpha, double init_beta,
                                                     bool learned)
    : dim(dim), init_alpha(init_alpha), init_beta(init_beta), learned(learned) {
  reset();
}

void MVSplitResidualUpdateImpl::reset() {
  if (!learned) {
    alpha = register_parameter("alpha", module_tensor({dim}).fill_(init_alpha));
    beta = register_parameter("beta", module_tensor({dim}).fill_(init_beta));
    return;
  }
  const auto start_at = [&](const char* name, double bias) {
    auto linear = register_module(name, Linear(dim, dim));
    torch::nn::init::zeros_(linear->weight);
    torch::nn::init::constant_(linear->bias, bias);
    return linear;
  };
  to_alpha = start_at("to_alpha", init_alpha);
  to_beta = start_at("to_beta", init_beta);
}

at::Tensor MVSplitResidualUpdateImpl::forward(const at::Tensor& branch, const at::Tensor& residual,
                                              const at::Tensor& mask) {
  functional::ResidualWeights w;
  w.alpha = learned ? to_alpha->weight : alpha;
  w.beta = learned ? to_beta->weight : beta;
  if (learned) w.alpha_bias = to_alpha->bias, w.beta_bias = to_beta->bias;
  return functional::residual(ResidualKind::MVSplit, branch, residual, w, 1.0,
                              mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt);
}

HyperConnectionImpl::HyperConnectionImpl(int64_t dim, int64_t layer_index, int64_t num_streams, int64_t views,
                                         int64_t sinkhorn_iters)
    : dim(dim),
      layer_index(layer_index),
      num_streams(num_streams),
      views(views),
      sinkhorn_iters(sinkhorn_iters) {
  reset();
}

void HyperConnectionImpl::reset() {
  norm = register_module("norm", TorchLayerNorm(dim, 1e-5, /*bias=*/false));
  static_beta = register_parameter("static_beta", module_tensor({num_streams}));
  static_alpha = register_parameter("static_alpha", module_tensor({num_streams, views + num_streams}));
  dynamic_alpha_fn = register_parameter("dynamic_alpha_fn", module_tensor({dim, num_streams + views}));
  dynamic_alpha_scale = register_parameter("dynamic_alpha_scale", module_tensor({}));
  dynamic_beta_fn = register_parameter("dynamic_beta_fn", module_tensor({dim}));
  dynamic_beta_scale = register_parameter("dynamic_beta_scale", module_tensor({}));
  reset_parameters();
}

void HyperConnectionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  static_beta.fill_(1);
  // The input mix reads the layer's own stream; the residual mix starts at the identity.
  static_alpha.zero_();
  static_alpha.select(0, layer_index % num_streams).narrow(0, 0, views).fill_(1);
  static_alpha.narrow(1, views, num_streams).diagonal().fill_(1);
  dynamic_alpha_fn.zero_();
  dynamic_alpha_scale.fill_(1e-2);
  dynamic_beta_fn.zero_();
  dynamic_beta_scale.fill_(1e-2);
}

void HyperConnectionImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::HyperConnection(dim=" << dim << ", layer_index=" << layer_index
         << ", num_streams=" << num_streams << ", views=" << views << ", sinkhorn_iters=" << sinkhorn_iters
         << ")";
}

functional::HyperConnectionWeights HyperConnectionImpl::weights() const {
  return {static_alpha,    static_beta,        dynamic_alpha_fn, dynamic_alpha_scale,
          dynamic_beta_fn, dynamic_beta_scale, norm->weight};
}

functional::StreamRead HyperConnectionImpl::prepare(const at::Tensor& streams) {
  return functional::hyper_connection_read(streams, weights(), num_streams, views, sinkhorn_iters);
}

at::Tensor HyperConnectionImpl::forward(const at::Tensor& branch, const functional::StreamRead& read) {
  return functional::stream_write(branch, read);
}

GatedMultiResidualImpl::GatedMultiResidualImpl(int64_t dim, int64_t layer_index, int64_t num_streams,
                                               int64_t read_gate_rank, int64_t views)
    : dim(dim),
      layer_index(layer_index),
      num_streams(num_streams),
      read_gate_rank(read_gate_rank),
      views(views) {
  reset();
}

void GatedMultiResidualImpl::reset() {
  TORCH_CHECK_VALUE(read_gate_rank > 0, "GatedMultiResidual: expected read_gate_rank > 0, got ",
                    read_gate_rank);
  read_gain = register_parameter("read_gain", module_tensor({num_streams, dim}).fill_(1));
  static_read_logit =
      register_parameter("static_read_logit", module_tensor({views, num_streams, dim}).zero_());
  {
    torch::NoGradGuard no_grad;
    static_read_logit.select(1, layer_index % num_streams).fill_(1);
  }
  static_write_logit = register_parameter("static_write_logit", module_tensor({num_streams}).zero_());
  const auto no_bias = [](int64_t in, int64_t out) { return torch::nn::LinearOptions(in, out).bias(false); };
  to_bottleneck = register_module("to_bottleneck", Linear(no_bias(dim * num_streams, read_gate_rank)));
  to_read_gate = register_module("to_read_gate", Linear(no_bias(read_gate_rank, dim * num_streams * views)));
  to_write_gate = register_module("to_write_gate", Linear(no_bias(read_gate_rank, num_streams)));
  torch::nn::init::zeros_(to_read_gate->weight);
  torch::nn::init::zeros_(to_write_gate->weight);
  dynamic_gate_scale = register_parameter("dynamic_gate_scale", module_tensor({}).fill_(1e-2));
}

void GatedMultiResidualImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::GatedMultiResidual(dim=" << dim << ", layer_index=" << layer_index
         << ", num_streams=" << num_streams << ", read_gate_rank=" << read_gate_rank << ", views=" << views
         << ")";
}

functional::GatedMultiResidualWeights GatedMultiResidualImpl::weights() const {
  return {read_gain,
          static_read_logit,
          static_write_logit,
          dynamic_gate_scale,
          to_bottleneck->weight,
          to_read_gate->weight,
          to_write_gate->weight};
}

functional::StreamRead GatedMultiResidualImpl::prepare(const at::Tensor& streams) {
  return functional::gated_multi_residual_read(streams, weights(), num_streams, views);
}

at::Tensor GatedMultiResidualImpl::forward(const at::Tensor& branch, const functional::StreamRead& read) {
  return functional::stream_write(branch, read);
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

void OrthogonalResidualUpdateImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::OrthogonalResidualUpdate(" << dim << (scale_residual ? ", scale_residual=true" : "")
         << ")";
}

void MVSplitResidualUpdateImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::MVSplitResidualUpdate(" << dim << ", init_alpha=" << init_alpha
         << ", init_beta=" << init_beta << (learned ? ", learned=true" : "") << ")";
}

void LayerScaleImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::LayerScale(" << dim << ", init_value=" << init_value << ")";
}

void ScaleImpl::pretty_print(std::ostream& stream) const { stream << "xtc::nn::Scale(" << value << ")"; }

void ShiftTokensImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::ShiftTokens(" << shift << ")";
}

}  // namespace xtc::nn
