#include "src/nn/functional/stack_checks.h"

#include <algorithm>
#include <string>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional::detail {

void check_sequence(const char* name, const at::Tensor& t, const c10::SymInt& batch, int64_t dim,
                    const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "AttentionLayers: expected a dense (strided) ", name,
                    ", got layout ", t.layout());
  TORCH_CHECK_VALUE(t.dim() == 3 && t.sym_size(0) == batch && t.sym_size(2) == dim,
                    "AttentionLayers: expected ", name, " of shape (", batch, ", seq, ", dim, "), got ",
                    t.sym_sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "AttentionLayers: expected ", name, " of x's dtype ",
                    x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "AttentionLayers: expected ", name, " on x's device ",
                    x.device(), ", got ", t.device());
}

// A (b, length) key mask; `length` is the sequence's, or with a cache the cached and new keys together.
void check_mask(const char* name, const std::optional<at::Tensor>& mask, const at::Tensor& seq,
                const c10::SymInt* length) {
  if (!mask.has_value()) return;
  const c10::SymInt keys = length != nullptr ? *length : seq.sym_size(1);
  TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "AttentionLayers: expected ", name,
                    " of dtype bool (True = keep), got ", mask->scalar_type());
  TORCH_CHECK_VALUE(mask->dim() == 2 && mask->sym_size(0) == seq.sym_size(0) && mask->sym_size(1) == keys,
                    "AttentionLayers: expected ", name, " of shape (", seq.sym_size(0), ", ", keys, ")",
                    length != nullptr ? " (cached and new keys)" : "", ", got ", mask->sym_sizes());
  TORCH_CHECK_VALUE(mask->device() == seq.device(), "AttentionLayers: expected ", name, " on x's device ",
                    seq.device(), ", got ", mask->device());
}

void check_inputs(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                  const std::optional<at::Tensor>& context, const std::optional<at::Tensor>& context_mask,
                  const AttentionLayersOptions& o, const c10::SymInt* key_length) {
  TORCH_CHECK_VALUE(x.layout() == at::kStrided, "AttentionLayers: expected a dense (strided) x, got layout ",
                    x.layout());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.sym_size(2) == o.dim(),
                    "AttentionLayers: expected x of shape (batch, seq, ", o.dim(), "), got ", x.sym_sizes());
  TORCH_CHECK_VALUE(x.is_floating_point(), "AttentionLayers: expected x of a floating dtype, got ",
                    x.scalar_type());
  check_mask("mask", mask, x, key_length);
  TORCH_CHECK_VALUE(context.has_value() == o.cross_attend(),
                    o.cross_attend() ? "AttentionLayers: context must be passed in when cross_attend is set"
                                     : "AttentionLayers: context was passed in, but cross_attend is not set");
  TORCH_CHECK_VALUE(!context_mask.has_value() || context.has_value(),
                    "AttentionLayers: context_mask was passed in without context");
  if (context.has_value()) {
    check_sequence("context", *context, x.sym_size(0), o.cross_attn().dim_context().value_or(o.dim()), x);
    check_mask("context_mask", context_mask, *context);
  }
}

// x-transformers' attn_mask shapes (i, j), (h, i, j) and (b|1, h|1, i, j), as a 4-D bool mask.
std::optional<at::Tensor> normalized_attn_mask(const std::optional<at::Tensor>& attn_mask,
                                               const at::Tensor& x, int64_t heads) {
  if (!attn_mask.has_value()) return std::nullopt;
  const auto& a = *attn_mask;
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  TORCH_CHECK_VALUE(a.scalar_type() == at::kBool,
                    "AttentionLayers: expected attn_mask of dtype bool (True = may "
                    "attend), got ",
                    a.scalar_type());
  TORCH_CHECK_VALUE(a.device() == x.device(), "AttentionLayers: expected attn_mask on x's device ",
                    x.device(), ", got ", a.device());
  TORCH_CHECK_VALUE(a.dim() >= 2 && a.dim() <= 4, "AttentionLayers: expected attn_mask of shape (", n, ", ",
                    n, "), (heads, ", n, ", ", n, ") or (batch, heads, ", n, ", ", n, "), got ",
                    a.sym_sizes());
  const auto full = a.dim() == 2 ? a.unsqueeze(0).unsqueeze(0) : a.dim() == 3 ? a.unsqueeze(0) : a;
  TORCH_CHECK_VALUE(full.sym_size(2) == n && full.sym_size(3) == n &&
                        (full.sym_size(1) == 1 || full.sym_size(1) == heads) &&
                        (full.sym_size(0) == 1 || full.sym_size(0) == b),
                    "AttentionLayers: expected attn_mask of shape (", n, ", ", n, "), (", heads, ", ", n,
                    ", ", n, ") or (", b, " or 1, ", heads, " or 1, ", n, ", ", n, "), got ", a.sym_sizes());
  return full;
}

