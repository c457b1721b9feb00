// Options of the feed-forward block (x-transformers' `ff_*` keyword arguments, prefix stripped).
#pragma once

#include <torch/arg.h>

#include <optional>
#include <string>

namespace xtc::nn {

/// Position-wise MLP, as x-transformers' `FeedForward`: GELU (Hendrycks & Gimpel 2016, arXiv 1606.08415)
/// unless another activation is chosen.
struct FeedForwardOptions {
  /// Inner width = int(dim * mult).
  TORCH_ARG(double, mult) = 4.0;
  /// Gated linear unit (Shazeer 2020, arXiv 2002.05202): one projection to 2 x inner, up * act(gate).
  TORCH_ARG(bool, glu) = false;
  /// A learned per-feature multiplier on the GLU output.
  TORCH_ARG(bool, glu_mult_bias) = false;
  /// Another torch.nn activation, by name (xtc/nn/functional/activation.h: "relu", "gelu_tanh",
  /// "leaky_relu:0.1", ...): x-transformers' custom_activation given a module with a libtorch twin. It takes
  /// the place of swish, relu_squared and solu, so those are refused beside it.
  TORCH_ARG(std::optional<std::string>, custom_activation) = std::nullopt;
  /// SiLU instead of GELU (Ramachandran et al. 2017, arXiv 1710.05941).
  TORCH_ARG(bool, swish) = false;
  /// relu(x)^2 (So et al. 2021, Primer, arXiv 2109.08668).
  TORCH_ARG(bool, relu_squared) = false;
  /// SoLU: LayerNorm(softmax(x) * x) (Elhage et al. 2022, Anthropic's softmax linear units); its LayerNorm
  /// learns a gain (`norm.gamma`). Not with relu_squared.
  TORCH_ARG(bool, solu) = false;
  /// Soft-clamps the (non-GLU) input projection before the activation: value * tanh(x / value).
  TORCH_ARG(std::optional<double>, softclamp_value) = std::nullopt;
  /// GLU with a soft-clamped linear factor (situ-GLU): up := softclamp(up, glu_up_softclamp_value) and the
  /// gate's activation act(g) = g * phi(g) becomes softclamp(g, glu_gate_softclamp_value) * phi(g), phi the
  /// normal CDF (GELU) or the sigmoid (swish); needs glu and one of those two activations.
  TORCH_ARG(bool, glu_softclamp) = false;
  TORCH_ARG(double, glu_gate_softclamp_value) = 4.0;
  TORCH_ARG(double, glu_up_softclamp_value) = 25.0;
  /// LayerNorm after the activation (NormFormer, arXiv 2110.09456).
  TORCH_ARG(bool, post_act_ln) = false;
  /// No biases on the input (non-GLU) and output projections.
  TORCH_ARG(bool, no_bias) = false;
  /// Dropout after the activation (training only).
  TORCH_ARG(double, dropout) = 0.0;
  /// Dropout on the block's output, after the output projection (training only).
  TORCH_ARG(double, sublayer_dropout) = 0.0;
  /// Output projection initialised to zero (set by AttentionLayers' zero_init_branch_output).
  TORCH_ARG(bool, zero_init_output) = false;
  /// Otherwise, the output projection's weight drawn from N(0, 1 / (2 fan_in depth)) (set per block by
  /// AttentionLayers' depth_scale_residual; not an option of the stack's own).
  TORCH_ARG(std::optional<int64_t>, output_proj_depth) = std::nullopt;
};

}  // namespace xtc::nn
