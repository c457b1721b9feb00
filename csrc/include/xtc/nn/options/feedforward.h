// Options of the feed-forward block (x-transformers' `ff_*` keyword arguments, prefix stripped).
#pragma once

#include <torch/arg.h>

namespace xtc::nn {

/// Position-wise MLP with GELU (Hendrycks & Gimpel 2016, arXiv 1606.08415), as x-transformers' `FeedForward`.
struct FeedForwardOptions {
  /// Inner width = int(dim * mult).
  TORCH_ARG(double, mult) = 4.0;
  /// Dropout after the activation (training only).
  TORCH_ARG(double, dropout) = 0.0;
};

}  // namespace xtc::nn
