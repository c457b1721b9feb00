// Layer stacks: AttentionLayers and its Encoder / Decoder faces.
#pragma once

#include <xtc/nn/modules/norm.h>
#include <xtc/nn/options/attention_layers.h>

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

namespace xtc::nn {

/// x-transformers' AttentionLayers. Parameters are named and nested as in x-transformers
/// (`layers.{i}.{0: norms, 1: block}`, `final_norm`), so a state_dict moves between the two unchanged.
class AttentionLayersImpl : public torch::nn::Cloneable<AttentionLayersImpl> {
 public:
  explicit AttentionLayersImpl(AttentionLayersOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x (b, n, dim) float, mask (b, n) bool with True = keep (undefined = no mask); returns (b, n, dim).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {});

  AttentionLayersOptions options;
  torch::nn::ModuleList layers{nullptr};
  LayerNorm final_norm{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(at::Tensor())})
};
TORCH_MODULE(AttentionLayers);

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

}  // namespace xtc::nn
