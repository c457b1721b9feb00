// Options of a layer stack (x-transformers' AttentionLayers / Encoder / Decoder / CrossAttender keyword
// arguments).
#pragma once

#include <torch/arg.h>
#include <xtc/nn/options/attention.h>
#include <xtc/nn/options/feedforward.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace xtc::nn {

/// Which norm every slot of the stack uses.
enum class NormKind {
  LayerNorm,
  RMSNorm,
  ScaleNorm,
  SimpleRMSNorm,
  DynamicTanh,
  Derf,
  AdaptiveLayerNorm,
  AdaptiveRMSNorm
};
/// How a branch output joins the residual stream.
enum class ResidualKind { Add, GRUGating, Orthogonal, MVSplit };

/// One group of x-transformers' repeat_blocks: blocks first..last (inclusive) run `repeats` times in a row.
struct RepeatBlocks {
  int64_t first, last, repeats;
};

/// A stack of attention and feed-forward layers with x-transformers' defaults throughout: pre-norm (Xiong et
/// al. 2020, arXiv 2002.04745) with a final norm, bias-less LayerNorm with unit-offset gains.
struct AttentionLayersOptions {
  AttentionLayersOptions(int64_t dim, int64_t depth, int64_t heads = 8);

  /// Layer kinds by index: 'a' self-attention, 'c' cross-attention, 'f' feed-forward.
  std::vector<char> layer_types() const;
  /// Indices into layer_types() in the order they run (may repeat: weight tying, layers_execute_order).
  std::vector<int64_t> execution_order() const;
  /// x-transformers' repeat_blocks as an execution order (layer indices, for layers_execute_order): the
  /// blocks in order, each group's run `repeats` times; the default block layout only (no custom_layers,
  /// par_ratio or sandwich_coef).
  std::vector<int64_t> repeat_blocks_order(const std::vector<RepeatBlocks>& groups) const;
  /// With unet_skips, for each layer (an index into layer_types()): the executed step whose input it joins,
  /// or -1 (x-transformers' ConcatCombine pairing: the second half's blocks with the first half's, last with
  /// first).
  std::vector<int64_t> unet_skip_sources() const;
  /// Key/value heads of self-attention after `kv_heads` / `one_kv_head`.
  int64_t resolved_kv_heads(const AttentionOptions& attention) const;
  NormKind norm_kind() const;
  ResidualKind residual_kind() const;
  /// x-transformers' len_default_block: the layers of one default block, 1 for custom_layers, par_ratio and
  /// sandwich_coef (a block's index is a layer's index over it).
  int64_t block_length() const;
  /// Whether branch_output_scale wraps every block in a Scale (x-transformers leaves out a scale of 1).
  bool scales_branch_output() const {
    return branch_output_scale_.has_value() && *branch_output_scale_ != 1.0;
  }
  /// Whether the wrappers' absolute positions are off because the stack has its own (rotary or T5), as
  /// x-transformers' `disable_abs_pos_emb` default.
  /// Whether wrappers leave out their absolute position embedding: disable_abs_pos_emb, by default with
  /// rotary or T5 relative positions (x-transformers).
  bool disables_abs_pos_emb() const {
    return disable_abs_pos_emb_.value_or(uses_rotary() || rel_pos_bias_ || polar_pos_emb_);
  }
  /// Rotary embedding on: rotary_pos_emb, or rotary_xpos (which implies it, as x-transformers).
  bool uses_rotary() const { return rotary_pos_emb_ || rotary_xpos_; }
  /// Rotated features per head when rotary_pos_emb is on.
  int64_t resolved_rotary_dim() const { return rotary_emb_dim_.value_or(attn_.dim_head() / 2); }
  /// The block options of layer `layer` (an index into layer_types()): its entry of the layer schedule
  /// (attn_per_layer, ...), or the common ones.
  const AttentionOptions& layer_attention(size_t layer) const;
  const FeedForwardOptions& layer_feed_forward(size_t layer) const;
  /// The token shift of layer `layer` (an index into layer_types()).
  int64_t layer_shift_tokens(size_t layer) const {
    if (shift_tokens_.empty()) return 0;
    return shift_tokens_.size() == 1 ? shift_tokens_.front() : shift_tokens_.at(layer);
  }
  /// Whether any layer shifts tokens.
  bool any_shift_tokens() const {
    for (const int64_t s : shift_tokens_)
      if (s > 0) return true;
    return false;
  }
  /// Whether forward needs a `condition` (adaptive norms or layerscale).
  bool needs_condition() const {
    return use_adaptive_layernorm_ || use_adaptive_rmsnorm_ || use_adaptive_layerscale_;
  }
  /// The width of `condition` as passed in, and as the adaptive layers read it (after
  /// adaptive_condition_mlp).
  int64_t resolved_dim_condition() const { return dim_condition_.value_or(dim_); }
  int64_t conditioning_width() const {
    return resolved_dim_condition() * (adaptive_condition_mlp_ ? adaptive_condition_mlp_expansion_ : 1);
  }
  /// Whether a final norm closes the stack (always with gated_multi_residual, as x-transformers).
  bool has_final_norm() const {
    return (pre_norm_ && pre_norm_has_final_norm_ && !pre_and_post_norm_) || gated_multi_residual_;
  }
  /// A norm before each branch: pre_norm, except under gated_multi_residual (its read gate normalises).
  bool norms_branch_input() const { return pre_norm_ && !gated_multi_residual_; }
  /// A norm after each residual: post-norm, pre_and_post_norm, or gated_multi_residual.
  bool applies_post_norm() const { return !norms_branch_input() || pre_and_post_norm_; }
  /// Several residual streams: hyper-connections, or gated_multi_residual's streams.
  bool multi_stream() const { return num_residual_streams_ > 1; }
  /// Hyper-connections join each branch to the streams (several streams without gated_multi_residual).
  bool hyper_connections() const { return multi_stream() && !gated_multi_residual_; }
  /// The inputs layer `layer` (an index into layer_types()) reads: 3 when self-attention's queries, keys and
  /// values read different views (qkv_receive_diff_residuals; with integrate_layers every self-attention
  /// layer after the first), else 1.
  int64_t layer_input_views(size_t layer) const;
  /// The views several residual streams give layer `layer`: its input views, unless integrate_layers mixes
  /// them from the earlier layers instead (then 1).
  int64_t stream_read_views(size_t layer) const { return integrate_layers_ ? 1 : layer_input_views(layer); }
  /// Whether each layer's input is integrated from the earlier layers' (integrate_layers or
  /// attn_aggregated_residuals: x-transformers' layer_integrators).
  bool integrates_layers() const { return integrate_layers_ || attn_aggregated_residuals_; }
  /// Checks values and clashing flags; throws c10::Error (ValueError in Python) naming the options.
  void validate() const;

