// Multi-head attention on explicit parameters.
//
// Shape legend: b batch, n queries, m keys, h heads, hk kv heads, dh head dim, dv value head dim.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/context_parallel.h>
#include <xtc/nn/functional/hybrid.h>
#include <xtc/nn/functional/packing.h>
#include <xtc/nn/options/attention.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace xtc::nn::functional {

/// x-transformers' LoRALinear: up(act(down(x))) through a low-rank bottleneck, or one bias-less weight.
struct LowRankLinearWeights {
  at::Tensor weight;    // (out, in); undefined with a bottleneck
  at::Tensor down, up;  // (rank, in), (out, rank)
  bool defined() const { return weight.defined() || down.defined(); }
};

/// The attention block's tensors; undefined where the options leave one out.
struct AttentionWeights {
  // Multi-latent attention: (Lq, dim), (Lkv, dim), (sub dh, dim); to_q then reads Lq, to_k and to_v Lkv, and
  // to_k gives hk - sub heads
  at::Tensor to_latent_q, to_latent_kv, to_rotateable_k;
  at::Tensor to_q, to_k, to_v;                      // (h dh, dim), (hk dh, dim), (hk dv, dim)
  LowRankLinearWeights to_v_gate;                   // dim -> h dv (or h, headwise)
  LowRankLinearWeights to_output_gate;              // h dv -> h dv (or h, headwise)
  at::Tensor v_head_gate_weight, v_head_gate_bias;  // (h, dim), (h): gate_value_heads
  at::Tensor to_out;                                // (dim, h dv); undefined with one head
  at::Tensor head_scale;                            // (1, h, 1, 1)
  at::Tensor mem_k, mem_v;                          // (hk, num_mem_kv, dh)
  at::Tensor qk_q_scale, qk_k_scale;                // (h, 1, dh), (hk, 1, dh)
  at::Tensor to_out_glu;  // (2 dim, h dv), on_attn: GLU output projection instead of to_out
  at::Tensor pre_talking_heads, post_talking_heads, pre_scale_post_talking_heads;  // (h, h, 1, 1)
  at::Tensor value_mix_weight, value_mix_bias;  // (h, dim), (h): learned value-residual mix
  at::Tensor q_rmsnorm, k_rmsnorm,
      value_rmsnorm;          // (h, 1, dh), (hk, 1, dh), (h, 1, dh): per-head RMSNorm gains
  at::Tensor head_attn_sink;  // (h): learned per-head sink logits
  // data_dependent_alibi: (h or 2h, dim) and (h or 2h); per row (2 h d, dim), no bias
  at::Tensor forget_gate_weight, forget_gate_bias;
  // use_rel_proj_pos_bias: (h basis, dim), (h basis), (basis, max_dist)
  at::Tensor distance_weight, distance_bias, distance_bank;
  at::Tensor cope_pos_emb, cope_talking_heads;  // CoPE: (max_pos, dh), (h, h, 1, 1)
  HybridWeights hybrid;                         // hybrid_module: its network, norms and mix
};

/// ResFormer's value residual: `first` (the first layer's values, (b, m, hk, dv); undefined = none) is mixed
/// into this layer's values, by the learned per-token mix or 0.5; `values_out`, when given, receives this
/// layer's values before the mix.
struct ValueResidual {
  at::Tensor first;
  at::Tensor* values_out = nullptr;
};

/// A Transformer-XL memory for one self-attention layer: (b, M, dim) prepended to its keys and values, with
/// its (b, M) key mask.
struct XLMemory {
  at::Tensor mem;
  std::optional<at::Tensor> mask;
};

/// Incremental decoding (x-transformers' cached_kv): the keys and values of earlier steps, (b, N, hk, dh|dv),
/// taken after qk-norm and the value mix and before rotary. On entry, undefined = no earlier step; on return,
/// this call's keys and values behind the earlier ones. With earlier keys, cross-attention takes them alone
/// (the context is not projected again) and `mask` is not applied to the outputs (the queries are the new
/// tokens only).
struct KVCache {
  at::Tensor k, v;
  /// hybrid_module's GRU state (x-transformers' hybrid_hidden): the previous step's on entry (undefined =
  /// none), this call's on return.
  at::Tensor hybrid_hidden;
};

