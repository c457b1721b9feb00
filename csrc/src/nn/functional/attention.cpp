#include <xtc/nn/functional/attention.h>
#include <xtc/ops/flash_attention.h>

#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>

#include <cmath>
#include <limits>

namespace xtc::nn::functional {

at::Tensor attention(const at::Tensor& x, const std::optional<at::Tensor>& mask, const at::Tensor& w_q,
                     const at::Tensor& w_k, const at::Tensor& w_v, const at::Tensor& w_out,
                     const AttentionConfig& config, bool training) {
  const int64_t b = x.size(0), n = x.size(1);
  const auto q = at::linear(x, w_q).view({b, n, config.heads, config.dim_head});
  const auto k = at::linear(x, w_k).view({b, n, config.kv_heads, config.dim_head});
  const auto v = at::linear(x, w_v).view({b, n, config.kv_heads, config.dim_head});
  at::Tensor out;
  if (training && config.dropout > 0) {
    out = materialized_attention(q, k, v, mask, config.causal, config.dropout, training);
  } else {
    out = std::get<0>(ops::flash_attention(q, k, v, mask, config.causal));
  }
  out = out.reshape({b, n, config.heads * config.dim_head});
  if (w_out.defined()) out = at::linear(out, w_out);
  if (mask.has_value()) out = out.masked_fill(mask->logical_not().unsqueeze(-1), 0);
  return out;
}

at::Tensor materialized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& key_padding_mask, bool causal, double dropout,
                                  bool training) {
  const int64_t heads = q.size(2), kv_heads = k.size(2), n = q.size(1), m = k.size(1);
  // Query head i reads kv head i % kv_heads.
  const auto kv_index = at::arange(heads, q.options().dtype(at::kLong)).remainder(kv_heads);
  const auto qh = q.transpose(1, 2);                                    // (b, h, n, dh)
  const auto kh = k.index_select(2, kv_index).transpose(1, 2);          // (b, h, m, dh)
  const auto vh = v.index_select(2, kv_index).transpose(1, 2);          // (b, h, m, dv)
  auto sim = at::matmul(qh, kh.transpose(-1, -2)) * (1.0 / std::sqrt(static_cast<double>(q.size(3))));
  double lowest = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "materialized_attention", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  at::Tensor row_is_entirely_masked;
  if (key_padding_mask.has_value()) {
    const auto keep = key_padding_mask->view({q.size(0), 1, 1, m});
    sim = sim.masked_fill(keep.logical_not(), lowest);
    row_is_entirely_masked = keep.logical_not().all(-1, /*keepdim=*/true);  // (b, 1, 1, 1)
  }
  if (causal && n > 1) {
    const auto future = at::ones({n, m}, q.options().dtype(at::kBool)).triu(m - n + 1);
    sim = sim.masked_fill(future, lowest);
  }
  // Softmax in float32 as x-transformers, but float64 inputs keep their precision.
  auto attn = at::softmax(sim, -1, sim.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).to(sim.scalar_type());
  if (training && dropout > 0) attn = at::dropout(attn, dropout, training);
  auto out = at::matmul(attn, vh);  // (b, h, n, dv)
  if (row_is_entirely_masked.defined()) out = out.masked_fill(row_is_entirely_masked, 0);
  return out.transpose(1, 2);
}

}  // namespace xtc::nn::functional
