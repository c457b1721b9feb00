#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/modules/feedforward.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>

namespace xtc::nn {

FeedForwardImpl::FeedForwardImpl(int64_t dim, FeedForwardOptions options) : dim(dim), options(options) { reset(); }

void FeedForwardImpl::reset() {
  const auto inner = static_cast<int64_t>(dim * options.mult());
  TORCH_CHECK_VALUE(inner > 0, "FeedForward: expected dim * mult >= 1, got dim ", dim, " and mult ", options.mult());
  proj_in = torch::nn::Linear(torch::nn::LinearOptions(dim, inner));
  proj_out = torch::nn::Linear(torch::nn::LinearOptions(inner, dim));
  // ModuleLists only give the nesting x-transformers' Sequentials have; forward runs the functional math.
  ff = register_module("ff", torch::nn::ModuleList(torch::nn::ModuleList(proj_in, torch::nn::GELU()),
                                                   torch::nn::Dropout(options.dropout()), proj_out));
}

void FeedForwardImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::FeedForward(dim=" << dim << ", mult=" << options.mult();
  if (options.dropout() > 0) stream << ", dropout=" << options.dropout();
  stream << ")";
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  return functional::feed_forward(x, proj_in->weight, proj_in->bias, proj_out->weight, proj_out->bias,
                                  options.dropout(), is_training());
}

}  // namespace xtc::nn
