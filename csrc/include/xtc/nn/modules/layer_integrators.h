// x-transformers' layer integrators (its `layer_integrators`): DynamicLIMe (integrate_layers) and
// AttentionResidual (attn_aggregated_residuals), which build a layer's input from every earlier layer's.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/layer_integrators.h>
#include <xtc/nn/modules/lora_linear.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/torch_layers.h>

#include <optional>
#include <string>

namespace xtc::nn {

/// x-transformers' DynamicLIMe over `num_layers` layer inputs: `to_weights` is its Sequential of an RMSNorm
/// (`0.g`) and the Linear (`1.weight`, `1.bias`) to views x num_layers weights (functional::dynamic_lime).
class DynamicLIMeImpl : public torch::nn::Cloneable<DynamicLIMeImpl> {
 public:
  DynamicLIMeImpl(int64_t dim, int64_t num_layers, int64_t views = 1, bool use_softmax = true);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  functional::DynamicLIMeWeights weights() const;
  /// hiddens: the layers' inputs so far, (b, n, d) each, x's last.
  at::Tensor forward(const at::Tensor& x, at::TensorList hiddens);

  int64_t dim, num_layers, views;
  bool use_softmax;
  RMSNorm norm{nullptr};
  Linear linear{nullptr};
};
TORCH_MODULE(DynamicLIMe);

/// x-transformers' AttentionResidual: `to_keys` and `norm` torch RMSNorms, `to_query` a Sequential of a
/// torch RMSNorm and a LoRALinear (dim -> views dim, rank lora_rank) (functional::attention_residual).
class AttentionResidualImpl : public torch::nn::Cloneable<AttentionResidualImpl> {
 public:
  AttentionResidualImpl(int64_t dim, int64_t views = 1, int64_t lora_rank = 64,
                        std::optional<std::string> lora_activation = std::nullopt);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  functional::AttentionResidualWeights weights() const;
  at::Tensor forward(at::TensorList hiddens);

  int64_t dim, views, lora_rank;
  std::optional<std::string> lora_activation;
  TorchRMSNorm to_keys{nullptr}, query_input_norm{nullptr}, norm{nullptr};
  LoRALinear query_lora{nullptr};
};
TORCH_MODULE(AttentionResidual);

}  // namespace xtc::nn
