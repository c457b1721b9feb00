// TransformerWrapper: token embedding, positions, a layer stack and a logits head.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/transformer_wrapper.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/options/transformer_wrapper.h>

namespace xtc::nn {

/// x-transformers' TransformerWrapper around an AttentionLayers, with its parameter names (`memory_tokens`,
/// `token_emb.emb.weight`, `pos_emb.*`, `post_emb_norm.gamma`, `project_emb.*`, `attn_layers.*`,
/// `to_logits.weight`).
class TransformerWrapperImpl : public torch::nn::Cloneable<TransformerWrapperImpl> {
 public:
  TransformerWrapperImpl(TransformerWrapperOptions options, AttentionLayers attn_layers);
  /// Any stack: Encoder, Decoder, CrossAttender.
  template <typename Stack>
  TransformerWrapperImpl(TransformerWrapperOptions options, const torch::nn::ModuleHolder<Stack>& stack)
      : TransformerWrapperImpl(std::move(options),
                               AttentionLayers(std::static_pointer_cast<AttentionLayersImpl>(stack.ptr()))) {}
  void reset() override;
  /// reset()'s last step: mixture of softmaxes' projections and the logits head(s).
  void register_logits_heads(int64_t dim);
  /// tokens (b, n) integer ids; mask (b, n) bool. Returns logits (b, n, logits_dim), or embeddings.
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& mask = {}, bool return_embeddings = false);
  /// Every other forward argument: the stack's inputs (context, pos, ...) and the embeddings beside the
  /// tokens' (sum_embeds, prepend_embeds, and token_embeds with external_token_emb), and recycling's or
  /// looped's steps; see functional::transformer_wrapper.
  at::Tensor forward_with(const at::Tensor& tokens, const functional::AttentionLayersInputs& inputs,
                          const functional::ExtraEmbeddings& extra, bool return_embeddings = false,
                          const functional::WrapperRecurrence& recurrence = {});
  /// Parameters and buffers in the plan's order.
  std::vector<at::Tensor> tensors() const;

  TransformerWrapperOptions options;
  AttentionLayers attn_layers;
  std::shared_ptr<const functional::TransformerWrapperPlan> plan;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())}, {2, torch::nn::AnyValue(false)})
};
TORCH_MODULE(TransformerWrapper);

}  // namespace xtc::nn