// x-transformers' attn_bias: (h, i, j) or (b|1, h, i, j), added to self-attention's logits; as one (b|1, h,
// n, n) tensor. x-transformers refuses it beside a position-bias module (ALiBi, T5, dynamic).
at::Tensor normalized_attn_bias(const at::Tensor& bias, const at::Tensor& x,
                                const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(
      !(o.alibi_pos_bias() || o.rel_pos_bias() || o.dynamic_pos_bias()),
      "AttentionLayers: attn_bias clashes with alibi_pos_bias, rel_pos_bias and dynamic_pos_bias");
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  const int64_t h = o.heads();
  TORCH_CHECK_VALUE(bias.scalar_type() == x.scalar_type() && bias.device() == x.device(),
                    "AttentionLayers: expected attn_bias of x's dtype ", x.scalar_type(), " on ", x.device(),
                    ", got ", bias.scalar_type(), " on ", bias.device());
  const auto full = bias.dim() == 3 ? bias.unsqueeze(0) : bias;
  TORCH_CHECK_VALUE(full.dim() == 4 && (full.sym_size(0) == 1 || full.sym_size(0) == b) &&
                        full.sym_size(1) == h && full.sym_size(2) == n && full.sym_size(3) == n,
                    "AttentionLayers: expected attn_bias of shape (", h, ", ", n, ", ", n, ") or (", b,
                    " or 1, ", h, ", ", n, ", ", n, "), got ", bias.sym_sizes());
  return full;
}

// Transformer-XL memories: one (b, M, dim) per self-attention layer at most, masks (b, M) bool.
void check_memories(const std::vector<at::Tensor>& mems,
                    const std::vector<std::optional<at::Tensor>>& mem_masks, const at::Tensor& x,
                    const AttentionLayersPlan& plan, bool dense_pattern) {
  const auto& o = plan.options();
  if (mems.empty()) {
    TORCH_CHECK_VALUE(mem_masks.empty(), "AttentionLayers: mem_masks were passed in without mems");
    return;
  }
  TORCH_CHECK_VALUE(!dense_pattern,
                    "AttentionLayers: mems are not supported with attn_mask or attn_bias (their "
                    "(query, key) tensors do not cover memory keys)");
  if (o.rel_pos_bias() || o.dynamic_pos_bias()) {
    // One (query, key) bias serves every layer, so every self-attention layer needs a memory of one length.
    const auto& types = plan.executed_attention_types();
    const auto self_layers = static_cast<size_t>(std::count(types.begin(), types.end(), 'a'));
    bool same = mems.size() == self_layers;
    for (const auto& mem : mems) same = same && mem.dim() == 3 && mem.sym_size(1) == mems.front().sym_size(1);
    TORCH_CHECK_VALUE(same,
                      "AttentionLayers: with rel_pos_bias or dynamic_pos_bias, expected one mem per "
                      "self-attention layer (",
                      self_layers, "), all of one length, got ", mems.size());
  }
  TORCH_CHECK_VALUE(mem_masks.size() <= mems.size(),
                    "AttentionLayers: expected at most one mem_mask per mem, got ", mem_masks.size(), " for ",
                    mems.size());
  for (size_t i = 0; i < mems.size(); ++i) {
    const auto& mem = mems[i];
    TORCH_CHECK_VALUE(mem.dim() == 3 && mem.sym_size(0) == x.sym_size(0) && mem.size(2) == o.dim() &&
                          mem.scalar_type() == x.scalar_type() && mem.device() == x.device(),
                      "AttentionLayers: expected mems[", i, "] of shape (", x.sym_size(0), ", mem_len, ",
                      o.dim(), ") like x (", x.scalar_type(), " on ", x.device(), "), got ", mem.sym_sizes(),
                      " ", mem.scalar_type(), " on ", mem.device());
    TORCH_CHECK_VALUE(!o.uses_rotary() || mem.sym_size(1) == mems.front().sym_size(1),
                      "AttentionLayers: with rotary_pos_emb every mem must have the first one's length (",
                      mems.front().sym_size(1), "), got ", mem.sym_size(1), " for mems[", i, "]");
    if (i < mem_masks.size() && mem_masks[i].has_value()) {
      const auto& m = *mem_masks[i];
      TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.sym_size(0) == mem.sym_size(0) &&
                            m.sym_size(1) == mem.sym_size(1) && m.device() == x.device(),
                        "AttentionLayers: expected mem_masks[", i, "] of shape (", mem.sym_size(0), ", ",
                        mem.sym_size(1), ") and dtype bool, got ", m.sym_sizes(), " ", m.scalar_type());
    }
  }
}

