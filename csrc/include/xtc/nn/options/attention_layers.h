// Options of a layer stack (x-transformers' AttentionLayers / Encoder / Decoder keyword arguments).
#pragma once

#include <xtc/nn/options/attention.h>
#include <xtc/nn/options/feedforward.h>

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xtc::nn {

/// A pre-norm stack of attention and feed-forward layers (Xiong et al. 2020, arXiv 2002.04745) with a final norm,
/// x-transformers' defaults throughout.
struct AttentionLayersOptions {
  AttentionLayersOptions(int64_t dim, int64_t depth, int64_t heads = 8);

  /// Key/value heads after `kv_heads` / `one_kv_head`; checks that they divide the query heads.
  int64_t resolved_kv_heads() const;
  /// Layer kinds in execution order: 'a' self-attention, 'f' feed-forward.
  std::vector<char> layer_types() const;
  /// Checks values and clashing flags; throws c10::Error naming the option.
  void validate() const;

  /// One line "key=value;..." with every option, read back by parse(); what the layer-stack op receives.
  std::string serialize() const;
  static AttentionLayersOptions parse(const std::string& text);
  /// The option keys parse() accepts ("dim", "attn.dim_head", ...), in declaration order.
  static std::vector<std::string> keys();


  /// Model width.
  TORCH_ARG(int64_t, dim);
  /// Number of (attention, feed-forward) blocks.
  TORCH_ARG(int64_t, depth);
  /// Attention heads.
  TORCH_ARG(int64_t, heads);
  /// Causal self-attention (a Decoder); right-aligned when keys outnumber queries.
  TORCH_ARG(bool, causal) = false;
  /// Drop whole layers at random during training (Fan et al. 2019, arXiv 1909.11556).
  TORCH_ARG(double, layer_dropout) = 0.0;
  /// Options of every self-attention block (`attn_*`).
  TORCH_ARG(AttentionOptions, attn) = {};
  /// Options of every feed-forward block (`ff_*`).
  TORCH_ARG(FeedForwardOptions, ff) = {};

};

}  // namespace xtc::nn
