// The torch.nn activations a feed-forward may take by name (x-transformers' ff_custom_activation given a
// torch.nn module with a libtorch twin): one table, read by the options' check and by the feed-forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace xtc::nn::functional {

/// The activation `spec` names on x. A spec is a name, with its arguments after colons where it takes any:
/// "relu", "gelu" (exact), "gelu_tanh", "silu", "sigmoid", "tanh", "mish", "softsign", "selu", "relu6",
/// "hardswish", "hardsigmoid", "tanhshrink", "logsigmoid", "identity", "relu_squared" (x-transformers'
/// ReluSquared), "elu:alpha", "celu:alpha", "leaky_relu:slope", "hardtanh:min:max",
/// "softplus:beta:threshold".
at::Tensor named_activation(const std::string& spec, const at::Tensor& x);

/// Checks a spec: a known name with as many numeric arguments as it takes; the error names `option`.
void check_activation_spec(const std::string& option, const std::string& spec);

/// The specs' names, for messages.
std::vector<std::string> activation_names();

}  // namespace xtc::nn::functional
