// The non-tensor arguments of the attention ops (causal, scale, window, soft-cap), saved in an autograd
// context by the forward and read back by the backward: one place for the flash_attention and
// flash_attention_varlen Functions.
#pragma once

#include <torch/autograd.h>

#include <optional>

namespace xtc::ops::detail {

struct AttentionRule {
  bool causal;
  std::optional<double> scale;
  int64_t window_left, window_right;
  double softcap;
};

inline void save_attention_rule(torch::autograd::AutogradContext* ctx, const AttentionRule& rule) {
  ctx->saved_data["causal"] = rule.causal;
  ctx->saved_data["scale"] = rule.scale.has_value() ? c10::IValue(*rule.scale) : c10::IValue();
  ctx->saved_data["window_left"] = rule.window_left;
  ctx->saved_data["window_right"] = rule.window_right;
  ctx->saved_data["softcap"] = rule.softcap;
}

inline AttentionRule saved_attention_rule(torch::autograd::AutogradContext* ctx) {
  const auto& scale = ctx->saved_data["scale"];
  return {ctx->saved_data["causal"].toBool(),
          scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()),
          ctx->saved_data["window_left"].toInt(), ctx->saved_data["window_right"].toInt(),
          ctx->saved_data["softcap"].toDouble()};
}

/// An optional tensor saved as an undefined one, back as std::nullopt.
inline std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace xtc::ops::detail
