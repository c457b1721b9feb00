// Positional encodings on explicit tensors; each function is documented in xtc/nn/functional/positional.h.
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softplus.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/positional.h>

#include <cmath>

namespace xtc::nn::functional {

std::vector<double> geometric_alibi_slopes(int64_t heads) {
  const auto power_of_2 = [](int64_t n) {
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3)));
    std::vector<double> s;
    for (int64_t i = 0; i < n; ++i) s.push_back(start * std::pow(start, static_cast<double>(i)));
    return s;
  };
  const double log2_heads = std::log2(static_cast<double>(heads));
  if (log2_heads == std::floor(log2_heads)) return power_of_2(heads);
  const int64_t closest = int64_t(1) << static_cast<int64_t>(std::floor(log2_heads));
  auto slopes = power_of_2(closest);
  const auto extra = power_of_2(2 * closest);
  for (int64_t i = 0; i < 2 * closest && static_cast<int64_t>(slopes.size()) < heads; i += 2)
    slopes.push_back(extra[i]);
  return slopes;
}

at::Tensor alibi_slopes_tensor(const std::vector<double>& slopes, const at::Tensor& like) {
  // Through factory ops, not by copying host data in: fake tensors (torch.export, torch.compile) have none.
  std::vector<at::Tensor> values;
  for (const double slope : slopes)
    values.push_back(at::scalar_tensor(slope, like.options().dtype(at::kDouble)));
  return at::stack(values).to(at::kFloat);
}

at::Tensor t5_position_bias(const at::Tensor& weight, const c10::SymInt& i, const c10::SymInt& j,
                            const AttentionLayersOptions& o, const at::Tensor& query_positions) {
  const auto key_pos = at::arange(j, weight.options().dtype(at::kLong));
  const auto query_pos = query_positions.defined() ? query_positions : key_pos.narrow_symint(0, j - i, i);
  auto distance = query_pos.unsqueeze(1) - key_pos.unsqueeze(0);  // query - key
  int64_t buckets = o.rel_pos_num_buckets();
  at::Tensor bucket = at::zeros_like(distance);
  if (!o.causal()) {
    buckets /= 2;
    bucket = bucket + (distance < 0).to(at::kLong) * buckets;
    distance = distance.abs();
  } else {
    distance = distance.clamp_min(0);
  }
  const int64_t max_exact = buckets / 2;
  const auto is_small = distance < max_exact;
  auto large = max_exact + (at::log(distance.to(at::kFloat) / static_cast<double>(max_exact)) /
                            std::log(static_cast<double>(o.rel_pos_max_distance()) / max_exact) *
                            static_cast<double>(buckets - max_exact))
                               .to(at::kLong);
  large = at::minimum(large, at::full_like(large, buckets - 1));
  bucket = bucket + at::where(is_small, distance, large);
  const double scale = std::sqrt(static_cast<double>(o.attn().dim_head()));
  return (at::embedding(weight, bucket).permute({2, 0, 1}) * scale).unsqueeze(0);
}

at::Tensor dynamic_position_bias(const DynamicPositionBiasWeights& w, const c10::SymInt& i,
                                 const c10::SymInt& j, const at::Tensor& like,
                                 const AttentionLayersOptions& o, const at::Tensor& query_positions) {
  auto pos = at::arange(1 - j, j, like.options()).unsqueeze(1);
  if (o.dynamic_pos_bias_log_distance()) pos = at::sign(pos) * at::log(pos.abs() + 1);
  const size_t depth = w.weights.size() - 1;  // hidden layers; the last linear maps to the heads
  pos = at::linear(pos, w.weights[0], w.biases[0]);
  if (w.first_norm_gamma.defined()) pos = layer_norm(pos, w.first_norm_gamma, /*unit_offset=*/false);
  pos = at::silu(pos);
  for (size_t l = 1; l < depth; ++l) {
    pos = at::linear(pos, w.weights[l], w.biases[l]);
    if (!w.norm_weights.empty())
      pos = at::layer_norm_symint(pos, {pos.sym_size(-1)}, w.norm_weights[l - 1], w.norm_biases[l - 1], 1e-5);
    pos = at::silu(pos);
  }
  pos = at::linear(pos, w.weights[depth], w.biases[depth]);  // (2n - 1, h)
  const auto index = at::arange(j, like.options().dtype(at::kLong));
  const auto query_pos = query_positions.defined() ? query_positions : index.narrow_symint(0, j - i, i);
  const auto indices = query_pos.unsqueeze(1) - index.unsqueeze(0) + (j - 1);
  return pos.index({indices}).permute({2, 0, 1}).unsqueeze(0);
}

at::Tensor rotary_angles(const at::Tensor& inv_freq, const at::Tensor& t, double interpolation_factor) {
  const auto freqs = t.to(inv_freq.scalar_type()).unsqueeze(-1) * inv_freq / interpolation_factor;
  return freqs.repeat_interleave(2, -1);
}

at::Tensor xpos_scales(const at::Tensor& scale, const at::Tensor& t, int64_t scale_base) {
  const auto max_pos = t.max() + 1;
  const auto power =
      (t - at::floor_divide(max_pos, 2)).to(scale.scalar_type()) / static_cast<double>(scale_base);
  return at::pow(scale, power.unsqueeze(-1)).repeat_interleave(2, -1);
}