/// x-transformers' attention maps of one layer (its Intermediates), each (b, h, n, keys), memory keys first:
/// qk_similarities (q.k times the scale, plus the previous layer's scores with residual attention; before
/// bias and masks), pre_softmax_attn (the masked logits) and post_softmax_attn (the probabilities, before
/// dropout).
struct AttentionMaps {
  at::Tensor qk_similarities, pre_softmax_attn, post_softmax_attn;
};

/// Attention over packed sequences (xtc/nn/functional/packing.h): x holds the packed queries (1, total_q,
/// dim), laid out by `queries`; the keys' input is packed too, laid out by `keys` (self-attention; a
/// caller-packed context), or with packed_keys false it is the dense context (b, m, dim) and `keys` packs its
/// kept positions (unpad's cross-attention). Masks are in the layouts: the call passes none.
struct PackedAttention {
  const PackedSequences* queries = nullptr;
  const PackedSequences* keys = nullptr;
  bool packed_keys = true;
};

/// Per-call additions to one attention layer's keys and values, as x-transformers' Attention.forward takes
/// them.
struct ExtraKeyValues {
  /// kv_input_residual: added to the keys' and values' input (x, or the context; not a Transformer-XL
  /// memory), broadcastable to it; undefined = none. On a cached cross-attention step the cached keys already
  /// hold it.
  at::Tensor input_residual;
  /// Self-attention's keys' and values' own inputs, (b, n, dim) like x (qkv_receive_diff_residuals: each
  /// projection reads its own view of the residual streams); undefined = x.
  at::Tensor key_input, value_input;
  /// additional_key_values, (b, ha, l, dh) and (b, ha, l, dv) (x-transformers' head-first layout, e.g.
  /// another model's cached_kv), ha dividing the heads: joined in front of the keys after the memory
  /// key/values, not rotated, visible to every query and never biased. Undefined = none.
  at::Tensor k, v;
  /// (b, l) bool, True = keep, for k and v; unset = all kept.
  std::optional<at::Tensor> mask;
};

/// What the materialising path does beyond a plain softmax: talking heads and top-k sparsity.
struct ScoreTransforms {
  at::Tensor pre_talking_heads, post_talking_heads, pre_scale_post_talking_heads;  // (h, h, 1, 1)
  std::optional<int64_t> sparse_topk;
  bool sparse_topk_straight_through = false;
  at::Tensor sink;  // (h): a logit column joined before the softmax and dropped after it; undefined = none
  bool sigmoid = false, hard = false, cog_signed = false;  // AttentionOptions' weighting variants
  bool gumbel_softmax = false, gumbel_softmax_hard = true;
  double gumbel_softmax_temp = 1.0;
  bool selective = false;  // selective attention's gate subtracted after the masks
  // CoPE: the position embedding (max_pos, dh) (undefined = none), its heads' mix, soft one-hot positions
  at::Tensor cope_pos_emb, cope_talking_heads;
  bool cope_soft_onehot = false;
  // Inverted attention: the softmax over the queries, masked by query_keep (b, 1, n, 1; undefined = all)
  bool inverted = false;
  at::Tensor query_keep;
};

/// What the attention block needs besides its weights.
struct AttentionConfig {
  int64_t heads, kv_heads, dim_head, value_dim_head;
  bool causal = false;
  AttentionOptions options;
  at::Tensor alibi_slopes;  // (h) float, 0 for heads without ALiBi; undefined = no ALiBi
  at::Tensor
      rotary_angles;  // (n, r) or (b, n, r) rotary angles of the positions (q and k take the last rows)
  at::Tensor
      rotary_scale;  // xPos scales of the same positions and shape (q times, k divided); undefined = none
  /// The keys' own rotary angles and xPos scales (cross-attention with context_pos: the context's positions,
  /// the last m rows); undefined = the keys take rotary_angles and rotary_scale as the queries do.
  at::Tensor key_rotary_angles, key_rotary_scale;
  int64_t rotary_heads = -1;  // rotary on the last rotary_heads heads of q and k; -1 = all
  /// PoPE: the angles of the keys' positions, (N, dh) or (b, N, dh) (q and k take the last rows), and the
  /// keys' per-head shift (h, 1, dh); undefined = no polar embedding.
  at::Tensor polar_angles, polar_bias;
  at::Tensor
      position_bias;  // (1|b, h, n, n) bias (T5, dynamic, attn_bias) added to the logits; undefined = none
  bool residual_scores = false;  // RealFormer: take the previous layer's scores and hand on this layer's
  /// Context parallelism (self-attention): x holds this rank's shard; the keys and values are gathered from
  /// every rank and each query attends at its global position. Null: the whole sequence is here.
  std::shared_ptr<const SequenceShards> shards;
};

