// The layer stack on explicit parameters: what both xtc::nn::AttentionLayers and the xtc::attention_layers op
// run.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace xtc::nn::functional {

/// One tensor of the stack: its x-transformers state_dict name, shape, and whether it is a (persistent)
/// buffer rather than a parameter.
struct ParameterSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool buffer = false;
};

/// What options imply, worked out once: layer kinds, execution order, the parameter layout (x-transformers'
/// names and order, which the C++ module reproduces and checks) and ALiBi slopes.
class AttentionLayersPlan {
 public:
  explicit AttentionLayersPlan(AttentionLayersOptions options);

  const AttentionLayersOptions& options() const { return options_; }
  const std::vector<ParameterSpec>& parameters() const { return parameters_; }
  const std::vector<char>& layer_types() const { return layer_types_; }
  const std::vector<int64_t>& execution_order() const { return execution_order_; }
  /// The kind ('a' self, 'c' cross) of each attention layer in execution order: the order of the cached_kv
  /// pairs and attention maps.
  const std::string& executed_attention_types() const { return executed_attention_types_; }
  /// Per-head ALiBi slopes (x-transformers' geometric series, zero past alibi_num_heads); empty without
  /// ALiBi.
  const std::vector<double>& alibi_slopes() const { return alibi_slopes_; }
  /// Each layer's block options (options().layer_attention / layer_feed_forward, resolved once): what the
  /// forward reads per layer, without walking the layer kinds at every call.
  const AttentionOptions& layer_attention(size_t layer) const { return layer_attention_.at(layer); }
  const FeedForwardOptions& layer_feed_forward(size_t layer) const { return layer_feed_forward_.at(layer); }
  /// Where layer `layer`'s block sits in the state_dict ("layers.<i>.1." plus a ".fn" per wrapper around it).
  const std::string& block_prefix(size_t layer) const { return block_prefixes_.at(layer); }
  /// Position of `name` in parameters(), or -1.
  int64_t index(const std::string& name) const;

 private:
  AttentionLayersOptions options_;
  std::vector<char> layer_types_;
  std::vector<int64_t> execution_order_;
  std::string executed_attention_types_;
  std::vector<ParameterSpec> parameters_;
  std::unordered_map<std::string, int64_t> index_;
  std::vector<double> alibi_slopes_;
  std::vector<AttentionOptions> layer_attention_;       // per layer; the common attn() for feed-forwards
  std::vector<FeedForwardOptions> layer_feed_forward_;  // per layer; the common ff() for attention layers
  std::vector<std::string> block_prefixes_;
};

/// x-transformers' flash_pack_seq_kwargs (FlashAttention's varlen arguments): the rows of x (1, total, dim),
/// or of the context, hold sequences end to end; queries of sequence i at cu_seqlens_q[i] .. cu_seqlens_q[i +
/// 1], its keys at cu_seqlens_k[i] .. cu_seqlens_k[i + 1] (integer offsets from 0), lengths at most
/// max_seqlen_q / _k.
struct FlashPackSeq {
  at::Tensor cu_seqlens_q, cu_seqlens_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
};

