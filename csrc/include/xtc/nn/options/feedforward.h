// Options of the feed-forward block (x-transformers' `ff_*` keyword arguments, prefix stripped).
#pragma once

#include <torch/arg.h>

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
  /// SiLU instead of GELU (Ramachandran et al. 2017, arXiv 1710.05941).
  TORCH_ARG(bool, swish) = false;
  /// relu(x)^2 (So et al. 2021, Primer, arXiv 2109.08668).
  TORCH_ARG(bool, relu_squared) = false;
  /// LayerNorm after the activation (NormFormer, arXiv 2110.09456).
  TORCH_ARG(bool, post_act_ln) = false;
  /// No biases on the input (non-GLU) and output projections.
  TORCH_ARG(bool, no_bias) = false;
  /// Dropout after the activation (training only).
  TORCH_ARG(double, dropout) = 0.0;
  /// Output projection initialised to zero (set by AttentionLayers' zero_init_branch_output).
  TORCH_ARG(bool, zero_init_output) = false;
};

}  // namespace xtc::nn
