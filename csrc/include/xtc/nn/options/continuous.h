// Options of ContinuousTransformerWrapper (x-transformers' continuous.py): a layer stack over continuous
// vectors.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace xtc::nn {

/// A layer stack with input/output projections, positions and memory tokens around it, as x-transformers'
/// ContinuousTransformerWrapper; the seed's use case with a projection in front.
struct ContinuousTransformerWrapperOptions {
  /// Checks values; throws c10::Error (ValueError in Python) naming the option.
  void validate() const;
  /// Every option as a JSON object of keyword arguments under x-transformers' names, read back by parse():
  /// what the continuous_transformer op receives. parse() takes any of them (the rest at their defaults) and
  /// throws naming unknown keys and bad values.
  std::string serialize() const;
  static ContinuousTransformerWrapperOptions parse(const std::string& json);
  /// The option keys parse() accepts.
  static std::vector<std::string> keys();

  /// Input width; unset = the stack's dim, no input projection.
  TORCH_ARG(std::optional<int64_t>, dim_in) = std::nullopt;
  /// Output width; unset = no output projection.
  TORCH_ARG(std::optional<int64_t>, dim_out) = std::nullopt;
  /// Longest sequence; with use_abs_pos_emb it sizes the learned absolute positions. Unset = no positions.
  TORCH_ARG(std::optional<int64_t>, max_seq_len) = std::nullopt;
  /// Learned tokens prepended to every sequence (Burtsev et al. 2020, Memory Transformer, arXiv 2006.11527).
  TORCH_ARG(int64_t, num_memory_tokens) = 0;
  /// LayerNorm (plain gain, no unit offset) after the embedding.
  TORCH_ARG(bool, post_emb_norm) = false;
  /// Dropout on the embedded sequence (training only).
  TORCH_ARG(double, emb_dropout) = 0.0;
  /// Absolute positions (learned, or scaled sinusoidal); off when the stack uses rotary positions.
  TORCH_ARG(bool, use_abs_pos_emb) = true;
  /// Scaled sinusoidal positions (Hua et al. 2022, arXiv 2202.10447) instead of learned ones.
  TORCH_ARG(bool, scaled_sinu_pos_emb) = false;
  /// Mean over the kept positions: one vector per sequence.
  TORCH_ARG(bool, average_pool_embed) = false;
  /// No projection where dim_in / dim_out equal the stack's dim.
  TORCH_ARG(bool, use_identity_if_same_dim) = false;
  /// x-transformers' probabilistic output: project_out gives a mean and a log-variance per feature
  /// (interleaved), and forward returns stack((mean, variance)), (2, b, n, dim_out).
  TORCH_ARG(bool, probabilistic) = false;
};

}  // namespace xtc::nn
