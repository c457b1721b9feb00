// Positional encodings on explicit tensors, as x-transformers' positional modules compute them: ALiBi's
// slopes (AlibiPositionalBias), T5's bucketed bias (RelativePositionBias), the dynamic position bias MLP
// (DynamicPositionBias), rotary angles and xPos scales (RotaryEmbedding). The stack builds them once per call
// and hands them to every attention layer (xtc/nn/functional/attention.h applies them).
//
// Shape legend: h heads, i queries (the last i of the j key positions), j keys, N positions, r rotary dim.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/options/attention_layers.h>

#include <vector>

namespace xtc::nn::functional {

/// x-transformers' AlibiPositionalBias._get_slopes: a geometric series over `heads`, interleaved for
/// non-powers of 2.
std::vector<double> geometric_alibi_slopes(int64_t heads);

/// The plan's slopes (h) as a float32 tensor like `like`, built from factory ops (fake tensors hold no data).
at::Tensor alibi_slopes_tensor(const std::vector<double>& slopes, const at::Tensor& like);

/// x-transformers' RelativePositionBias (T5): bucketed relative positions -> the learned per-head bias
/// `weight` (num_buckets, h), as (1, h, i, j): the queries the last i of the j keys, or at
/// `query_positions` (i) int64 when defined (a shard of a longer sequence).
at::Tensor t5_position_bias(const at::Tensor& weight, const c10::SymInt& i, const c10::SymInt& j,
                            const AttentionLayersOptions& options, const at::Tensor& query_positions = {});

/// The tensors of x-transformers' DynamicPositionBias MLP (its state_dict under rel_pos.mlp): a linear per
/// layer, input first; with dynamic_pos_bias_norm, the first layer's LayerNorm gain and the later layers'
/// nn.LayerNorm.
struct DynamicPositionBiasWeights {
  std::vector<at::Tensor> weights, biases;
  at::Tensor first_norm_gamma;
  std::vector<at::Tensor> norm_weights, norm_biases;  // one per hidden layer after the first
};

/// x-transformers' DynamicPositionBias: the MLP over the 2j - 1 relative distances, gathered to (1, h, i, j);
/// the queries as t5_position_bias's.
at::Tensor dynamic_position_bias(const DynamicPositionBiasWeights& w, const c10::SymInt& i,
                                 const c10::SymInt& j, const at::Tensor& like,
                                 const AttentionLayersOptions& options,
                                 const at::Tensor& query_positions = {});

/// x-transformers' RotaryEmbedding.forward over integer positions t, (N) or (b, N): (N, r) or (b, N, r)
/// angles, each frequency twice in a row.
at::Tensor rotary_angles(const at::Tensor& inv_freq, const at::Tensor& t, double interpolation_factor);

/// x-transformers' xPos scales over the same positions: scale^((t - max_pos // 2) / scale_base), each twice
/// in a row, max_pos the largest position + 1 (over the whole batch); q is multiplied by them, k divided.
at::Tensor xpos_scales(const at::Tensor& scale, const at::Tensor& t, int64_t scale_base);

/// The forgetting transformer's data-dependent ALiBi (x-transformers' DataDependentAlibi) of x (b, n, dim):
/// F = cumsum(log sigmoid(x W^T + b) * post_log_scale) over the tokens, bias[i, j] = F_i - F_j; without
/// causality W holds 2h rows, the second h giving F' for the keys ahead, bias = tril(F_i - F_j) + triu(F'_j -
/// F'_i). Returns (b, h, n, n).
at::Tensor data_dependent_alibi(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                int64_t heads, bool causal, double post_log_scale);

/// Its per-row form (PerRowDataDependentAlibi): small queries and keys q, k = x W^T (h heads of `dim_head`
/// each), g = log sigmoid(q . k / sqrt(dim_head)) * post_log_scale with the diagonal and the future zeroed,
/// bias[i, j] = sum over j' >= j of g[i, j']. Causal; returns (b, h, n, n).
at::Tensor per_row_data_dependent_alibi(const at::Tensor& x, const at::Tensor& weight, int64_t heads,
                                        int64_t dim_head, double post_log_scale);

/// Inkling's relative projection bias (x-transformers' RelativeProjPositionalBias) of the queries x (b, n,
/// dim) over `keys` keys (the queries the last n): curves = (x W^T + b) . distance_bank per head, bias[i, j]
/// = curve_i(i - j) for 0 <= i - j < max_dist, else 0. Returns (b, h, n, keys).
at::Tensor relative_projection_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                    const at::Tensor& distance_bank, int64_t heads, const c10::SymInt& keys);

/// x-transformers' PolarEmbedding.forward over integer positions t, (N) or (b, N): the angles t * inv_freq,
/// (N, dh) or (b, N, dh).
at::Tensor polar_angles(const at::Tensor& inv_freq, const at::Tensor& t);

/// x-transformers' apply_polar_pos_emb on t (b, n, heads, dh): softplus(t) at the last n rows of `angles`,
/// plus `bias` (h, 1, dh) per head when defined (then a single head of t serves every head), as
/// cat(cos, sin) features: (b, n, heads | h, 2 dh), computed in float32 and returned in t's dtype.
at::Tensor apply_polar(const at::Tensor& t, const at::Tensor& angles, const at::Tensor& bias = {});

/// Checks custom positions `pos` (x-transformers' forward argument): integers, (keys) or (b, keys) covering
/// the self-attention keys; with ALiBi exactly one per token and no cache or memories (`extra_keys`).
void check_positions(const at::Tensor& pos, const at::Tensor& x, const AttentionLayersOptions& options,
                     const c10::SymInt& keys, bool extra_keys);

}  // namespace xtc::nn::functional
