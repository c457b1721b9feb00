#include <ATen/ops/linear.h>
#include <torch/nn/init.h>
#include <xtc/nn/functional/activation.h>
#include <xtc/nn/modules/lora_linear.h>

namespace xtc::nn {

namespace {

torch::nn::LinearOptions no_bias(int64_t in, int64_t out) {
  return torch::nn::LinearOptions(in, out).bias(false);
}

}  // namespace

LoRALinearImpl::LoRALinearImpl(int64_t in_features, int64_t out_features, int64_t rank,
                               std::optional<std::string> activation)
    : in_features(in_features), out_features(out_features), rank(rank), activation(std::move(activation)) {
  reset();
}

void LoRALinearImpl::reset() {
  TORCH_CHECK_VALUE(rank > 0 && (rank < in_features || rank < out_features),
                    "LoRALinear: expected the rank below the input or output width (", in_features, ", ",
                    out_features, "), got ", rank);
  if (activation.has_value()) functional::check_activation_spec("LoRALinear activation", *activation);
  down = register_module("down", Linear(no_bias(in_features, rank)));
  up = register_module("up", Linear(no_bias(rank, out_features)));
  torch::nn::init::zeros_(up->weight);
}

void LoRALinearImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::LoRALinear(in_features=" << in_features << ", out_features=" << out_features
         << ", rank=" << rank;
  if (activation.has_value()) stream << ", activation=" << *activation;
  stream << ")";
}

at::Tensor LoRALinearImpl::forward(const at::Tensor& x) {
  const auto hidden = down(x);
  return up(activation.has_value() ? functional::named_activation(*activation, hidden) : hidden);
}

functional::LowRankLinearWeights register_lora_linear(torch::nn::Module& parent, const std::string& name,
                                                      int64_t in_features, int64_t out_features,
                                                      std::optional<int64_t> rank, bool silu) {
  if (!rank.has_value()) {
    auto linear = parent.register_module(name, Linear(no_bias(in_features, out_features)));
    torch::nn::init::zeros_(linear->weight);
    return {linear->weight, {}, {}};
  }
  auto lora = parent.register_module(
      name,
      LoRALinear(in_features, out_features, *rank, silu ? std::optional<std::string>("silu") : std::nullopt));
  return {{}, lora->down->weight, lora->up->weight};
}

}  // namespace xtc::nn
