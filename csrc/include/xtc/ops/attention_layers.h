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

/// x (b, n, dim); mask (b, n) bool, True = keep; context (b, m, dim) and context_mask (b, m) when
/// cross-attending; attn_mask (n, n), (h, n, n) or (b|1, h|1, n, n) bool for self-attention;
/// self_attn_kv_mask (b, n) bool and seq_start_pos (b) int for self-attention's keys, attn_bias (h, n, n) or
/// (b|1, h, n, n) added to its logits, as x-transformers (the C++ API passes no Transformer-XL mems; the op
/// takes them); params as AttentionLayers::tensors(); options as written by
/// AttentionLayersOptions::serialize().
at::Tensor attention_layers(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                            const std::optional<at::Tensor>& context,
                            const std::optional<at::Tensor>& context_mask,
                            const std::optional<at::Tensor>& attn_mask,
                            const std::optional<at::Tensor>& self_attn_kv_mask,
                            const std::optional<at::Tensor>& seq_start_pos,
                            const std::optional<at::Tensor>& attn_bias, at::TensorList params,
                            const std::string& options, bool training);

/// The same op with every forward input of x-transformers' AttentionLayers.forward (the decoding cache
/// excepted: AttentionLayers::forward_with runs it).
at::Tensor attention_layers(const at::Tensor& x, const nn::functional::AttentionLayersInputs& inputs,
                            at::TensorList params, const std::string& options, bool training);

/// The plans (parsed options) the layer-stack and wrapper ops hold in their caches, which keep the most
/// recently used 256 of each kind: for tests and diagnostics.
size_t cached_plans();

}  // namespace xtc::ops
