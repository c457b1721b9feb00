// How a branch output joins the residual stream, on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

#include <optional>

namespace xtc::nn::functional {

/// The residual's tensors; undefined where the options leave one out.
struct ResidualWeights {
  at::Tensor residual_scale;                          // (dim), scale_residual
  at::Tensor weight_ih, weight_hh, bias_ih, bias_hh;  // GRU gating: (3 dim, dim) and (3 dim)
  at::Tensor alpha, beta;  // mv_split_residual: (dim) each, or the (dim, dim) weights of to_alpha / to_beta
  at::Tensor alpha_bias, beta_bias;  // (dim): to_alpha / to_beta's biases (mv_split_residual_learned)
};

/// x-transformers' residual updates: Residual (branch + residual * scale * constant), GRUGating
/// (GRUCell(branch, residual)), OrthogonalResidualUpdate (residual + the branch's part orthogonal to it, each
/// sequence one vector) and MVSplitResidualUpdate (means over the tokens `mask` keeps, (b, n) bool; unset =
/// all).
at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual,
                    const ResidualWeights& w, double scale_constant,
                    const std::optional<at::Tensor>& mask = std::nullopt);

/// Several residual streams as a branch reads them (x-transformers' HyperConnection.prepare and
/// GatedMultiResidual.prepare): the branch's input, (b, n, d) or (views, b, n, d); the streams the branch
/// writes back to, (b, n, s, d); and each stream's share of the branch output, (b, n, s).
struct StreamRead {
  at::Tensor branch_input, residuals, beta;
};

/// A HyperConnection's tensors (s streams, v input views).
struct HyperConnectionWeights {
  at::Tensor static_alpha, static_beta;              // (s, v + s), (s)
  at::Tensor dynamic_alpha_fn, dynamic_alpha_scale;  // (d, s + v), ()
  at::Tensor dynamic_beta_fn, dynamic_beta_scale;    // (d), ()
  at::Tensor norm_weight;                            // (d): its bias-less LayerNorm
};

/// Hyper-connections' read of `streams` (b s, n, d): per-token input mixes (sigmoid) and residual mixes
/// (Sinkhorn) from static and normed dynamic weights, and the write shares.
StreamRead hyper_connection_read(const at::Tensor& streams, const HyperConnectionWeights& w,
                                 int64_t num_streams, int64_t views, int64_t sinkhorn_iters);

/// A GatedMultiResidual's tensors (s streams, v input views, rank r).
struct GatedMultiResidualWeights {
  at::Tensor read_gain, static_read_logit, static_write_logit;  // (s, d), (v, s, d), (s)
  at::Tensor dynamic_gate_scale;                                // ()
  at::Tensor to_bottleneck, to_read_gate, to_write_gate;        // (r, s d), (v s d, r), (s, r)
};

/// The gated multi residual's read of `streams` (b s, n, d): each view the mean over the streams of the
/// RMS-normed streams under elementwise sigmoid read gates (static + low rank); the write shares from the
/// same bottleneck.
StreamRead gated_multi_residual_read(const at::Tensor& streams, const GatedMultiResidualWeights& w,
                                     int64_t num_streams, int64_t views);

/// The write after a branch: each stream plus the branch output times its share, back to (b s, n, d).
at::Tensor stream_write(const at::Tensor& branch, const StreamRead& read);

/// x (b, n, d) as s streams, each x plus its row of `stream_emb` (s, d): (b s, n, d), batch-major.
at::Tensor expand_streams(const at::Tensor& x, const at::Tensor& stream_emb);

/// The streams (b s, n, d) summed: (b, n, d).
at::Tensor merge_streams(const at::Tensor& streams, int64_t num_streams);

/// x-transformers' orthog_project: x less its component along y, each batch entry's whole block one vector,
/// in float64 (back in x's dtype).
at::Tensor orthogonal_projection(const at::Tensor& x, const at::Tensor& y);

}  // namespace xtc::nn::functional
