// Positional encodings on explicit tensors; each function is documented in xtc/nn/functional/positional.h.
#include <ATen/ops/arange.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/floor_divide.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sign.h>
#include <ATen/ops/silu.h>
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
                            const AttentionLayersOptions& o) {
  const auto key_pos = at::arange(j, weight.options().dtype(at::kLong));
  auto distance = key_pos.narrow_symint(0, j - i, i).unsqueeze(1) - key_pos.unsqueeze(0);  // query - key
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
                                 const AttentionLayersOptions& o) {
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
  const auto indices = index.narrow_symint(0, j - i, i).unsqueeze(1) - index.unsqueeze(0) + (j - 1);
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
  TORCH_CHECK_VALUE(!pos.is_floating_point() && !pos.is_complex() && pos.scalar_type() != at::kBool &&
                        (pos.dim() == 1 || (pos.dim() == 2 && pos.sym_size(0) == x.sym_size(0))) &&
                        pos.device() == x.device(),
                    "AttentionLayers: expected pos of shape (", keys, ") or (", x.sym_size(0), ", ", keys,
                    ") and an integer dtype on x's device, got ", pos.sym_sizes(), " ", pos.scalar_type(),
                    " on ", pos.device());
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

}  // namespace xtc::nn::functional
