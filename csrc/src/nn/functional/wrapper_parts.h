// Pieces the wrappers (ContinuousTransformerWrapper, TransformerWrapper) share, as x-transformers computes
// them. Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace xtc::nn::functional::detail {

/// The tensor called `name` in a wrapper's layout (undefined when the options leave it out), its shape
/// checked.
at::Tensor find_tensor(const char* owner, const std::vector<ParameterSpec>& specs, at::TensorList params,
                       const std::string& name);

/// Where the entries under `prefix` (a submodule's, as "attn_layers.") start in a wrapper's layout.
int64_t layout_offset(const char* owner, const std::vector<ParameterSpec>& specs, const std::string& prefix);

/// The entries of `layout` under `prefix`, the prefix removed: a submodule's own layout.
std::vector<ParameterSpec> sublayout(const std::vector<ParameterSpec>& layout, const std::string& prefix);

/// The positions of a wrapper's n tokens, as x-transformers' position embeddings take them: the stack inputs'
/// custom `pos` ((n) or (b, n) integers) or 0..n-1, minus the left padding seq_start_pos (b) per row, clamped
/// at 0 for the learned table (`clamp`); (n) or (b, n) int64. `offset` shifts the default range (not a custom
/// pos); under context parallelism the default is the shard's positions in the whole sequence.
at::Tensor wrapper_positions(const char* wrapper, const c10::SymInt& n, const AttentionLayersInputs& inputs,
                             const at::Tensor& like, bool clamp, int64_t offset = 0);

/// One past the last position of a wrapper's n tokens after `offset` (a cache's): under context parallelism
/// (xtc/nn/functional/context_parallel.h) the whole sequence's length, agreed by every rank on `device`.
c10::SymInt positions_end(const c10::SymInt& n, int64_t offset, c10::Device device);

/// Under context parallelism, refuses the wrapper's options and inputs in `used` (name, whether used): those
/// that need the whole sequence in one place. Nothing otherwise.
void refuse_when_sharded(const char* wrapper, std::initializer_list<std::pair<const char*, bool>> used);

/// AbsolutePositionalEmbedding at `positions` (int64, any shape): table rows times dim^-0.5, or l2-normalised
/// rows.
at::Tensor absolute_positions(const at::Tensor& table, const at::Tensor& positions, bool l2norm);

/// ScaledSinusoidalEmbedding at `positions`: [sin, cos] of positions times 10000^-(k / (dim / 2)), times the
/// learned scale.
at::Tensor scaled_sinusoidal_positions(const at::Tensor& scale, const at::Tensor& positions, int64_t dim,
                                       const at::Tensor& like);

/// Prepends learned tokens (memory or [CLS]) (M, dim) to x (b, n, dim), and True to the mask when there is
/// one.
void prepend_memory(at::Tensor& x, std::optional<at::Tensor>& mask, const at::Tensor& memory_tokens);

/// x (b, n, width) plus sum_embeds when given: anything of x's dtype broadcasting over it
/// (NonAutoregressiveWrapper adds a (width,) null embedding).
at::Tensor add_sum_embeds(const char* wrapper, const at::Tensor& x,
                          const std::optional<at::Tensor>& sum_embeds);

/// Checks prepend_embeds (b, prefix, width) against x (b, n, width): x's batch, width, dtype and device.
void check_prepend_embeds(const char* wrapper, const at::Tensor& prepend_embeds, const at::Tensor& x);

/// The key mask over [prepend_embeds, the n positions] (b, prefix + n) when either mask is given, as
/// x-transformers pads them (ones where one is missing); `mask` as given otherwise.
std::optional<at::Tensor> mask_with_prepend(const char* wrapper, const std::optional<at::Tensor>& mask,
                                            const std::optional<at::Tensor>& prepend_embeds,
                                            const std::optional<at::Tensor>& prepend_mask,
                                            const c10::SymInt& b, const c10::SymInt& n,
                                            const at::Tensor& like);

/// torch-einops-utils' masked_mean over the sequence: sum of kept positions / max(count, 1e-5); plain mean
/// without a mask.
at::Tensor masked_mean(const at::Tensor& x, const std::optional<at::Tensor>& mask);

/// F.normalize over the last dim.
at::Tensor l2norm(const at::Tensor& x);

/// The layer stack's inputs from a wrapper: the caller's (context, attn_mask, pos, ...), the key mask after
/// the memory tokens and, for incremental decoding, the previous call's cache. As x-transformers' wrappers,
/// the input holds the whole sequence so far (the n positions, cached ones included; only the new ones with
/// input_not_include_cache) and only the last one runs; memory tokens and pooling are refused with a cache,
/// and the per-token inputs with memory tokens.
AttentionLayersInputs stack_inputs(const char* wrapper, const AttentionLayersInputs& given,
                                   const std::optional<at::Tensor>& mask, const WrapperCache& cache,
                                   const c10::SymInt& n, bool memory, bool pooling);

}  // namespace xtc::nn::functional::detail
