// Layer stacks: AttentionLayers and its Encoder / Decoder / CrossAttender faces.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/options/attention_layers.h>

#include <memory>

namespace xtc::nn {

/// x-transformers' AttentionLayers. Parameters are named and nested as in x-transformers
/// (`layers.{i}.{0: norms (pre, sandwich, post slots), 1: block, 2: residual}`, `final_norm`), so a
/// state_dict moves between the two unchanged.
class AttentionLayersImpl : public torch::nn::Cloneable<AttentionLayersImpl> {
 public:
  explicit AttentionLayersImpl(AttentionLayersOptions options);
  void reset() override;
  /// reset()'s layers, their integrators (layer_integrators) and U-Net combines (into `combines`).
  void register_layers(torch::nn::Module& combines);
  void pretty_print(std::ostream& stream) const override;
  /// x (b, n, dim) float; mask (b, n) bool, True = keep; context (b, m, dim) and context_mask (b, m) when
  /// cross-attending; attn_mask (n, n), (h, n, n) or (b|1, h|1, n, n) bool for self-attention. Undefined
  /// tensors mean "none". Returns (b, n, dim).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {}, const at::Tensor& context = {},
                     const at::Tensor& context_mask = {}, const at::Tensor& attn_mask = {});
  /// Every forward argument of x-transformers (self_attn_kv_mask, seq_start_pos, attn_bias, mems, pos, and
  /// the cache of incremental decoding: see functional::AttentionLayersInputs). With `record`
  /// (return_hiddens) it also returns the hiddens, each attention layer's cached_kv (pass them back as
  /// inputs.cache_kv, with cache_length the positions decoded so far, to decode the next tokens) and the
  /// attention maps.
  at::Tensor forward_with(const at::Tensor& x, const functional::AttentionLayersInputs& inputs,
                          functional::AttentionLayersHiddens* record = nullptr);

  AttentionLayersOptions options;
  /// What the options imply, with this module tree's layout (built with the tree, once).
  std::shared_ptr<const functional::AttentionLayersPlan> plan;
  torch::nn::ModuleList layers{nullptr};
  std::shared_ptr<torch::nn::Module> rotary_pos_emb, rel_pos, final_norm;
  /// Parameters and buffers in the plan's order: what the functional math reads.
  std::vector<at::Tensor> tensors() const;

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())}, {2, torch::nn::AnyValue(at::Tensor())},
                           {3, torch::nn::AnyValue(at::Tensor())}, {4, torch::nn::AnyValue(at::Tensor())})
};
TORCH_MODULE(AttentionLayers);

/// The plan of a stack with these options, its layout that of a module tree built on meta (nothing
/// allocated): what the ops cache and Python construction reads.
std::shared_ptr<const functional::AttentionLayersPlan> meta_plan(const AttentionLayersOptions& options);

/// The module's parameters and buffers in the order of `specs` (a plan's layout); throws if one is missing.
std::vector<at::Tensor> tensors_in_layout(const torch::nn::Module& module,
                                          const std::vector<functional::ParameterSpec>& specs);

/// Bidirectional layer stack (x-transformers' Encoder): AttentionLayers with causal = false.
class EncoderImpl : public AttentionLayersImpl {
 public:
  explicit EncoderImpl(AttentionLayersOptions options);
};
TORCH_MODULE(Encoder);

/// Causal layer stack (x-transformers' Decoder): AttentionLayers with causal = true.
class DecoderImpl : public AttentionLayersImpl {
 public:
  explicit DecoderImpl(AttentionLayersOptions options);
};
TORCH_MODULE(Decoder);

/// Cross-attention only (x-transformers' CrossAttender): blocks ('c', 'f') over a context.
class CrossAttenderImpl : public AttentionLayersImpl {
 public:
  explicit CrossAttenderImpl(AttentionLayersOptions options);
};
TORCH_MODULE(CrossAttender);

}  // namespace xtc::nn