void check_positions(const at::Tensor& pos, const at::Tensor& x, const AttentionLayersOptions& o,
                     const c10::SymInt& keys, bool extra_keys) {
  // ALiBi alone also takes one row of positions per ALiBi head (x-transformers' forward_custom_pos).
  const int64_t alibi_heads = o.alibi_num_heads().value_or(o.heads());
  const bool per_head = pos.dim() == 3 && o.alibi_pos_bias() && !o.uses_rotary() && !o.polar_pos_emb() &&
                        pos.sym_size(1) == alibi_heads;
  TORCH_CHECK_VALUE(
      !pos.is_floating_point() && !pos.is_complex() && pos.scalar_type() != at::kBool &&
          (pos.dim() == 1 || ((pos.dim() == 2 || per_head) && pos.sym_size(0) == x.sym_size(0))) &&
          pos.device() == x.device(),
      "AttentionLayers: expected pos of shape (", keys, ") or (", x.sym_size(0), ", ", keys,
      ") (with ALiBi alone also (", x.sym_size(0), ", ", alibi_heads, ", ", keys,
      ")) and an integer dtype on x's device, got ", pos.sym_sizes(), " ", pos.scalar_type(), " on ",
      pos.device());
  TORCH_CHECK_VALUE(pos.sym_size(-1) >= keys, "AttentionLayers: expected pos to cover the ", keys,
                    " self-attention keys, got ", pos.sym_size(-1), " positions");
  TORCH_CHECK_VALUE(
      !(o.rel_pos_bias() || o.dynamic_pos_bias()),
      "AttentionLayers: pos is not supported with rel_pos_bias or dynamic_pos_bias (x-transformers "
      "allows only ALiBi and rotary with custom positions)");
  TORCH_CHECK_VALUE(!o.alibi_pos_bias() || (!extra_keys && pos.sym_size(-1) == x.sym_size(1)),
                    "AttentionLayers: pos with alibi_pos_bias needs exactly one position per token (",
                    x.sym_size(1), "), and no cache or mems, got ", pos.sym_size(-1));
}

at::Tensor data_dependent_alibi(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                int64_t heads, bool causal, double post_log_scale) {
  // (b, n, h') -> (b, h', n): cumulative log forget gates along the tokens.
  const auto gates =
      (at::log_sigmoid(at::linear(x, weight, bias)) * post_log_scale).transpose(1, 2).cumsum(-1);
  const auto forward = gates.narrow(1, 0, heads);
  const auto bias_ij = forward.unsqueeze(-1) - forward.unsqueeze(-2);  // F_i - F_j
  if (causal) return bias_ij;
  const auto backward = gates.narrow(1, heads, heads);
  return bias_ij.tril() + (backward.unsqueeze(-2) - backward.unsqueeze(-1)).triu();  // F'_j - F'_i ahead
}

at::Tensor per_row_data_dependent_alibi(const at::Tensor& x, const at::Tensor& weight, int64_t heads,
                                        int64_t dim_head, double post_log_scale) {
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  // 'b n (qk h d) -> qk b h n d'
  const auto qk = at::linear(x, weight).view_symint({b, n, 2, heads, dim_head}).permute({2, 0, 3, 1, 4});
  auto gates = at::matmul(qk[0], qk[1].transpose(-1, -2)) / std::sqrt(static_cast<double>(dim_head));
  gates = at::log_sigmoid(gates) * post_log_scale;
  const auto rows = at::arange(n, x.options().dtype(at::kLong));
  gates = gates.masked_fill(rows.unsqueeze(0) >= rows.unsqueeze(1), 0);  // the diagonal and the future
  return gates.flip(-1).cumsum(-1).flip(-1);
}

at::Tensor relative_projection_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                    const at::Tensor& distance_bank, int64_t heads, const c10::SymInt& keys) {
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  const int64_t max_dist = distance_bank.size(1);
  const auto mix = at::linear(x, weight, bias).view_symint({b, n, heads, distance_bank.sym_size(0)});
  const auto curves = at::matmul(mix, distance_bank).transpose(1, 2);  // (b, h, n, max_dist)
  const auto longs = x.options().dtype(at::kLong);
  const auto distance =
      (at::arange(n, longs) + (keys - n)).unsqueeze(1) - at::arange(keys, longs).unsqueeze(0);  // (n, keys)
  const auto inside = (distance >= 0).logical_and(distance < max_dist);
  const auto index = distance.clamp(0, max_dist - 1).expand_symint({b, heads, n, keys});
  return curves.gather(-1, index).masked_fill(inside.logical_not(), 0);
}

at::Tensor polar_angles(const at::Tensor& inv_freq, const at::Tensor& t) {
  return t.to(inv_freq.scalar_type()).unsqueeze(-1) * inv_freq;
}

at::Tensor apply_polar(const at::Tensor& t, const at::Tensor& angles, const at::Tensor& bias) {
  const c10::SymInt n = t.sym_size(1);
  const int64_t dim = angles.dim() - 2;
  const auto last = angles.narrow_symint(dim, angles.sym_size(dim) - n, n).to(at::kFloat);
  auto theta = last.dim() == 2 ? last.unsqueeze(0).unsqueeze(2) : last.unsqueeze(2);     // (1|b, n, 1, dh)
  if (bias.defined()) theta = theta + bias.to(at::kFloat).transpose(0, 1).unsqueeze(0);  // (.., n, h, dh)
  const auto magnitude = at::softplus(t.to(at::kFloat));
  return at::cat({magnitude * theta.cos(), magnitude * theta.sin()}, -1).to(t.scalar_type());
}

}  // namespace xtc::nn::functional
