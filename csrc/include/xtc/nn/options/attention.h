// Options of the attention block (x-transformers' `attn_*` and `cross_attn_*` keyword arguments, prefix
// stripped).
#pragma once

#include <torch/arg.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

namespace xtc::nn {

/// Multi-head attention (Vaswani et al. 2017, arXiv 1706.03762), as x-transformers' `Attention`.
struct AttentionOptions {
  /// Width of each head; x-transformers uses 64 whatever dim and heads are.
  TORCH_ARG(int64_t, dim_head) = 64;
  /// Key/value heads for grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245); unset = one per
  /// query head. Query head i reads kv head i % kv_heads, as x-transformers' `(r kvh)` expansion.
  TORCH_ARG(std::optional<int64_t>, kv_heads) = std::nullopt;
  /// One key/value head for all query heads (multi-query attention, Shazeer 2019, arXiv 1911.02150).
  TORCH_ARG(bool, one_kv_head) = false;
  /// Width of each value head; unset = dim_head.
  TORCH_ARG(std::optional<int64_t>, value_dim_head) = std::nullopt;
  /// Width of the keys' and values' input, for cross-attention over a context of another width (a CLIP or
  /// BERT output beside a narrower stack); unset = dim. Self-attention reads x, so only dim there.
  TORCH_ARG(std::optional<int64_t>, dim_context) = std::nullopt;
  /// Dropout on the attention probabilities (training only); takes the path that materialises them.
  TORCH_ARG(double, dropout) = 0.0;
  /// Accepted for x-transformers compatibility: our flash kernels run wherever they apply.
  TORCH_ARG(bool, flash) = false;
  /// x-transformers' flash_pack_seq: with flash, forward takes packed sequences (batch 1, FlashAttention's
  /// cu_seqlens in flash_pack_seq_kwargs) and each attends within itself; here on any device, without the
  /// flash-attn package, with or without rotary.
  TORCH_ARG(bool, flash_pack_seq) = false;
  /// Logit soft-capping c * tanh(s / c) (Gemma 2, arXiv 2408.00118), in the kernel.
  TORCH_ARG(bool, softclamp_logits) = false;
  /// The cap c of softclamp_logits.
  TORCH_ARG(double, logit_softclamp_value) = 50.0;
  /// Keys more than this many positions in the past are hidden (a left window, in the kernel).
  TORCH_ARG(std::optional<int64_t>, max_attend_past) = std::nullopt;
  /// xtc extension: local attention, each query sees keys at most this many positions away (only the past
  /// with causal); runs as the kernel's sliding window, O(n * window) work.
  TORCH_ARG(std::optional<int64_t>, window_size) = std::nullopt;
  /// xtc extension: linear attention (Katharopoulos et al. 2020, arXiv 2006.16236) with the elu(x) + 1
  /// feature map, O(n) in time and memory; causal through chunked prefix sums.
  TORCH_ARG(bool, linear) = false;
  /// Cosine-similarity attention: l2-normalised q and k (Henry et al. 2020, arXiv 2010.04245).
  TORCH_ARG(bool, qk_norm) = false;
  /// Groups of the head dim normalised separately by qk_norm.
  TORCH_ARG(int64_t, qk_norm_groups) = 1;
  /// Fixed logit scale under qk_norm.
  TORCH_ARG(double, qk_norm_scale) = 10.0;
  /// Learned per-dim scales of q and k under qk_norm (Dehghani et al. 2023, arXiv 2302.05442).
  TORCH_ARG(bool, qk_norm_dim_scale) = false;
  /// A recurrent network run over the block's input beside attention and mixed into its heads (Hymba, arXiv
  /// 2411.13676; x-transformers' hybrid_module given a torch.nn.GRU or LSTM): a spec of
  /// functional::RecurrentSpec, its output heads x dim_head wide; unset = none.
  TORCH_ARG(std::optional<std::string>, hybrid_module) = std::nullopt;
  /// The hybrid network reads the sequence folded into this many interleaved subsequences (1 = unfolded);
  /// required with hybrid_module, whose norms x-transformers builds only then.
  TORCH_ARG(std::optional<int64_t>, hybrid_fold_axial_dim) = std::nullopt;
  /// A learned per-token, per-head mix of attention and the hybrid (`hybrid_mix`), else their mean.
  TORCH_ARG(bool, hybrid_learned_mix) = false;
  /// Sigmoid gate on the attention output from the block input (AlphaFold 2's gated attention); its
  /// projection starts at zero, as x-transformers'.
  TORCH_ARG(bool, gate_values) = false;
  /// gate_values through a low-rank bottleneck of this width (x-transformers' LoRALinear, `to_v_gate.down`
  /// and `.up`); unset = one bias-less projection.
  TORCH_ARG(std::optional<int64_t>, gate_values_rank) = std::nullopt;
  /// gate_values with one gate per head instead of per feature.
  TORCH_ARG(bool, gate_values_headwise) = false;
  /// A gate computed from the merged heads' output, added to gate_values' logits (hybrid gated attention,
  /// HyGA, arXiv 2608.11805).
  TORCH_ARG(bool, output_gate) = false;
  /// output_gate through a low-rank bottleneck of this width; unset = one bias-less projection.
  TORCH_ARG(std::optional<int64_t>, output_gate_rank) = std::nullopt;
  /// output_gate with one gate per head instead of per feature.
  TORCH_ARG(bool, output_gate_headwise) = false;
  /// SiLU between the two halves of the low-rank gates, as HyGA.
  TORCH_ARG(bool, low_rank_silu_gates) = true;
  /// The gates weigh by SiLU instead of the sigmoid.
  TORCH_ARG(bool, swiglu_values) = false;
  /// A sigmoid gate per head from the block input, `to_v_head_gate` (weight 0, bias 10: open at the start;
  /// "attend to nothing", arXiv 2306.12929).
  TORCH_ARG(bool, gate_value_heads) = false;
  /// LASER attention (arXiv 2411.03493): the values soft-clamped and exponentiated before the attention,
  /// the log of its output after; gradients reach the values through the exp.
  TORCH_ARG(bool, laser) = false;
  /// The soft-clamp of laser's values before the exp.
  TORCH_ARG(double, laser_softclamp_value) = 15.0;
  /// "Belief attention" (openreview Ard2QzPAUK): the output made orthogonal to the query positions' own
  /// values (x-transformers' orthog_project, over each sequence's whole (n, h dv) block, in float64).
  TORCH_ARG(bool, orthog_projected_values) = false;
  /// The same per head, as x-transformers' flag; its projection spans the same block, so it equals the
  /// other, and with both the two outputs are joined (the output projection is twice as wide).
  TORCH_ARG(bool, orthog_projected_values_per_head) = false;
  /// Whether the heads are projected back to dim (`to_out`); unset = with more than one head or on_attn,
  /// as x-transformers. False needs heads * value_dim_head == dim.
  TORCH_ARG(std::optional<bool>, project_out) = std::nullopt;
  /// Dropout on the block's output (training only).
  TORCH_ARG(double, sublayer_dropout) = 0.0;
  /// Learned per-head output scale (Shleifer et al. 2021, NormFormer, arXiv 2110.09456).
  TORCH_ARG(bool, head_scale) = false;
  /// Learned memory key/values prepended to every sequence (Burtsev et al. 2020, arXiv 2006.11527).
  TORCH_ARG(int64_t, num_mem_kv) = 0;
  /// A zero key and value in front of every sequence, so a query can attend to nothing (torch's
  /// add_zero_attn).
  TORCH_ARG(bool, add_zero_kv) = false;
  /// Per-head RMSNorm (learned gain, zero-initialised, plus 1) on q and k.
  TORCH_ARG(bool, qk_rmsnorm) = false;
  /// The same on k only.
  TORCH_ARG(bool, k_rmsnorm) = false;
  /// The same on the values (needs as many kv heads as heads, and value_dim_head == dim_head).
  TORCH_ARG(bool, value_rmsnorm) = false;
  /// A learned per-head logit (`attend.head_attn_sink`, zero-initialised) joins each row before the softmax
  /// and leaves after it, so the row's probabilities may sum to less than 1 (gpt-oss's attention sink).
  TORCH_ARG(bool, head_learned_sink) = false;
  /// Talking heads before the softmax: logits += mix_heads(logits) (Shazeer et al. 2020, arXiv 2003.02436).
  TORCH_ARG(bool, pre_talking_heads) = false;
  /// Talking heads after the softmax: probabilities = mix_heads(probabilities).
  TORCH_ARG(bool, post_talking_heads) = false;
  /// Heads mixed before the softmax, used to scale the probabilities after it (x-transformers'
  /// improvisation).
  TORCH_ARG(bool, pre_scale_post_talking_heads) = false;
  /// Keep only the top-k logits of each row (Zhao et al. 2019, Explicit Sparse Transformer, arXiv
  /// 1912.11637).
  TORCH_ARG(std::optional<int64_t>, sparse_topk) = std::nullopt;
  /// With sparse_topk: gradients of the dense softmax (straight-through, arXiv 2505.22074).
  TORCH_ARG(bool, sparse_topk_straight_through) = false;
  /// Sigmoid instead of softmax: each score weighs its value on its own (Ramapuram et al. 2024, arXiv
  /// 2409.04431). On the materialising path.
  TORCH_ARG(bool, sigmoid) = false;
  /// Hard attention: each query takes its top-scoring key's value, with the softmax's gradients
  /// (straight-through one-hot). On the materialising path.
  TORCH_ARG(bool, hard) = false;
  /// Cog attention: the softmax weighs the scores' magnitudes and the weights take their signs back, so a
  /// query can subtract a value (Lv et al. 2024, openreview ezRrwwbxd0). On the materialising path.
  TORCH_ARG(bool, cog_signed) = false;
  /// Scores from the negative squared distance of query and key, -|q - k|^2 times the scale, instead of their
  /// dot product (x-transformers' l2_distance). In the flash kernels: q and k each take two more features,
  /// whose dot product is that distance.
  TORCH_ARG(bool, l2_distance) = false;
  /// Gumbel-softmax weights (Jang et al. 2016, arXiv 1611.01144): Gumbel noise added to the scores on every
  /// call, train or eval, as x-transformers; the same draws as its F.gumbel_softmax under one seed. On the
  /// materialising path.
  TORCH_ARG(bool, gumbel_softmax) = false;
  /// The temperature of gumbel_softmax.
  TORCH_ARG(double, gumbel_softmax_temp) = 1.0;
  /// gumbel_softmax's one-hot of each row's top, with the soft weights' gradients (straight-through).
  TORCH_ARG(bool, gumbel_softmax_hard) = true;
  /// Selective attention (Leviathan et al. 2024, arXiv 2410.02703): each token can hide an earlier one from
  /// the tokens after it, by the first head's positive scores summed down the queries. Causal
  /// self-attention only, on the materialising path, and no decoding cache (x-transformers' can_cache_kv).
  TORCH_ARG(bool, selective) = false;
  /// Inverted attention (x-transformers' cross_attn_inverted_attention, slot-attention style): each key's
  /// weights are a softmax over the queries (masked queries out), then each query's weights over the kept
  /// keys are normalised to sum 1. Cross-attention only, on the materialising path; not with gumbel_softmax,
  /// a learned sink or packed sequences.
  TORCH_ARG(bool, inverted_attention) = false;
  /// The forgetting transformer's data-dependent ALiBi (Lin et al. 2025, openreview q2Lnyegkr8): per-head
  /// log-sigmoid forget gates of the block input, summed between key and query, bias the scores
  /// (`data_dependent_alibi.to_forget_gates`); without causality a second set of gates covers the keys
  /// ahead. Self-attention, on the materialising path; it takes the place of the stack's position biases, as
  /// in x-transformers, so those are refused beside it.
  TORCH_ARG(bool, data_dependent_alibi) = false;
  /// The forget gates from small per-head queries and keys of the input, per (query, key) row (causal
  /// only).
  TORCH_ARG(bool, data_dependent_alibi_per_row) = false;
  /// The width of data_dependent_alibi_per_row's queries and keys.
  TORCH_ARG(int64_t, data_dependent_alibi_per_row_dim_head) = 8;
  /// The initial bias of data_dependent_alibi's gate projection (x-transformers' data_dependent_alibi_kwargs
  /// `bias_init`): gates start near open.
  TORCH_ARG(double, data_dependent_alibi_bias_init) = 5.0;
  /// A multiplier on the log forget gates (data_dependent_alibi_kwargs `post_log_scale`).
  TORCH_ARG(double, data_dependent_alibi_post_log_scale) = 1.0;
  /// Inkling's relative projection bias: per query, a learned mix (`rel_proj_pos_bias.to_distance_weights`)
  /// of learned curves over distance (`distance_bank`), zero outside [0, max_dist). Added to the other
  /// biases, on the materialising path.
  TORCH_ARG(bool, use_rel_proj_pos_bias) = false;
  /// The curves of use_rel_proj_pos_bias.
  TORCH_ARG(int64_t, rel_proj_num_distance_basis) = 16;
  /// The distances use_rel_proj_pos_bias covers.
  TORCH_ARG(int64_t, rel_proj_max_dist) = 1024;
  /// Multi-latent attention (DeepSeek-V2, arXiv 2405.04434): the queries projected from a latent of this
  /// width (`to_latent_q`), set by dim_latent_q.
  TORCH_ARG(bool, use_latent_q) = false;
  /// The width of use_latent_q's latent.
  TORCH_ARG(std::optional<int64_t>, dim_latent_q) = std::nullopt;
  /// Multi-latent attention's keys and values projected from one latent of the input (`to_latent_kv`), which
  /// the decoding cache holds in their place: (b, 1, N, dim_latent_kv) per layer.
  TORCH_ARG(bool, use_latent_kv) = false;
  /// The width of use_latent_kv's latent.
  TORCH_ARG(std::optional<int64_t>, dim_latent_kv) = std::nullopt;
  /// MLA's decoupled rope: this many of the key heads come from the input itself (`to_rotateable_k`), not
  /// the latent, and only they (and the queries' last as many heads) rotate; the cache holds them beside the
  /// latent, (b, subheads, N, dim_head).
  TORCH_ARG(std::optional<int64_t>, latent_rope_subheads) = std::nullopt;
  /// Contextual position encoding, CoPE (Golovneva et al. 2024, arXiv 2405.18719): a query's position of a
  /// key counts the sigmoid-gated keys from it to the query, and a learned embedding of that (fractional)
  /// position (`attend.cope.pos_emb`, interpolated) joins the score. Causal self-attention, on the
  /// materialising path.
  TORCH_ARG(bool, use_cope) = false;
  /// The positions CoPE tells apart (counts clamp to max_pos - 1).
  TORCH_ARG(int64_t, cope_max_pos) = 16;
  /// A soft one-hot of each count over the positions (temperature 0.05) instead of interpolation.
  TORCH_ARG(bool, cope_soft_onehot_pos) = false;
  /// The gates from the scores mixed across heads (a 1x1 convolution, `attend.cope.talking_heads`).
  TORCH_ARG(bool, cope_talking_heads) = false;
  /// Attention on attention: a GLU output projection (Huang et al. 2019, arXiv 1908.06954).
  TORCH_ARG(bool, on_attn) = false;
  /// Output projection initialised to zero (set by AttentionLayers' zero_init_branch_output).
  TORCH_ARG(bool, zero_init_output) = false;
  /// Otherwise, the output projection's weight drawn from N(0, 1 / (2 fan_in depth)) (set per block by
  /// AttentionLayers' depth_scale_residual; not an option of the stack's own).
  TORCH_ARG(std::optional<int64_t>, output_proj_depth) = std::nullopt;
};

/// Whether the block projects its heads back to dim (`to_out`): project_out, else with more than one head or
/// on_attn, as x-transformers.
inline bool projects_out(const AttentionOptions& o, int64_t heads) {
  return o.project_out().value_or(heads > 1 || o.on_attn());
}

/// The width to_out reads: the merged heads, once per orthogonal projection joined.
inline int64_t merged_width(const AttentionOptions& o, int64_t heads) {
  const int64_t copies = std::max<int64_t>(
      1, int64_t(o.orthog_projected_values()) + int64_t(o.orthog_projected_values_per_head()));
  return heads * o.value_dim_head().value_or(o.dim_head()) * copies;
}

}  // namespace xtc::nn
