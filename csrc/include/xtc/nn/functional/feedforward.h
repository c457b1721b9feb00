// The feed-forward block on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/feedforward.h>

namespace xtc::nn::functional {

/// The feed-forward block's tensors; undefined where the options leave one out.
struct FeedForwardWeights {
  at::Tensor proj_in_weight, proj_in_bias;  // (inner, dim) or, with glu, (2 inner, dim)
  at::Tensor glu_mult_bias;                 // (inner)
  at::Tensor solu_gamma;                    // (inner), SoLU's LayerNorm gain
  at::Tensor post_act_gamma;                // (inner), LayerNorm gain without unit offset
  at::Tensor proj_out_weight, proj_out_bias;
};

/// x (..., dim) -> proj_in -> [softclamp] -> activation (GELU, SiLU, relu^2 or SoLU; gated with glu, the
/// linear factor soft-clamped with glu_softclamp) -> [LayerNorm] -> dropout -> proj_out -> [sublayer
/// dropout].
at::Tensor feed_forward(const at::Tensor& x, const FeedForwardWeights& w, const FeedForwardOptions& options,
                        bool training);

}  // namespace xtc::nn::functional
