// The layer stack's checks of its forward inputs (shapes, dtypes, devices, combinations), each error naming
// the argument, the expected and the actual value. Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>
#include <vector>

namespace xtc::nn::functional::detail {

/// x (b, n, dim), `mask`, and the context with its mask against the options (key_length, when not null: with
/// a cache, the cached and new keys that `mask` covers).
void check_inputs(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                  const std::optional<at::Tensor>& context, const std::optional<at::Tensor>& context_mask,
                  const AttentionLayersOptions& o, const c10::SymInt* key_length);
/// A (b, length) bool key mask; `length` is seq's, or with a cache the cached and new keys together.
void check_mask(const char* name, const std::optional<at::Tensor>& mask, const at::Tensor& seq,
                const c10::SymInt* length = nullptr);
/// x-transformers' attn_mask shapes (i, j), (h, i, j) and (b|1, h|1, i, j), as a 4-D bool mask.
std::optional<at::Tensor> normalized_attn_mask(const std::optional<at::Tensor>& attn_mask,
                                               const at::Tensor& x, int64_t heads);
/// x-transformers' attn_bias, (h, i, j) or (b|1, h, i, j), as one (b|1, h, n, n) tensor.
at::Tensor normalized_attn_bias(const at::Tensor& bias, const at::Tensor& x, const AttentionLayersOptions& o);
/// Transformer-XL memories: one (b, M, dim) per self-attention layer at most, masks (b, M) bool.
void check_memories(const std::vector<at::Tensor>& mems,
                    const std::vector<std::optional<at::Tensor>>& mem_masks, const at::Tensor& x,
                    const AttentionLayersPlan& plan, bool dense_pattern);
/// A per-call tensor read at every token (a conditioning input, a kv residual) as (b, 1 | n', width), n'
/// the tokens this call runs; (b, width) accepted where `per_sequence`.
at::Tensor per_token_input(const char* name, const at::Tensor& t, const at::Tensor& x_in,
                           const c10::SymInt& n_in, int64_t width, bool per_sequence);
/// x-transformers' kv residuals of one kind: (b, n, d) for the first layer only, or (L, b, n, d) for the
/// first L.
std::vector<at::Tensor> kv_residual_list(const char* name, const std::optional<at::Tensor>& residuals);
/// cross_attn_kv_residuals against the context: (b|1, m|1, dim_context) each.
void check_cross_kv_residuals(const std::vector<at::Tensor>& residuals,
                              const std::optional<at::Tensor>& context, const AttentionLayersOptions& o);

}  // namespace xtc::nn::functional::detail
