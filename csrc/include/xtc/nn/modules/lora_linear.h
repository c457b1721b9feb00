// x-transformers' LoRALinear: a projection through a low-rank bottleneck, the attention gates' form.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/modules/torch_layers.h>

#include <optional>
#include <string>

namespace xtc::nn {

/// up(act(down(x))): `down` (rank, in) with torch's init, `up` (out, rank) zero, so the projection starts at
/// zero; act an activation spec of functional/activation.h (SiLU for the HyGA gates), unset = the identity.
class LoRALinearImpl : public torch::nn::Cloneable<LoRALinearImpl> {
 public:
  LoRALinearImpl(int64_t in_features, int64_t out_features, int64_t rank,
                 std::optional<std::string> activation = std::nullopt);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  int64_t in_features, out_features, rank;
  std::optional<std::string> activation;
  Linear down{nullptr}, up{nullptr};
};
TORCH_MODULE(LoRALinear);

/// Registers x-transformers' LoRALinear(in, out, dim=rank) on `parent` as `name`: without a rank a
/// bias-less Linear, zero-initialised (x-transformers' constructor returns one then), else a LoRALinear.
/// Returns its weights.
functional::LowRankLinearWeights register_lora_linear(torch::nn::Module& parent, const std::string& name,
                                                      int64_t in_features, int64_t out_features,
                                                      std::optional<int64_t> rank, bool silu);

}  // namespace xtc::nn
