// x-transformers' self_attn_additional_kv: extra (k, v) pairs routed to the executed self-attention layers.
// Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>
#include <utility>
#include <vector>

namespace xtc::nn::functional::detail {

/// The pairs, one per executed self-attention layer in order (undefined pairs: none), checked, by
/// x-transformers' routing: to the last layers with route_additional_kv_to_top (the surplus first ones
/// dropped), else the first.
std::vector<std::pair<at::Tensor, at::Tensor>> additional_kv_per_layer(const AttentionLayersInputs& in,
                                                                       const AttentionLayersPlan& plan,
                                                                       const at::Tensor& x);

}  // namespace xtc::nn::functional::detail
