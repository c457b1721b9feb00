#include <ATen/ops/cat.h>
#include <ATen/ops/gru_cell.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/rms_norm.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <xtc/nn/functional/residual.h>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

at::Tensor orthogonal_projection(const at::Tensor& x, const at::Tensor& y) {
  const auto flat_x = x.flatten(1).to(at::kDouble), flat_y = y.flatten(1).to(at::kDouble);
  const auto unit = flat_y / at::linalg_vector_norm(flat_y, 2, {-1}, true).clamp_min(1e-12);
  return (flat_x - (flat_x * unit).sum(-1, true) * unit).to(x.scalar_type()).view_as(x);
}

namespace {

// torch_einops_utils' masked_mean over the tokens, keeping the dimension: sum(t * mask) / max(count, 1e-5).
at::Tensor token_mean(const at::Tensor& t, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return t.mean(-2, true);
  const auto keep = mask->unsqueeze(-1).to(t.scalar_type());
  return (t * keep).sum(-2, true) / keep.expand_as(t).sum(-2, true).clamp_min(1e-5);
}

at::Tensor mv_split(const at::Tensor& branch, const at::Tensor& residual, const ResidualWeights& w,
                    const std::optional<at::Tensor>& mask) {
  const auto mean_x = token_mean(branch, mask), mean_residual = token_mean(residual, mask);
  const bool learned = w.alpha_bias.defined();
  const auto alpha = learned ? at::linear(mean_x, w.alpha, w.alpha_bias) : w.alpha;
  const auto beta = learned ? at::linear(mean_x, w.beta, w.beta_bias) : w.beta;
  return residual + (branch - mean_x) * beta + (mean_x - mean_residual) * alpha;
}

// (b s, n, d) streams as (b, n, s, d), and back.
at::Tensor streams_last(const at::Tensor& streams, int64_t num_streams) {
  return streams.unflatten(0, {-1, num_streams}).transpose(1, 2);
}

at::Tensor streams_first(const at::Tensor& streams) { return streams.transpose(1, 2).flatten(0, 1); }

// x-transformers' sinkhorn: a softmax over the rows, then alternate L1 normalisations of rows and columns, in
// float32.
at::Tensor sinkhorn(const at::Tensor& t, int64_t iters) {
  auto m = t.to(at::kFloat).softmax(-2);
  const auto l1_normalize = [](const at::Tensor& x, int64_t dim) {
    return x / at::linalg_vector_norm(x, 1, {dim}, true).clamp_min(1e-12);
  };
  for (int64_t i = 0; i < iters; ++i) m = l1_normalize(l1_normalize(m, -1), -2);
  return m.to(t.scalar_type());
}

// A branch's views, (b, n, v, d) -> (b, n, d) for one view, else (v, b, n, d).
at::Tensor views_first(const at::Tensor& views) {
  return views.size(-2) == 1 ? views.squeeze(-2) : views.permute({2, 0, 1, 3});
}

}  // namespace

StreamRead hyper_connection_read(const at::Tensor& streams, const HyperConnectionWeights& w,
                                 int64_t num_streams, int64_t views, int64_t sinkhorn_iters) {
  const auto residuals = streams_last(streams, num_streams);  // (b, n, s, d)
  const int64_t dim = xtc::detail::static_size(streams, -1);
  const auto normed = at::layer_norm(residuals, {dim}, w.norm_weight, {}, 1e-5);
  const auto alpha = at::matmul(normed, w.dynamic_alpha_fn) * w.dynamic_alpha_scale + w.static_alpha;
  const auto alpha_input = at::sigmoid(alpha.narrow(-1, 0, views));
  // x-transformers splits each stream's residual row into a 1 x s matrix, so Sinkhorn normalises one row at a
  // time (its columns are single entries); kept as it computes.
  const auto alpha_residual =
      sinkhorn(alpha.narrow(-1, views, num_streams).unsqueeze(-2), sinkhorn_iters).squeeze(-2);
  const auto mix = at::cat({alpha_input, alpha_residual}, -1);  // (b, n, s, v + s)
  const auto beta_dynamic = at::sigmoid(at::matmul(normed, w.dynamic_beta_fn)) * 2 * w.dynamic_beta_scale;
  const auto beta = at::sigmoid(beta_dynamic + w.static_beta) * 2;
  const auto mixed = at::matmul(mix.transpose(-1, -2), residuals);  // (b, n, v + s, d)
  return {views_first(mixed.narrow(-2, 0, views)), mixed.narrow(-2, views, num_streams), beta};
}

StreamRead gated_multi_residual_read(const at::Tensor& streams, const GatedMultiResidualWeights& w,
                                     int64_t num_streams, int64_t views) {
  const auto residuals = streams_last(streams, num_streams);  // (b, n, s, d)
  const int64_t dim = xtc::detail::static_size(streams, -1);
  const auto normed = at::rms_norm(residuals, {dim}) * w.read_gain;
  const auto flat = normed.flatten(-2) / static_cast<double>(num_streams);
  const auto dynamic = at::silu(at::linear(flat, w.to_bottleneck)) * w.dynamic_gate_scale;
  const auto read_logits = at::linear(dynamic, w.to_read_gate) + w.static_read_logit.flatten();
  const auto read_gate =
      at::sigmoid(read_logits).unflatten(-1, {views, num_streams, dim});  // (b, n, v, s, d)
  const auto read = (read_gate * normed.unsqueeze(-3)).sum(-2) / static_cast<double>(num_streams);
  const auto beta = at::sigmoid(at::linear(dynamic, w.to_write_gate) + w.static_write_logit) * 2;
  return {views_first(read), residuals, beta};
}

at::Tensor stream_write(const at::Tensor& branch, const StreamRead& read) {
  return streams_first(branch.unsqueeze(-2) * read.beta.unsqueeze(-1) + read.residuals);
}

at::Tensor expand_streams(const at::Tensor& x, const at::Tensor& stream_emb) {
  return (x.unsqueeze(1) + stream_emb.unsqueeze(1)).flatten(0, 1);
}

at::Tensor merge_streams(const at::Tensor& streams, int64_t num_streams) {
  return streams.unflatten(0, {-1, num_streams}).sum(1);
}

at::Tensor residual(ResidualKind kind, const at::Tensor& branch, const at::Tensor& residual_in,
                    const ResidualWeights& w, double scale_constant, const std::optional<at::Tensor>& mask) {
  if (kind == ResidualKind::MVSplit) return mv_split(branch, residual_in, w, mask);
  at::Tensor residual = residual_in;
  if (w.residual_scale.defined()) residual = residual * w.residual_scale;
  if (kind == ResidualKind::GRUGating) {
    const int64_t dim = xtc::detail::static_size(branch, -1);
    return at::gru_cell(branch.reshape({-1, dim}), residual.reshape({-1, dim}), w.weight_ih, w.weight_hh,
                        w.bias_ih, w.bias_hh)
        .reshape_as(branch);
  }
  if (kind == ResidualKind::Orthogonal) return residual + orthogonal_projection(branch, residual);
  if (scale_constant != 1.0) residual = residual * scale_constant;
  return branch + residual;
}

}  // namespace xtc::nn::functional
