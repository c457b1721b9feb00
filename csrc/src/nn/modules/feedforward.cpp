#include <ATen/ops/softmax.h>
#include <ATen/ops/tanh.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/feedforward.h>
#include <xtc/nn/modules/norm.h>

namespace xtc::nn {

SoLUImpl::SoLUImpl(int64_t dim) : dim(dim) { reset(); }

void SoLUImpl::reset() { norm = register_module("norm", LayerNorm(dim, /*unit_offset=*/false).ptr()); }

void SoLUImpl::pretty_print(std::ostream& stream) const { stream << "xtc::nn::SoLU(" << dim << ")"; }

at::Tensor SoLUImpl::forward(const at::Tensor& x) {
  return functional::layer_norm(at::softmax(x, -1) * x, norm->named_parameters()["gamma"],
                                /*unit_offset=*/false);
}

void SoftclampImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Softclamp(" << value << ")";
}

at::Tensor SoftclampImpl::forward(const at::Tensor& x) { return at::tanh(x / value) * value; }

GLUImpl::GLUImpl(int64_t dim_in, int64_t dim_out, bool mult_bias, bool solu)
    : dim_in(dim_in), dim_out(dim_out), has_mult_bias(mult_bias), solu(solu) {
  reset();
}

void GLUImpl::reset() {
  if (solu) act = register_module("act", SoLU(dim_out));
  proj = register_module("proj", Linear(dim_in, dim_out * 2));
  if (has_mult_bias) mult_bias = register_parameter("mult_bias", module_tensor({dim_out}).fill_(1));
}

void GLUImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::GLU(" << dim_in << ", " << dim_out << (has_mult_bias ? ", mult_bias=true" : "") << ")";
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, FeedForwardOptions options) : dim(dim), options(options) {
  reset();
}

void FeedForwardImpl::reset() {
  const auto inner = static_cast<int64_t>(dim * options.mult());
  TORCH_CHECK_VALUE(inner > 0, "FeedForward: expected dim * mult >= 1, got dim ", dim, " and mult ",
                    options.mult());
  ff = register_module("ff", torch::nn::ModuleList());
  // The activation modules only name the layout; forward runs functional::feed_forward.
  if (options.glu()) {
    glu = GLU(dim, inner, options.glu_mult_bias(), options.solu());
    solu = glu->act;
    ff->push_back(glu);
  } else {
    proj_in = Linear(torch::nn::LinearOptions(dim, inner).bias(!options.no_bias()));
    torch::nn::ModuleList input(proj_in);
    if (options.softclamp_value().has_value()) input->push_back(Softclamp(*options.softclamp_value()));
    if (options.solu()) {
      solu = SoLU(inner);
      input->push_back(solu);
    } else {
      input->push_back(torch::nn::GELU());
    }
    ff->push_back(input);
  }
  if (options.post_act_ln()) {
    post_act_norm = LayerNorm(inner, /*unit_offset=*/false).ptr();
    ff->push_back(post_act_norm);
  }
  ff->push_back(torch::nn::Dropout(options.dropout()));
  proj_out = Linear(torch::nn::LinearOptions(inner, dim).bias(!options.no_bias()));
  ff->push_back(proj_out);
  if (options.sublayer_dropout() > 0) ff->push_back(torch::nn::Dropout(options.sublayer_dropout()));
  if (options.zero_init_output()) {
    torch::nn::init::zeros_(proj_out->weight);
    if (proj_out->bias.defined()) torch::nn::init::zeros_(proj_out->bias);
  } else if (options.output_proj_depth().has_value()) {
    torch::nn::init::normal_(proj_out->weight, 0.0, depth_scaled_std(inner, *options.output_proj_depth()));
  }
}

void FeedForwardImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::FeedForward(dim=" << dim << ", mult=" << options.mult()
         << (options.glu() ? ", glu=true" : "") << (options.solu() ? ", solu=true" : "")
         << (options.glu_softclamp() ? ", glu_softclamp=true" : "") << ")";
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  functional::FeedForwardWeights w;
  if (options.glu()) {
    w.proj_in_weight = glu->proj->weight;
    w.proj_in_bias = glu->proj->bias;
    w.glu_mult_bias = glu->mult_bias;
  } else {
    w.proj_in_weight = proj_in->weight;
    w.proj_in_bias = proj_in->bias;
  }
  if (solu) w.solu_gamma = solu->norm->named_parameters()["gamma"];
  if (post_act_norm) w.post_act_gamma = post_act_norm->named_parameters()["gamma"];
  w.proj_out_weight = proj_out->weight;
  w.proj_out_bias = proj_out->bias;
  return functional::feed_forward(x, w, options, is_training());
}

}  // namespace xtc::nn
