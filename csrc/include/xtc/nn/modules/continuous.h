// ContinuousTransformerWrapper: a layer stack over continuous vectors with projections, positions, memory
// tokens.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/continuous.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/options/continuous.h>

namespace xtc::nn {

/// x-transformers' ContinuousTransformerWrapper around an AttentionLayers (Encoder, Decoder, ...), with its
/// parameter names (`memory_tokens`, `pos_emb.emb.weight`, `post_emb_norm.gamma`, `attn_layers.*`,
/// `project_in.weight`, `project_out.weight`).
class ContinuousTransformerWrapperImpl : public torch::nn::Cloneable<ContinuousTransformerWrapperImpl> {
 public:
  ContinuousTransformerWrapperImpl(ContinuousTransformerWrapperOptions options, AttentionLayers attn_layers);
  /// Any stack: Encoder, Decoder, CrossAttender.
  template <typename Stack>
  ContinuousTransformerWrapperImpl(ContinuousTransformerWrapperOptions options,
                                   const torch::nn::ModuleHolder<Stack>& stack)
      : ContinuousTransformerWrapperImpl(
            std::move(options), AttentionLayers(std::static_pointer_cast<AttentionLayersImpl>(stack.ptr()))) {
  }
  void reset() override;
  /// x (b, n, dim_in); mask (b, n) bool or lens (b) int; returns (b, n, dim_out) ((b, dim_out) when pooled).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {}, const at::Tensor& lens = {},
                     bool return_embeddings = false);
  /// Parameters and buffers in the plan's order.
  std::vector<at::Tensor> tensors() const;

  ContinuousTransformerWrapperOptions options;
  AttentionLayers attn_layers;
  std::shared_ptr<const functional::ContinuousTransformerPlan> plan;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())}, {2, torch::nn::AnyValue(at::Tensor())},
                           {3, torch::nn::AnyValue(false)})
};
TORCH_MODULE(ContinuousTransformerWrapper);

}  // namespace xtc::nn
