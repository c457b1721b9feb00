// C++ API of the xtc::attention_layers op: a whole layer stack as one dispatcher op, so that a traced or
// exported model holds it as one node (shapes stay dynamic) and Python modules hand their own parameters to
// C++.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <cstddef>
#include <optional>
#include <string>

namespace xtc::ops {

/// x (b, n, dim) through the stack; `inputs` x-transformers' AttentionLayers.forward arguments (the rows of
/// XTC_STACK_INPUTS, <xtc/nn/functional/stack_inputs.h>; the decoding cache excepted: AttentionLayers::
/// forward_with runs it); params as AttentionLayers::tensors(); options the keyword arguments as a JSON
/// object, as config.json holds them or AttentionLayersOptions::serialize() writes them.
at::Tensor attention_layers(const at::Tensor& x, const nn::functional::AttentionLayersInputs& inputs,
                            at::TensorList params, const std::string& options, bool training);

/// The plans (parsed options) the layer-stack and wrapper ops hold in their caches, which keep the most
/// recently used 256 of each kind: for tests and diagnostics.
size_t cached_plans();

}  // namespace xtc::ops
