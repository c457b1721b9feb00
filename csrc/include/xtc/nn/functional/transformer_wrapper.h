// TransformerWrapper on explicit parameters.
//
// Shape legend: b batch, n tokens, M memory tokens, d the stack's dim, e the embedding width.
#pragma once

#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/options/transformer_wrapper.h>

namespace xtc::nn::functional {

/// What the wrapper's options and its stack's plan imply, and the layout of every tensor (x-transformers'
/// state_dict order: cls_token, memory_tokens, token_emb, pos_emb, post_emb_norm, project_emb, attn_layers.*,
/// attn_pool.*, to_logits), which xtc::nn::TransformerWrapper sets once from its module tree.
class TransformerWrapperPlan {
 public:
  TransformerWrapperPlan(TransformerWrapperOptions options, AttentionLayersPlan layers);
  /// The module tree's layout (xtc::nn::layout_of), set once by the module that built the tree.
  void set_layout(std::vector<ParameterSpec> layout);

  const TransformerWrapperOptions& options() const { return options_; }
  const AttentionLayersPlan& layers() const { return layers_; }
  const std::vector<ParameterSpec>& parameters() const { return parameters_; }
  int64_t layers_offset() const { return layers_offset_; }
  int64_t emb_dim() const { return emb_dim_; }
  bool has_abs_pos_emb() const { return has_abs_pos_emb_; }
  bool has_logits() const { return !options_.return_only_embed(); }
  /// With attn_pool deeper than 1: the options of the CrossAttender that pools, and its plan once the layout
  /// is set (its tensors at pool_offset()).
  const std::optional<AttentionLayersOptions>& pool_layers_options() const { return pool_layers_options_; }
  const std::optional<AttentionLayersPlan>& pool_layers() const { return pool_layers_; }
  int64_t pool_offset() const { return pool_offset_; }
  /// The pooled tokens' width (dim_pooled_tokens, unset = dim).
  int64_t dim_pooled() const { return options_.dim_pooled_tokens().value_or(layers_.options().dim()); }

 private:
  TransformerWrapperOptions options_;
  AttentionLayersPlan layers_;
  std::vector<ParameterSpec> parameters_;
  std::optional<AttentionLayersOptions> pool_layers_options_;
  std::optional<AttentionLayersPlan> pool_layers_;
  int64_t layers_offset_ = 0, emb_dim_ = 0, pool_offset_ = 0;
  bool has_abs_pos_emb_ = false;
};

/// x-transformers' embeddings beside the tokens' (TransformerWrapper.forward): sum_embeds (b, n, emb_dim)
/// added to the token and position embeddings, prepend_embeds (b, p, emb_dim) in front of them after
/// post_emb_norm (as in PaLI), with prepend_mask (b, p) bool joining the mask; the outputs then cover the
/// prepended positions too.
struct ExtraEmbeddings {
  std::optional<at::Tensor> sum_embeds, prepend_embeds, prepend_mask;
  /// (b, n, emb_dim): the tokens' embeddings, with external_token_emb (needed exactly then).
  std::optional<at::Tensor> token_embeds;
  /// embed_num_tokens' ids, one (b, n) integer tensor per name in the option's order (x-transformers'
  /// embed_ids); empty without them.
  std::vector<at::Tensor> embed_ids;
};

/// x-transformers' forward arguments of a recycling or looped wrapper (TransformerWrapperOptions).
struct WrapperRecurrence {
  /// recycle_steps or looped_steps; 0 = the default: max_looped_steps when looped, and with recycling a draw
  /// from 1..train_max_recycle_steps in training (refused in eval, as x-transformers).
  int64_t steps = 0;
  /// x-transformers' looped_inference (batch 1): a prompt (several tokens, no cache) runs every step and
  /// keeps each step's keys and values (TransformerWrapperRecord::looped_prompt_kv); a decoded token (one,
  /// with a cache) runs step i against step i's prompt keys (`prompt_kv`, as that record returned them) and
  /// stops once the cumulative exit probability reaches exit_threshold (unset: no early exit, as with
  /// looped_steps given).
  bool looped_inference = false;
  std::optional<double> exit_threshold;
  std::vector<at::Tensor> prompt_kv;
};

/// What the wrapper adds to the stack's intermediates (x-transformers' LayerIntermediates fields).
struct TransformerWrapperRecord {
  at::Tensor initial_embeds;             // the embeddings before emb_dropout (prepended ones included)
  at::Tensor next_embed_pred;            // add_continuous_pred_head: the next positions' predicted embeddings
  std::vector<at::Tensor> step_outputs;  // looped: each step's stack output (all_pred_logits' input)
  std::vector<at::Tensor> exit_logits;   // looped: each step's exit_gate logits (b, n, 1) where computed
  std::vector<at::Tensor> looped_prompt_kv;  // looped inference of a prompt: each step's (k, v) pairs in turn
};

/// tokens (b, n) integer ids; `inputs` the layer stack's (x-transformers passes the wrapper's other forward
/// arguments on to it): inputs.mask (b, n) bool; pos and seq_start_pos also shift the absolute positions;
/// `extra` the embeddings beside the tokens'. Returns logits (b, n, logits_dim) ((b, logits_dim) pooled), or
/// the stack's embeddings with return_embeddings / return_only_embed, or, with attn_pool over an encoder, the
/// pooled tokens (x-transformers' default output there). `record`, when given, receives the stack's
/// intermediates (x-transformers' return_intermediates), its cached_kv included.
///
/// Incremental decoding, as x-transformers: `cache.kv` holds the previous call's record->cached_kv and
/// `tokens` the whole sequence so far (cached tokens and new ones), or with cache.input_not_include_cache the
/// new tokens only (at the positions after the cached ones). The embeddings of every token are formed, only
/// the last one runs through the stack (its keys after the cached ones), and the logits are (b, 1,
/// logits_dim).
///
/// `recurrence`: recycling's and looped's forward arguments; `wrapper_record`, when given, receives what the
/// wrapper adds to the intermediates.
at::Tensor transformer_wrapper(const at::Tensor& tokens, const AttentionLayersInputs& inputs,
                               at::TensorList params, const TransformerWrapperPlan& plan, bool training,
                               bool return_embeddings, const WrapperCache& cache = {},
                               AttentionLayersHiddens* record = nullptr, const ExtraEmbeddings& extra = {},
                               const WrapperRecurrence& recurrence = {},
                               TransformerWrapperRecord* wrapper_record = nullptr);

/// x-transformers' AttentionPool: the learned queries cross-attend to `embeddings` (b, n, dim), as the
/// wrapper returns them, whose key mask is `mask` and prepend_mask (b, p) for prepend_length prepended
/// positions (the wrapper's forward arguments; either may be unset). Returns (b, num_pooled_tokens,
/// dim_pooled_tokens).
at::Tensor transformer_wrapper_attn_pool(const at::Tensor& embeddings, const std::optional<at::Tensor>& mask,
                                         const ExtraEmbeddings& extra, at::TensorList params,
                                         const TransformerWrapperPlan& plan, bool training);

/// The logits head alone: embeddings (..., dim), as transformer_wrapper returns them, to logits (tied or
/// not).
at::Tensor transformer_wrapper_logits(const at::Tensor& embeddings, at::TensorList params,
                                      const TransformerWrapperPlan& plan);

}  // namespace xtc::nn::functional
