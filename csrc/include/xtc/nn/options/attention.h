// Options of the attention block (x-transformers' `attn_*` and `cross_attn_*` keyword arguments, prefix
// stripped).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>

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
  /// Sigmoid gate on the attention output from the block input (AlphaFold 2's gated attention).
  TORCH_ARG(bool, gate_values) = false;
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
  /// Attention on attention: a GLU output projection (Huang et al. 2019, arXiv 1908.06954).
  TORCH_ARG(bool, on_attn) = false;
  /// Output projection initialised to zero (set by AttentionLayers' zero_init_branch_output).
  TORCH_ARG(bool, zero_init_output) = false;
};

}  // namespace xtc::nn
