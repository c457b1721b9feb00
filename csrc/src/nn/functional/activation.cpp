#include <ATen/ops/celu.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/hardsigmoid.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/mish.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/relu6.h>
#include <ATen/ops/selu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/tanh.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xtc/nn/functional/activation.h>

#include <functional>
#include <sstream>

namespace xtc::nn::functional {
namespace {

using Arguments = std::vector<double>;

struct Activation {
  const char* name;
  size_t arguments;
  std::function<at::Tensor(const at::Tensor&, const Arguments&)> apply;
};

// torch.nn's parameterless activations, as their functional forms compute them.
const std::vector<Activation>& table() {
  static const std::vector<Activation> all = {
      {"relu", 0, [](const at::Tensor& x, const Arguments&) { return at::relu(x); }},
      {"relu6", 0, [](const at::Tensor& x, const Arguments&) { return at::relu6(x); }},
      {"relu_squared", 0, [](const at::Tensor& x, const Arguments&) { return at::relu(x).square(); }},
      {"gelu", 0, [](const at::Tensor& x, const Arguments&) { return at::gelu(x); }},
      {"gelu_tanh", 0, [](const at::Tensor& x, const Arguments&) { return at::gelu(x, "tanh"); }},
      {"silu", 0, [](const at::Tensor& x, const Arguments&) { return at::silu(x); }},
      {"sigmoid", 0, [](const at::Tensor& x, const Arguments&) { return at::sigmoid(x); }},
      {"tanh", 0, [](const at::Tensor& x, const Arguments&) { return at::tanh(x); }},
      {"mish", 0, [](const at::Tensor& x, const Arguments&) { return at::mish(x); }},
      {"softsign", 0, [](const at::Tensor& x, const Arguments&) { return x / (x.abs() + 1); }},
      {"selu", 0, [](const at::Tensor& x, const Arguments&) { return at::selu(x); }},
      {"hardswish", 0, [](const at::Tensor& x, const Arguments&) { return at::hardswish(x); }},
      {"hardsigmoid", 0, [](const at::Tensor& x, const Arguments&) { return at::hardsigmoid(x); }},
      {"tanhshrink", 0, [](const at::Tensor& x, const Arguments&) { return x - at::tanh(x); }},
      {"logsigmoid", 0, [](const at::Tensor& x, const Arguments&) { return at::log_sigmoid(x); }},
      {"identity", 0, [](const at::Tensor& x, const Arguments&) { return x; }},
      {"elu", 1, [](const at::Tensor& x, const Arguments& a) { return at::elu(x, a[0]); }},
      {"celu", 1, [](const at::Tensor& x, const Arguments& a) { return at::celu(x, a[0]); }},
      {"leaky_relu", 1, [](const at::Tensor& x, const Arguments& a) { return at::leaky_relu(x, a[0]); }},
      {"hardtanh", 2, [](const at::Tensor& x, const Arguments& a) { return at::hardtanh(x, a[0], a[1]); }},
      {"softplus", 2, [](const at::Tensor& x, const Arguments& a) { return at::softplus(x, a[0], a[1]); }},
  };
  return all;
}

// "name:a:b" -> the table's entry and its arguments; nullptr when the name or the arguments do not fit.
const Activation* parse(const std::string& spec, Arguments& arguments) {
  std::stringstream parts(spec);
  std::string name, part;
  std::getline(parts, name, ':');
  arguments.clear();
  while (std::getline(parts, part, ':')) {
    try {
      size_t used = 0;
      arguments.push_back(std::stod(part, &used));
      if (used != part.size()) return nullptr;
    } catch (const std::exception&) {
      return nullptr;
    }
  }
  for (const auto& a : table())
    if (name == a.name) return arguments.size() == a.arguments ? &a : nullptr;
  return nullptr;
}

}  // namespace

std::vector<std::string> activation_names() {
  std::vector<std::string> names;
  for (const auto& a : table())
    names.push_back(a.arguments == 0 ? a.name
                                     : fmt::format("{}{}", a.name, a.arguments == 1 ? ":a" : ":a:b"));
  return names;
}

void check_activation_spec(const std::string& option, const std::string& spec) {
  Arguments arguments;
  TORCH_CHECK_VALUE(parse(spec, arguments) != nullptr, "AttentionLayers: expected ", option,
                    " to name a torch.nn activation with a libtorch twin (",
                    fmt::format("{}", fmt::join(activation_names(), ", ")), "), got '", spec, "'");
}

at::Tensor named_activation(const std::string& spec, const at::Tensor& x) {
  Arguments arguments;
  const Activation* a = parse(spec, arguments);
  TORCH_CHECK_VALUE(a != nullptr, "unknown activation '", spec, "'");
  return a->apply(x, arguments);
}

}  // namespace xtc::nn::functional
