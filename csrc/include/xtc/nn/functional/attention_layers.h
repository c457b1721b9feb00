// The layer stack on explicit parameters: what both xtc::nn::AttentionLayers and the xtc::attention_layers op
// run.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/stack_inputs.h>
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

/// What options imply, worked out once: layer kinds, execution order and ALiBi slopes, beside the parameter
/// layout (x-transformers' names and order). xtc::nn::AttentionLayers builds it, from its validated options
/// and its own module tree's layout (xtc::nn::layout_of): the layout is declared once, by the modules.
class AttentionLayersPlan {
 public:
  AttentionLayersPlan(AttentionLayersOptions options, std::vector<ParameterSpec> layout);

  const AttentionLayersOptions& options() const { return options_; }
  const std::vector<ParameterSpec>& parameters() const { return parameters_; }
  const std::vector<char>& layer_types() const { return layer_types_; }
  const std::vector<int64_t>& execution_order() const { return execution_order_; }
  /// The kind ('a' self, 'c' cross) of each attention layer in execution order: the order of the cached_kv
  /// pairs and attention maps.
  const std::string& executed_attention_types() const { return executed_attention_types_; }
  /// Whether each executed attention layer keeps a hybrid GRU state in the cache: the cached_kv list holds
  /// those states after every (k, v) pair, in this order.
  const std::vector<bool>& executed_hybrid_states() const { return executed_hybrid_states_; }
  /// With unet_skips, for each layer the executed step whose input joins it (-1: none;
  /// options().unet_skip_sources()).
  const std::vector<int64_t>& unet_skip_sources() const { return unet_skip_sources_; }
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
  std::vector<int64_t> unet_skip_sources_;
  std::string executed_attention_types_;
  std::vector<bool> executed_hybrid_states_;
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

/// The forward inputs of a layer stack, as x-transformers' AttentionLayers.forward names them: one field per
/// row of XTC_STACK_INPUTS (stack_inputs.h, where each is documented), then the decoding cache.
struct AttentionLayersInputs {
  XTC_STACK_INPUTS(XTC_STACK_INPUT_FIELD)
  /// Incremental decoding (causal stacks): x-transformers' cached_kv of the previous call, one (k, v) pair
  /// per executed attention layer, flattened [k0, v0, k1, v1, ...], k (b, hk, N, dh) and v (b, hk, N, dv),
  /// then each hybrid GRU's state (layers x directions, b, hidden; plan.executed_hybrid_states());
  /// empty = no cache. With one, only the last `cache_age` tokens of x run (all when cache_age <= 0), `mask`
  /// and self_attn_kv_mask cover the cached and new keys (b, N + new), and positions continue from
  /// cache_length.
  std::vector<at::Tensor> cache_kv;
  int64_t cache_length = 0;
  int64_t cache_age = 1;
};

/// The intermediates x-transformers returns with return_hiddens: the residual stream entering each executed
/// self-attention layer (`hiddens`) and each executed layer, then before the final norm (`layer_hiddens`).
/// cached_kv: each executed attention layer's keys and values, cached ones included, flattened as
/// AttentionLayersInputs::cache_kv (the cache for the next step), then the hybrid GRU states. attn_maps: each
/// executed attention layer's qk_similarities, pre_softmax_attn and post_softmax_attn (AttentionMaps),
/// flattened; as x-transformers, only layers without attn_flash (or cross_attn_flash) and without attn_linear
/// have them, the others give empty tensors. Asking for the maps makes those layers materialise their scores.
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
