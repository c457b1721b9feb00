// Norms on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

namespace xtc::nn::functional {

/// x-transformers' LayerNorm: no bias, eps 1e-5, biased variance; gain `gamma`, plus 1 when `unit_offset`.
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& gamma, bool unit_offset = true);

/// x / max(||x||, 1e-12) * sqrt(dim) * (g [+ 1]); `g` of shape (dim) for RMSNorm, (1) for ScaleNorm,
/// undefined for SimpleRMSNorm. No eps inside a square root, as x-transformers (F.normalize).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& g, bool unit_offset = true);

/// x-transformers' MultiheadRMSNorm on t (b, n, heads, d): SimpleRMSNorm times (gamma + 1), gamma (heads, 1,
/// d).
at::Tensor multihead_rms_norm(const at::Tensor& t, const at::Tensor& gamma);

/// A norm's tensors: its gain (gamma or g; undefined for SimpleRMSNorm) and, for DynamicTanh, the scalar
/// pre_tanh_scale and the bias beta; Derf's scalar alpha sits in pre_tanh_scale, its scalar s in shift.
struct NormWeights {
  at::Tensor gain, pre_tanh_scale, beta, shift;
};

/// x-transformers' DynamicTanh: tanh(x * (alpha [+ init_alpha])) * (gamma [+ 1]) + beta; the offsets with
/// unit_offset.
at::Tensor dynamic_tanh(const at::Tensor& x, const NormWeights& w, bool unit_offset, double init_alpha);

/// x-transformers' Derf: erf(x * (alpha [+ 1]) + s) * (gamma [+ 1]) + beta; the offsets with unit_offset.
at::Tensor derf(const at::Tensor& x, const NormWeights& w, bool unit_offset);

/// x-transformers' AdaptiveLayerNorm / AdaptiveRMSNorm: the norm without a gain (LayerNorm eps 1e-5, or
/// F.normalize times sqrt(dim)), times (gamma + 1), gamma = to_gamma(condition) broadcast over the tokens.
at::Tensor adaptive_norm(NormKind kind, const at::Tensor& x, const at::Tensor& gamma);

/// The norm of the given kind with its tensors.
at::Tensor norm(NormKind kind, const at::Tensor& x, const NormWeights& w, bool unit_offset,
                double dynamic_tanh_init_alpha = 1.0);

}  // namespace xtc::nn::functional
