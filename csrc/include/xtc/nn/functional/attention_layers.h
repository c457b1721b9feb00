// The layer stack on explicit parameters: what both xtc::nn::AttentionLayers and the xtc::attention_layers op run.
#pragma once

#include <xtc/nn/options/attention_layers.h>

#include <ATen/core/Tensor.h>

#include <optional>

namespace xtc::nn::functional {

/// x (b, n, dim), mask (b, n) bool (True = keep). `params` in the order of AttentionLayers::named_parameters(),
/// which is x-transformers' state_dict order.
at::Tensor attention_layers(const at::Tensor& x, const std::optional<at::Tensor>& mask, at::TensorList params,
                            const AttentionLayersOptions& options, bool training);

}  // namespace xtc::nn::functional