// A per-call tensor read at every token (a conditioning input, a kv residual): (b, width) where a
// per-sequence one is allowed, else (b, 1 | n, width) with n the tokens of x; like x in dtype and device.
// Returns (b, 1 | n', width), n' the tokens this call runs (with a cache, the last of them).
at::Tensor per_token_input(const char* name, const at::Tensor& t, const at::Tensor& x_in,
                           const c10::SymInt& n_in, int64_t width, bool per_sequence) {
  const bool shape_ok =
      (per_sequence && t.dim() == 2) || (t.dim() == 3 && (t.sym_size(1) == 1 || t.sym_size(1) == n_in));
  TORCH_CHECK_VALUE(
      shape_ok && t.sym_size(0) == x_in.sym_size(0) && t.sym_size(-1) == width &&
          t.scalar_type() == x_in.scalar_type() && t.device() == x_in.device(),
      "AttentionLayers: expected ", name, " of shape ",
      per_sequence
          ? "(" + std::to_string(xtc::detail::static_size(x_in, 0)) + ", " + std::to_string(width) + ") or "
          : std::string(),
      "(", x_in.sym_size(0), ", 1 or ", n_in, ", ", width, ") like x (", x_in.scalar_type(), " on ",
      x_in.device(), "), got ", t.sym_sizes(), " ", t.scalar_type(), " on ", t.device());
  const auto rows = t.dim() == 2 ? t.unsqueeze(1) : t;
  if (rows.sym_size(1) == 1 || rows.sym_size(1) == x_in.sym_size(1)) return rows;
  return rows.narrow_symint(1, rows.sym_size(1) - x_in.sym_size(1), x_in.sym_size(1));
}

// x-transformers' kv residuals of one kind: (b, n, d) for the first layer only, or (L, b, n, d) for the first
// L.
std::vector<at::Tensor> kv_residual_list(const char* name, const std::optional<at::Tensor>& residuals) {
  if (!residuals.has_value()) return {};
  TORCH_CHECK_VALUE(residuals->dim() == 3 || residuals->dim() == 4, "AttentionLayers: expected ", name,
                    " of shape (b, seq, dim) or (layers, b, seq, dim), got ", residuals->sym_sizes());
  if (residuals->dim() == 3) return {*residuals};
  return residuals->unbind(0);
}

void check_cross_kv_residuals(const std::vector<at::Tensor>& residuals,
                              const std::optional<at::Tensor>& context, const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(residuals.empty() || context.has_value(),
                    "AttentionLayers: cross_attn_kv_residuals needs cross-attention layers and a context");
  const int64_t width = o.cross_attn().dim_context().value_or(o.dim());
  for (const auto& r : residuals) {
    TORCH_CHECK_VALUE(r.dim() == 3 && (r.sym_size(0) == 1 || r.sym_size(0) == context->sym_size(0)) &&
                          (r.sym_size(1) == 1 || r.sym_size(1) == context->sym_size(1)) &&
                          r.sym_size(2) == width,
                      "AttentionLayers: expected cross_attn_kv_residuals of shape (", context->sym_size(0),
                      ", ", context->sym_size(1), ", ", width,
                      ") (the context's), or (layers, ...) of them, got ", r.sym_sizes());
  }
}

}  // namespace xtc::nn::functional::detail
