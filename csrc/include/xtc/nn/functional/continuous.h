// ContinuousTransformerWrapper on explicit parameters.
//
// Shape legend: b batch, n sequence, M memory tokens, d the stack's dim.
#pragma once

#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/transformer_wrapper.h>
#include <xtc/nn/options/continuous.h>

namespace xtc::nn::functional {

/// What the wrapper's options and its stack's plan imply, and the layout of every tensor (x-transformers'
/// state_dict order: memory_tokens, pos_emb, post_emb_norm, attn_layers.*, project_in, project_out), which
/// xtc::nn::ContinuousTransformerWrapper sets once from its module tree.
class ContinuousTransformerPlan {
 public:
  ContinuousTransformerPlan(ContinuousTransformerWrapperOptions options, AttentionLayersPlan layers);
  /// The module tree's layout (xtc::nn::layout_of), set once by the module that built the tree.
  void set_layout(std::vector<ParameterSpec> layout);

  const ContinuousTransformerWrapperOptions& options() const { return options_; }
  const AttentionLayersPlan& layers() const { return layers_; }
  const std::vector<ParameterSpec>& parameters() const { return parameters_; }
  /// Where attn_layers.* start in parameters().
  int64_t layers_offset() const { return layers_offset_; }
  bool has_abs_pos_emb() const { return has_abs_pos_emb_; }
  bool has_project_in() const { return has_project_in_; }
  bool has_project_out() const { return has_project_out_; }

 private:
  ContinuousTransformerWrapperOptions options_;
  AttentionLayersPlan layers_;
  std::vector<ParameterSpec> parameters_;
  int64_t layers_offset_ = 0;
  bool has_abs_pos_emb_, has_project_in_, has_project_out_;
};

/// x (b, n, dim_in); `inputs` the layer stack's, inputs.mask (b, n) bool or lens (b) int (at most one), pos
/// and seq_start_pos for the absolute positions only (as x-transformers); returns (b, n, dim_out), (b,
/// dim_out) with average_pool_embed, or the stack's embeddings (before project_out) with return_embeddings.
/// `extra`: sum_embeds added after the positions, prepend_embeds (b, p, dim) in front (the output keeps them:
/// (b, p + n, dim_out)) with prepend_mask, as x-transformers; token_embeds and embed_ids are the token
/// wrapper's, empty here.
/// `record` and `cache`: the stack's intermediates and incremental decoding, as
/// functional::transformer_wrapper (x then holds every position so far, or the new ones with
/// cache.input_not_include_cache, and only the last one runs).
at::Tensor continuous_transformer(const at::Tensor& x, const AttentionLayersInputs& inputs,
                                  const std::optional<at::Tensor>& lens, at::TensorList params,
                                  const ContinuousTransformerPlan& plan, bool training,
                                  bool return_embeddings, const WrapperCache& cache = {},
                                  AttentionLayersHiddens* record = nullptr,
                                  const ExtraEmbeddings& extra = {});

}  // namespace xtc::nn::functional