  /// Every option as a JSON object of keyword arguments under x-transformers' names (a layer schedule as a
  /// list), read back by parse(): what the layer-stack ops receive, in config.json's format.
  std::string serialize() const;
  /// Options from x-transformers' keyword arguments as a JSON object (config.json's form; the rest at their
  /// defaults), routed and validated as keyword_options() describes; throws c10::Error naming the argument.
  static AttentionLayersOptions parse(const std::string& json);
  /// The option keys parse() accepts ("dim", "attn_dim_head", ...), in declaration order.
  static std::vector<std::string> keys();

  /// Model width.
  TORCH_ARG(int64_t, dim);
  /// Number of blocks (each the default block: ('a', 'f'), ('a', 'c', 'f') with cross_attend, ...).
  TORCH_ARG(int64_t, depth);
  /// Attention heads (self and cross).
  TORCH_ARG(int64_t, heads);
  /// Causal self-attention (a Decoder); right-aligned when keys outnumber queries.
  TORCH_ARG(bool, causal) = false;
  /// Add a cross-attention layer after each self-attention; forward then needs `context`.
  TORCH_ARG(bool, cross_attend) = false;
  /// With cross_attend: blocks ('c', 'f'), no self-attention (CrossAttender).
  TORCH_ARG(bool, only_cross) = false;
  /// Drop whole layers at random during training (Fan et al. 2019, arXiv 1909.11556).
  TORCH_ARG(double, layer_dropout) = 0.0;
  /// In training, each cross-attention layer sees a random share of the context's tokens, the rest dropped
  /// (x-transformers' dropout_seq; Perceiver AR): the fraction dropped.
  TORCH_ARG(double, cross_attn_tokens_dropout) = 0.0;
  /// ScaleNorm (Nguyen & Salazar 2019, arXiv 1910.05895).
  TORCH_ARG(bool, use_scalenorm) = false;
  /// RMSNorm (Zhang & Sennrich 2019, arXiv 1910.07467), gain `g`.
  TORCH_ARG(bool, use_rmsnorm) = false;
  /// RMSNorm without a learned gain (Qin et al. 2023, arXiv 2307.14995).
  TORCH_ARG(bool, use_simple_rmsnorm) = false;
  /// Dynamic tanh in place of every norm, gamma * tanh(alpha * x) + beta (Zhu et al. 2025, arXiv 2503.10622);
  /// pre-norm only, as x-transformers.
  TORCH_ARG(bool, use_dynamic_tanh) = false;
  /// The initial alpha of use_dynamic_tanh.
  TORCH_ARG(double, dynamic_tanh_init_alpha) = 1.0;
  /// Derf in place of every norm, gamma * erf(alpha * x + s) + beta, learned scalars alpha (0.5) and s (0)
  /// (arXiv 2512.10938); x-transformers' Derf.
  TORCH_ARG(bool, use_derf) = false;
  /// Adaptive LayerNorm (DiT, Peebles & Xie 2022, arXiv 2212.09748): LayerNorm without a gain, times
  /// (1 + W condition) per norm; forward then takes `condition`.
  TORCH_ARG(bool, use_adaptive_layernorm) = false;
  /// The same on RMSNorm.
  TORCH_ARG(bool, use_adaptive_rmsnorm) = false;
  /// Each branch output times sigmoid(W condition + b), b initialised to -2 (DiT's adaLN-zero).
  TORCH_ARG(bool, use_adaptive_layerscale) = false;
  /// Width of `condition`; unset = dim.
  TORCH_ARG(std::optional<int64_t>, dim_condition) = std::nullopt;
  /// The condition through a bias-less linear to adaptive_condition_mlp_expansion times its width and a SiLU
  /// first.
  TORCH_ARG(bool, adaptive_condition_mlp) = false;
  TORCH_ARG(int64_t, adaptive_condition_mlp_expansion) = 4;
  /// Gains stored as (gain - 1), so weight decay pulls them to 1; also applies to LayerScale.
  TORCH_ARG(bool, norm_add_unit_offset) = true;
  /// Pre-norm; false = post-norm (the original Transformer), with no final norm.
  TORCH_ARG(bool, pre_norm) = true;
  /// A norm on each branch output too (Ding et al. 2021, CogView, arXiv 2105.13290).
  TORCH_ARG(bool, sandwich_norm) = false;
  /// With pre-norm, close the stack with a norm.
  TORCH_ARG(bool, pre_norm_has_final_norm) = true;
  /// A norm after each residual too, and no final norm (KEEL; recurrent-depth looped LMs); the norm before
  /// each branch stays pre_norm's, as in x-transformers.
  TORCH_ARG(bool, pre_and_post_norm) = false;
  /// Every layer's branch also reads a learned projection of the stack's input (DEQ, Bai et al. 2019, arXiv
  /// 1909.01377): x + W x_in before its norm, the residual stream unchanged.
  TORCH_ARG(bool, reinject_input) = false;
  /// U-Net skips: each block of the second half starts from a projection of its input concatenated with the
  /// input of its mirror block in the first half.
  TORCH_ARG(bool, unet_skips) = false;
  /// With reinject_input: the projection gated by sigmoid(w . x_in) per token.
  TORCH_ARG(bool, learned_reinject_input_gate) = false;
  /// Learned per-feature scale of the residual (Shleifer et al. 2021, NormFormer, arXiv 2110.09456).
  TORCH_ARG(bool, scale_residual) = false;
  /// A constant multiplier on the residual.
  TORCH_ARG(double, scale_residual_constant) = 1.0;
  /// GRU gating instead of addition (Parisotto et al. 2019, arXiv 1910.06764).
  TORCH_ARG(bool, gate_residual) = false;
  /// The branch output joins the residual only by its part orthogonal to it (Oh et al. 2025, arXiv
  /// 2505.11881), each sequence's whole (n, dim) block one vector, as x-transformers' orthog_project.
  TORCH_ARG(bool, orthog_residual) = false;
  /// The mean-variance split update (arXiv 2605.06169): residual + (x - mean x) * beta + (mean x - mean
  /// residual) * alpha, the means over each sequence's kept tokens.
  TORCH_ARG(bool, mv_split_residual) = false;
  /// mv_split_residual's alpha and beta from the branch's mean (zero-initialised linears, biases at the
  /// initial values) instead of learned vectors (x-transformers' residual_fn_kwargs `learned`).
  TORCH_ARG(bool, mv_split_residual_learned) = false;
  /// mv_split_residual's initial alpha (residual_fn_kwargs `init_alpha`).
  TORCH_ARG(double, mv_split_residual_init_alpha) = 0.0;
  /// mv_split_residual's initial beta (residual_fn_kwargs `init_beta`).
  TORCH_ARG(double, mv_split_residual_init_beta) = 0.03;
  /// Hyper-connections (Zhu et al. 2024, arXiv 2409.19606, dynamic form; Sinkhorn-constrained mixes, arXiv
  /// 2512.24880): the residual is this many streams, which each layer reads and writes through learned,
  /// per-token mixes; the stack's output is their sum. 1 = one plain stream.
  TORCH_ARG(int64_t, num_residual_streams) = 1;
  /// Sinkhorn iterations of hyper-connections' residual mix.
  TORCH_ARG(int64_t, hyper_conn_sinkhorn_iters) = 5;
  /// Self-attention's queries, keys and values each read their own view of the streams (hyper-connections,
  /// gated_multi_residual) or of the earlier layers (integrate_layers, attn_aggregated_residuals).
  TORCH_ARG(bool, qkv_receive_diff_residuals) = false;
  /// LIMe (Gerasimov et al. 2025, arXiv 2502.09245): each layer's input is a learned per-token mix of every
  /// earlier layer's input (x-transformers' DynamicLIMe); self-attention's q, k and v mix their own.
  TORCH_ARG(bool, integrate_layers) = false;
  /// integrate_layers' mix weights through a softmax over the layers (else a ReLU).
  TORCH_ARG(bool, layer_integrate_use_softmax) = true;
  /// Gated multi residual (Qwen3.8-Flash-Next): num_residual_streams streams, read through elementwise
  /// low-rank gates, written through a scalar gate per stream; no norm before the branches, one after each
  /// residual, and a final norm.
  TORCH_ARG(bool, gated_multi_residual) = false;
  /// gated_multi_residual's read gate rank (x-transformers' residual_fn_kwargs `read_gate_rank`); required.
  TORCH_ARG(std::optional<int64_t>, gated_multi_residual_read_gate_rank) = std::nullopt;
  /// Attention residuals (arXiv 2601.21582, 2603.15031): each layer's input is an attention-weighted pool of
  /// every earlier layer's input, the query conditioned on the latest (x-transformers' AttentionResidual).
  TORCH_ARG(bool, attn_aggregated_residuals) = false;
  /// attn_aggregated_residuals' query LoRA rank (attn_aggregated_residual_kwargs `lora_rank`); below dim.
  TORCH_ARG(int64_t, aggregated_residual_lora_rank) = 64;
  /// The activation inside that LoRA (`lora_activation`), a spec of functional/activation.h; unset = none.
  TORCH_ARG(std::optional<std::string>, aggregated_residual_lora_activation) = std::nullopt;
  /// Every branch output times this constant (x-transformers' scale_residual or depth_scale_residual given
  /// as a number: its Scale wrapper, `fn.` in the parameter names unless 1); unset = none.
  TORCH_ARG(std::optional<double>, branch_output_scale) = std::nullopt;
  /// Output projections initialised from N(0, 1 / (2 fan_in depth)), depth the block's index from 1 (OLMo's
  /// "mitchell" init; x-transformers' depth_scale_residual=True).
  TORCH_ARG(bool, depth_scale_residual) = false;
  /// Learned per-feature scale of each branch output (Touvron et al. 2021, CaiT, arXiv 2103.17239).
  TORCH_ARG(bool, use_layerscale) = false;
  /// Initial LayerScale value.
  TORCH_ARG(double, layerscale_init_value) = 0.0;
  /// Feed-forward before and after attention, each at half weight (Lu et al. 2019, arXiv 1906.02762).
  TORCH_ARG(bool, macaron) = false;
  /// Attention layers only, the feed-forwards left out (Ndubuaku et al., arXiv 2607.18363).
  TORCH_ARG(bool, only_attn) = false;
  /// Explicit layer kinds, e.g. "aaff"; depth is then unused.
  TORCH_ARG(std::optional<std::string>, custom_layers) = std::nullopt;
  /// Sandwich transformer: k attention layers first, k feed-forwards last (Press et al. 2019, arXiv
  /// 1911.03864).
  TORCH_ARG(std::optional<int64_t>, sandwich_coef) = std::nullopt;
  /// PAR transformer layout (Mandava et al. 2020, arXiv 2009.04534).
  TORCH_ARG(std::optional<int64_t>, par_ratio) = std::nullopt;
  /// Run layers in this order (indices may repeat).
  TORCH_ARG(std::vector<int64_t>, layers_execute_order) = {};
  /// One block's weights reused depth times (ALBERT, Lan et al. 2019, arXiv 1909.11942).
  TORCH_ARG(bool, weight_tie_layers) = false;
  /// ALiBi (Press et al. 2021, arXiv 2108.12409), computed in the kernel.
  TORCH_ARG(bool, alibi_pos_bias) = false;
  /// ALiBi on the first heads only; unset = all heads.
  TORCH_ARG(std::optional<int64_t>, alibi_num_heads) = std::nullopt;
  /// T5's learned, bucketed relative position bias (Raffel et al. 2019, arXiv 1910.10683), times
  /// sqrt(dim_head).
  TORCH_ARG(bool, rel_pos_bias) = false;
  /// T5 buckets.
  TORCH_ARG(int64_t, rel_pos_num_buckets) = 32;
  /// T5 distance beyond which buckets stop growing.
  TORCH_ARG(int64_t, rel_pos_max_distance) = 128;
  /// A per-head bias from an MLP over relative distance (CrossFormer, Wang et al. 2021, arXiv 2108.00154).
  TORCH_ARG(bool, dynamic_pos_bias) = false;
  /// The MLP reads sign(d) * log(|d| + 1) (SwinV2, Liu et al. 2021, arXiv 2111.09883).
  TORCH_ARG(bool, dynamic_pos_bias_log_distance) = false;
  /// Hidden layers of that MLP.
  TORCH_ARG(int64_t, dynamic_pos_bias_mlp_depth) = 2;
  /// LayerNorms inside that MLP.
  TORCH_ARG(bool, dynamic_pos_bias_norm) = false;
  /// Token shifting (Wang's "shift tokens" trick, as in RWKV): the block input's features are split into
  /// 2s + 1 segments (s + 1 when causal) shifted by -s..s positions. One s for every layer, or one per layer
  /// (a layer schedule, as x-transformers' tuple); empty or 0 = off.
  TORCH_ARG(std::vector<int64_t>, shift_tokens) = {};
  /// Value residual learning (ResFormer, Zhou et al. 2024, arXiv 2410.17897): later attention layers mix
  /// their values with the first layer's.
  TORCH_ARG(bool, add_value_residual) = false;
  /// With add_value_residual: a learned per-token, per-head mix for self-attention (else 0.5).
  TORCH_ARG(bool, learned_value_residual_mix) = true;
  /// RealFormer residual attention: each self-attention adds the previous one's pre-softmax scores (He et al.
  /// 2020, arXiv 2012.11747).
  TORCH_ARG(bool, residual_attn) = false;
  /// The same for cross-attention.
  TORCH_ARG(bool, cross_residual_attn) = false;
  /// Rotary position embedding on q and k of self-attention (Su et al. 2021, arXiv 2104.09864), interleaved
  /// pairs as x-transformers (GPT-J style).
  TORCH_ARG(bool, rotary_pos_emb) = false;
  /// Rotated features per head; unset = dim_head / 2 (partial rotary, as x-transformers).
  TORCH_ARG(std::optional<int64_t>, rotary_emb_dim) = std::nullopt;
  /// Positions divided by this factor (position interpolation, Chen et al. 2023, arXiv 2306.15595).
  TORCH_ARG(double, rotary_interpolation_factor) = 1.0;
  /// NTK-aware rescaling of the rotary base: base * factor^(r / (r - 2)).
  TORCH_ARG(double, rotary_base_rescale_factor) = 1.0;
  /// xPos (Sun et al. 2022, arXiv 2212.10554): rotary with a per-pair decay, q scaled by s^p and k by s^-p,
  /// p = (position - max_pos / 2) / rotary_xpos_scale_base; implies rotary_pos_emb; causal stacks only.
  TORCH_ARG(bool, rotary_xpos) = false;
  /// The xPos scale base.
  TORCH_ARG(int64_t, rotary_xpos_scale_base) = 512;
  /// Tells the wrappers whether to leave out their absolute position embedding; unset = with rotary or T5
  /// bias.
  TORCH_ARG(std::optional<bool>, disable_abs_pos_emb) = std::nullopt;
  /// Rotary (and xPos) on the last rotate_num_heads heads of self-attention only; unset = all heads. Below
  /// heads it needs kv_heads == heads, as x-transformers.
  TORCH_ARG(std::optional<int64_t>, rotate_num_heads) = std::nullopt;
  /// Custom ALiBi slopes, one per ALiBi head (x-transformers' rel_pos_kwargs `slopes`); empty = the geometric
  /// series.
  TORCH_ARG(std::vector<double>, alibi_slopes) = {};
  /// Polar positional embedding, PoPE (arXiv 2509.10534): self-attention's q and k become magnitudes
  /// softplus(q) at angles of their positions (the keys' shifted by a learned per-head bias in [-2 pi, 0],
  /// `polar_pos_emb.learned_bias`), 2 dim_head features whose dot product the flash kernels take.
  TORCH_ARG(bool, polar_pos_emb) = false;
  /// polar_pos_emb's bias drawn uniform in [-2 pi, 0] instead of zeros. (x-transformers 2.31.10 fails to
  /// build this outside torch.no_grad(): an in-place draw on a parameter; here it draws the same values.)
  TORCH_ARG(bool, polar_bias_uniform_init) = false;
  /// c * tanh(x / c) on the output before the final norm (Gemma 2).
  TORCH_ARG(bool, softclamp_output) = false;
  /// The cap c of softclamp_output.
  TORCH_ARG(double, softclamp_output_value) = 30.0;
  /// xtc extension: with a `mask`, the kept tokens (any pattern) are packed once at the stack's entry, every
  /// layer runs on them alone (attention per sequence in the varlen kernel) and the output is scattered back,
  /// zeros at masked positions (as torch's nested-tensor fast path). Positions keep their original index.
  TORCH_ARG(bool, unpad) = false;
  /// Zero-initialised output projections of every branch.
  TORCH_ARG(bool, zero_init_branch_output) = false;
  /// Options of every self-attention block (`attn_*`).
  TORCH_ARG(AttentionOptions, attn) = {};
  /// Options of every cross-attention block (`attn_*` overridden by `cross_attn_*`).
  TORCH_ARG(AttentionOptions, cross_attn) = {};
  /// Options of every feed-forward block (`ff_*`).
  TORCH_ARG(FeedForwardOptions, ff) = {};
  /// Layer schedules (x-transformers' tuples: an `attn_*`, `cross_attn_*` or `ff_*` value per layer of that
  /// kind): one options struct per self-attention, cross-attention or feed-forward layer, in layer order;
  /// empty = every layer of that kind takes attn(), cross_attn() or ff(). The stack-wide uses (rotary's
  /// dim_head, T5's scale, the context's width, packing) read attn() / cross_attn(), which parse() sets to
  /// the first layer's values.
  TORCH_ARG(std::vector<AttentionOptions>, attn_per_layer) = {};
  TORCH_ARG(std::vector<AttentionOptions>, cross_attn_per_layer) = {};
  TORCH_ARG(std::vector<FeedForwardOptions>, ff_per_layer) = {};
};

}  // namespace xtc::nn