/// Linear attention with the elu + 1 feature map: out_i = phi(q_i) S / (phi(q_i) z), S and z summed over the
/// keys query i may see (key mask; causal right-aligned). Rows that see no key give 0. q (b, n, h, d), k (b,
/// m, hk, d), v (b, m, hk, dv), query head i reads kv head i % hk; O(n) memory (causal: chunks of `chunk`
/// queries).
at::Tensor linear_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& key_padding_mask, bool causal,
                            int64_t chunk = 64);

/// Rotates the first r features of t (b, n, heads, dh) by the last n rows of `angles` (N, r) or (b, N, r)
/// (per sequence positions), pairs (2k, 2k+1) together (x-transformers' apply_rotary_pos_emb); the rest pass
/// through. `scale` (N, r), when defined, multiplies the rotated features (xPos; its reciprocal with
/// `inverse_scale`, for the keys).
at::Tensor apply_rotary(const at::Tensor& t, const at::Tensor& angles, const at::Tensor& scale = {},
                        bool inverse_scale = false);

/// Attention of x (b, n, dim) over `context` (b, m, dim) or, when undefined, over x itself. `mask` (b, n)
/// zeroes the output at padded queries and masks self-attention's keys unless `context_mask` is given;
/// `context_mask` masks the keys (cross-attention's, or self-attention's in place of `mask`). Runs in
/// xtc::flash_attention unless flash_reasons() names a reason to materialise the scores (or the backend
/// setting excludes the flash kernel). `attn_mask` (b|1, h|1, n, n) bool, True = may attend, restricts
/// self-attention further. With config.residual_scores, `scores` holds the previous layer's pre-softmax
/// scores (b, h, n, keys) on entry (or is undefined) and this layer's on return. With `packed`, x and the
/// keys are packed sequences: attention runs per sequence in xtc::flash_attention_varlen where it can, in the
/// padded frame otherwise. `extra`: the call's kv_input_residual and additional key/values.
at::Tensor attention(const at::Tensor& x, const std::optional<at::Tensor>& context,
                     const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& context_mask,
                     const AttentionWeights& weights, const AttentionConfig& config, bool training,
                     const std::optional<at::Tensor>& attn_mask = std::nullopt, at::Tensor* scores = nullptr,
                     const ValueResidual& value_residual = {}, const XLMemory& memory = {},
                     KVCache* cache = nullptr, AttentionMaps* maps = nullptr,
                     const PackedAttention* packed = nullptr, const ExtraKeyValues& extra = {});

/// Why this attention cannot run in the flash kernel (empty: it can). Named checks, as torch's sdp_utils;
/// each layer's call hands them to xtc::choose_backend (xtc/backends.h), which takes Math when the list is
/// not empty. `wants_maps`: the caller asked for the attention maps (return_hiddens without attn_flash).
std::vector<std::string> flash_reasons(const AttentionConfig& config, bool training, bool has_attn_mask,
                                       bool wants_maps = false);

/// Softmax attention that materialises the (b, h, n, m) scores, as x-transformers' own path: logits scaled,
/// plus `bias` (broadcastable to (b, h, n, m)), soft-capped, hidden entries (`keep` False, or in the future
/// when causal) filled with the dtype's lowest value, softmax in float32, dropout, rows whose `keep` is all
/// False set to 0. q (b, n, h, dh), k and v (b, m, hk, dh|dv); returns (b, n, h, dv). `scores`, when given:
/// the previous pre-softmax scores to add on entry (if defined), this call's on return.
at::Tensor materialized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                  const at::Tensor& keep, const at::Tensor& bias, bool causal, double softcap,
                                  double dropout, bool training, const ScoreTransforms& transforms = {},
                                  at::Tensor* scores = nullptr, AttentionMaps* maps = nullptr);

}  // namespace xtc::nn::functional