/// The optional forward inputs of a layer stack, as x-transformers' AttentionLayers.forward names them.
struct AttentionLayersInputs {
  std::optional<at::Tensor> mask;     // (b, n) bool, True = keep: self-attention keys, zeroed query outputs
  std::optional<at::Tensor> context;  // (b, m, dim), with cross_attend
  std::optional<at::Tensor> context_mask;  // (b, m) bool, cross-attention keys
  std::optional<at::Tensor> attn_mask;     // (n, n), (h, n, n) or (b|1, h|1, n, n) bool, True = may attend
  std::optional<at::Tensor> self_attn_kv_mask;  // (b, n) bool: self-attention's key mask instead of `mask`
  std::optional<at::Tensor> seq_start_pos;      // (b) int: left padding, keys before it are hidden
  std::optional<at::Tensor> attn_bias;  // (h, n, n) or (b|1, h, n, n) float added to self-attention's logits
  /// Transformer-XL memories: one (b, M, dim) per executed self-attention layer, in order (fewer: the rest
  /// get none), pre-normed with that layer's norm and prepended to its keys and values; mem_masks (b, M) bool
  /// each.
  std::vector<at::Tensor> mems;
  std::vector<std::optional<at::Tensor>> mem_masks;
  /// Incremental decoding (causal stacks): x-transformers' cached_kv of the previous call, one (k, v) pair
  /// per executed attention layer, flattened [k0, v0, k1, v1, ...], k (b, hk, N, dh) and v (b, hk, N, dv);
  /// empty = no cache. With one, only the last `cache_age` tokens of x run (all when cache_age <= 0), `mask`
  /// and self_attn_kv_mask cover the cached and new keys (b, N + new), and positions continue from
  /// cache_length.
  std::vector<at::Tensor> cache_kv;
  int64_t cache_length = 0;
  int64_t cache_age = 1;
  /// Custom integer positions of the self-attention keys, (N) or (b, N) (x-transformers' `pos`): rotary (and
  /// xPos) take them instead of 0, 1, ... (q the last n), ALiBi becomes -|pos_j - pos_i| * slope (N = n
  /// then); not with rel_pos_bias or dynamic_pos_bias (x-transformers refuses those too).
  std::optional<at::Tensor> pos;
  /// Packed sequences (layers with attn_flash_pack_seq / cross_attn_flash_pack_seq): x (1, total, dim) laid
  /// out by flash_pack_seq (self-attention, whose cu_seqlens_q and _k are then one layout) or by
  /// flash_pack_seq_context's queries, the context (1, total_context, dim) by flash_pack_seq_context's keys.
  /// Not with masks, attn_mask, attn_bias, mems or a cache (x-transformers' rules).
  std::optional<FlashPackSeq> flash_pack_seq, flash_pack_seq_context;
  /// x-transformers' per-call causal override of self-attention (unset = the stack's); a cache still needs a
  /// causal stack, and token shifts and T5 buckets keep the stack's causality, as x-transformers builds them.
  std::optional<bool> causal;
  /// (b, dim_condition) or (b, n, dim_condition): what the adaptive norms and layerscale read (needed exactly
  /// when the options have one).
  std::optional<at::Tensor> condition;
  /// (b, dim) or (b, n, dim) added to every branch's input (x-transformers' in-attention conditioning; gated
  /// by learned_reinject_input_gate when set); not with reinject_input.
  std::optional<at::Tensor> in_attn_cond;
  /// Integer positions of the context, (m) or (b, m) (x-transformers' context_pos): with rotary,
  /// cross-attention then rotates its queries by the tokens' positions and its keys by these; needs rotary
  /// and cross_attend.
  std::optional<at::Tensor> context_pos;
  /// x-transformers' self_attn_additional_kv (say another model's cached_kv): (k, v) pairs flattened [k0, v0,
  /// k1, v1, ...], k (b, ha, l, dh) and v (b, ha, l, dv), ha dividing heads, for the executed self-attention
  /// layers: the last ones with route_additional_kv_to_top (as many as there are pairs), else the first. Each
  /// joins its layer's keys in front (ExtraKeyValues), with additional_kv_mask (b, l) bool over every pair's
  /// keys.
  std::vector<at::Tensor> self_attn_additional_kv;
  std::optional<at::Tensor> additional_kv_mask;
  bool route_additional_kv_to_top = true;
  /// x-transformers' self_attn_kv_residuals / cross_attn_kv_residuals: added to the keys' and values' input
  /// of the self- (cross-) attention layers, (b, n | m, dim | dim_context) for the first executed one only,
  /// or (L, b, n | m, dim | dim_context) for the first L; a length of 1 broadcasts.
  std::optional<at::Tensor> self_attn_kv_residuals, cross_attn_kv_residuals;
};

/// The intermediates x-transformers returns with return_hiddens: the residual stream entering each executed
/// self-attention layer (`hiddens`) and each executed layer, then before the final norm (`layer_hiddens`).
/// cached_kv: each executed attention layer's keys and values, cached ones included, flattened as
/// AttentionLayersInputs::cache_kv (the cache for the next step). attn_maps: each executed attention layer's
/// qk_similarities, pre_softmax_attn and post_softmax_attn (AttentionMaps), flattened; as x-transformers,
/// only layers without attn_flash (or cross_attn_flash) and without attn_linear have them, the others give
/// empty tensors. Asking for the maps makes those layers materialise their scores.
struct AttentionLayersHiddens {
  std::vector<at::Tensor> hiddens, layer_hiddens, cached_kv, attn_maps;
};

/// Incremental decoding through a wrapper (TransformerWrapper, ContinuousTransformerWrapper): the previous
/// call's record->cached_kv (empty = no cache), and whether the input holds only the new positions
/// (x-transformers' input_not_include_cache: their positions then continue after the cached ones) instead of
/// every position so far.
struct WrapperCache {
  WrapperCache(std::vector<at::Tensor> kv = {}, bool input_not_include_cache = false)
      : kv(std::move(kv)), input_not_include_cache(input_not_include_cache) {}
  std::vector<at::Tensor> kv;
  bool input_not_include_cache = false;
  /// The positions already cached (0 without a cache): keys (b, hk, N, dh) of the first layer.
  int64_t cached_length() const;
};

/// x (b, n, dim) through the stack. `params`: the parameters and buffers in plan.parameters() order
/// (x-transformers' state_dict order). `record`, when given, receives the intermediates.
at::Tensor attention_layers(const at::Tensor& x, const AttentionLayersInputs& inputs, at::TensorList params,
                            const AttentionLayersPlan& plan, bool training,
                            AttentionLayersHiddens* record = nullptr);

}  // namespace xtc::nn::functional
