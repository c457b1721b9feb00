// Options of TransformerWrapper (x-transformers' token-level wrapper).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace xtc::nn {

/// Token embedding, positions and a logits head around a layer stack, as x-transformers' TransformerWrapper.
struct TransformerWrapperOptions {
  using NamedCounts = std::vector<std::pair<std::string, int64_t>>;
  TransformerWrapperOptions(int64_t num_tokens, int64_t max_seq_len);

  /// embed_num_tokens' (name, num_tokens) pairs.
  const NamedCounts& extra_embeddings() const { return embed_num_tokens_; }
  /// Checks values; throws c10::Error (ValueError in Python) naming the option.
  void validate() const;
  /// Every option as a JSON object of keyword arguments under x-transformers' names, read back by parse():
  /// what the transformer_wrapper op receives. parse() takes any of them (the rest at their defaults) and
  /// throws naming unknown keys and bad values.
  std::string serialize() const;
  static TransformerWrapperOptions parse(const std::string& json);
  /// The option keys parse() accepts.
  static std::vector<std::string> keys();

  /// Vocabulary size.
  TORCH_ARG(int64_t, num_tokens);
  /// Longest sequence (sizes learned absolute positions; 0 = none).
  TORCH_ARG(int64_t, max_seq_len);
  /// Embedding width; unset = the stack's dim. When it differs, `project_emb` (with bias) maps it to dim.
  TORCH_ARG(std::optional<int64_t>, emb_dim) = std::nullopt;
  /// LayerNorm (plain gain) after the embedding.
  TORCH_ARG(bool, post_emb_norm) = false;
  /// Dropout on the embedding (training only).
  TORCH_ARG(double, emb_dropout) = 0.0;
  /// Learned tokens prepended to every sequence (Memory Transformer, arXiv 2006.11527).
  TORCH_ARG(int64_t, num_memory_tokens) = 0;
  /// The memory tokens in front of every chunk of this many tokens instead of the sequence's (a Decoder's,
  /// without a mask; x-transformers' memory_tokens_interspersed_every); unset = once in front.
  TORCH_ARG(std::optional<int64_t>, memory_tokens_interspersed_every) = std::nullopt;
  /// Logits from the token embedding's transpose (Press & Wolf 2016, arXiv 1608.05859).
  TORCH_ARG(bool, tie_embedding) = false;
  /// Scale of the tied logits; unset = dim^-0.5.
  TORCH_ARG(std::optional<double>, tie_embedding_scale) = std::nullopt;
  /// Width of the logits; unset = num_tokens.
  TORCH_ARG(std::optional<int64_t>, logits_dim) = std::nullopt;
  /// No logits head: the wrapper returns embeddings.
  TORCH_ARG(bool, return_only_embed) = false;
  /// Absolute positions (off when the stack has rotary or T5 positions).
  TORCH_ARG(bool, use_abs_pos_emb) = true;
  /// Scaled sinusoidal positions (Hua et al. 2022, arXiv 2202.10447) instead of learned ones.
  TORCH_ARG(bool, scaled_sinu_pos_emb) = false;
  /// l2-normalised token and position embeddings (Wortsman et al.'s "l2norm embed").
  TORCH_ARG(bool, l2norm_embed) = false;
  /// Mean over the kept positions: one vector per sequence.
  TORCH_ARG(bool, average_pool_embed) = false;
  /// BERT's [CLS]: num_cls_tokens learned tokens (`cls_token`, normal with std 0.02) in front of the
  /// sequence; the outputs are theirs alone, (b, dim) for one, (b, num_cls_tokens, dim) for more. Not with
  /// average_pool_embed.
  TORCH_ARG(bool, use_cls_token) = false;
  TORCH_ARG(int64_t, num_cls_tokens) = 1;
  /// The token embeddings come with each call (ExtraEmbeddings::token_embeds, from x-transformers'
  /// `token_emb` given as a module, which Python runs), so the wrapper has no `token_emb.emb.weight`; not
  /// with tie_embedding.
  TORCH_ARG(bool, external_token_emb) = false;
  /// Logits of width 1 lose their last dim (a regression or score head).
  TORCH_ARG(bool, squeeze_out_last_dim) = false;
  /// Further token embeddings summed into the tokens' (BERT's token types): (name, num_tokens) in order (a
  /// dict in x-transformers), each table `embeds.<name>_embed`; forward takes one id tensor per name
  /// (x-transformers' embed_ids).
  TORCH_ARG(NamedCounts, embed_num_tokens) = {};
  /// The embeddings' gradient scaled by this (CogView, arXiv 2105.13290; GLM-130B): x f + x.detach() (1 - f),
  /// the values unchanged; 1 = unscaled.
  TORCH_ARG(double, emb_frac_gradient) = 1.0;
  /// Independent logits heads (`to_logits.<i>`): their logits stacked on a new leading axis (Python: a
  /// tuple).
  TORCH_ARG(int64_t, num_output_heads) = 1;
  /// Mixture of softmaxes (Yang et al. 2017, arXiv 1711.03953): the embedding expanded to k (`to_mixture.0`),
  /// each through the head, their softmaxes mixed by a softmax of `combine_mixture`; the logits returned are
  /// the mixture's log-probabilities.
  TORCH_ARG(bool, mixture_of_softmax) = false;
  TORCH_ARG(int64_t, mixture_of_softmax_k) = 4;
  /// Sigsoftmax logits (Kanai et al. 2018, arXiv 1805.10829): logits + log(sigmoid(logits)), so a softmax
  /// over them is the sigsoftmax.
  TORCH_ARG(bool, sigsoftmax_logits) = false;
  /// x-transformers' attention pooling: num_pooled_tokens learned queries (`attn_pool.queries`, width
  /// dim_pooled_tokens, unset = dim) cross-attend to the final embeddings, by one attention (attn_pool_depth
  /// 1) or a CrossAttender of that depth, with the stack's heads and dim_head. An encoder's forward then
  /// returns the pooled tokens (b, num_pooled_tokens, dim_pooled_tokens). Not with use_cls_token.
  TORCH_ARG(bool, attn_pool) = false;
  TORCH_ARG(int64_t, num_pooled_tokens) = 1;
  TORCH_ARG(int64_t, attn_pool_depth) = 1;
  TORCH_ARG(std::optional<int64_t>, dim_pooled_tokens) = std::nullopt;
  /// RWKV-8's deep embeddings (x-transformers' ff_deep_embed): a learned (num_tokens, depth, dim) table
  /// (`ff_deep_embed`, ones) whose row for each token scales the output of the stack's i-th feed-forward at
  /// that token. Not with memory or [CLS] tokens or prepend_embeds (the stack then runs other positions).
  TORCH_ARG(bool, ff_deep_embed) = false;
  /// AlphaFold2's recycling (Jumper et al. 2021): the stack runs recycle_steps times, each later run on the
  /// embeddings plus `recycled_proj` of the previous output (detached; only the last run records gradients).
  /// A forward without recycle_steps draws them uniformly from 1..train_max_recycle_steps in training and
  /// is refused in eval. No decoding cache.
  TORCH_ARG(bool, recycling) = false;
  TORCH_ARG(int64_t, train_max_recycle_steps) = 4;
  /// The looped LM (Zhu et al. 2025, arXiv 2510.25741): the stack (with pre_and_post_norm) runs on its own
  /// output max_looped_steps times (forward's looped_steps overrides), an `exit_gate` logit per step and
  /// position; looped inference exits early once the cumulative exit probability reaches a threshold.
  TORCH_ARG(bool, looped) = false;
  TORCH_ARG(int64_t, max_looped_steps) = 4;
  /// A head predicting the next position's input embedding (`to_next_embed_pred`: linear, SiLU, linear),
  /// for x-transformers' return_next_embed_pred. Not with mixture_of_softmax.
  TORCH_ARG(bool, add_continuous_pred_head) = false;
};

}  // namespace xtc::nn
