#include "src/nn/functional/stack_packing.h"

#include <ATen/ops/ones.h>

#include <algorithm>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional::detail {

StackPacking caller_packing(const at::Tensor& x, const AttentionLayersInputs& in,
                            const AttentionLayersPlan& plan) {
  const auto& o = plan.options();
  const auto& types = plan.executed_attention_types();
  const bool has_self = types.find('a') != std::string::npos,
             has_cross = types.find('c') != std::string::npos;
  StackPacking packing;
  packing.self_packed = has_self && o.attn().flash_pack_seq();
  packing.cross_packed = has_cross && o.cross_attn().flash_pack_seq();
  TORCH_CHECK_VALUE(in.flash_pack_seq.has_value() == packing.self_packed,
                    packing.self_packed
                        ? "AttentionLayers: flash_pack_seq_kwargs must be provided with attn_flash_pack_seq"
                        : "AttentionLayers: flash_pack_seq_kwargs needs self-attention layers with "
                          "attn_flash_pack_seq=True (and attn_flash=True)");
  TORCH_CHECK_VALUE(in.flash_pack_seq_context.has_value() == packing.cross_packed,
                    packing.cross_packed
                        ? "AttentionLayers: flash_pack_seq_context_kwargs must be provided with "
                          "cross_attn_flash_pack_seq (attn_flash_pack_seq routes there too)"
                        : "AttentionLayers: flash_pack_seq_context_kwargs needs cross-attention layers with "
                          "cross_attn_flash_pack_seq=True (or attn_flash_pack_seq=True)");
  TORCH_CHECK_VALUE(
      x.dim() == 3 && x.sym_size(0) == 1,
      "AttentionLayers: expected x of shape (1, total, dim) with packed sequences (batch size must be 1 "
      "for sequence packing), got ",
      x.sym_sizes());
  TORCH_CHECK_VALUE(
      !in.mask.has_value() && !in.attn_mask.has_value() && !in.self_attn_kv_mask.has_value() &&
          !in.seq_start_pos.has_value(),
      "AttentionLayers: mask, attn_mask, self_attn_kv_mask and seq_start_pos cannot be used with packed "
      "sequences (flash_pack_seq_kwargs)");
  TORCH_CHECK_VALUE(!in.attn_bias.has_value() && in.mems.empty() && in.cache_kv.empty(),
                    "AttentionLayers: attn_bias, mems and a cache cannot be used with packed sequences "
                    "(flash_pack_seq_kwargs)");
  TORCH_CHECK_VALUE(!o.any_shift_tokens(),
                    "AttentionLayers: shift_tokens cannot be used with packed sequences "
                    "(flash_pack_seq_kwargs): it would shift tokens across the sequences' boundaries");
  TORCH_CHECK_VALUE(!(packing.cross_packed && in.context_mask.has_value()),
                    "AttentionLayers: context_mask cannot be used with flash_pack_seq_context_kwargs");
  const int64_t total = xtc::detail::static_size(x, 1);
  const auto same_offsets = [](const at::Tensor& a, const at::Tensor& b) {
    return a.numel() == b.numel() && a.to(at::kLong).cpu().equal(b.to(at::kLong).cpu());
  };
  if (packing.self_packed) {
    const auto& kw = *in.flash_pack_seq;
    TORCH_CHECK_VALUE(kw.cu_seqlens_q.defined() && kw.cu_seqlens_k.defined() &&
                          same_offsets(kw.cu_seqlens_q, kw.cu_seqlens_k),
                      "AttentionLayers: expected flash_pack_seq_kwargs' cu_seqlens_q and cu_seqlens_k equal "
                      "(self-attention's keys are its queries)");
    packing.tokens = pack_by_offsets(kw.cu_seqlens_q, std::min(kw.max_seqlen_q, kw.max_seqlen_k), total,
                                     "flash_pack_seq_kwargs", "cu_seqlens_q");
  }
  if (packing.cross_packed) {
    const auto& kw = *in.flash_pack_seq_context;
    TORCH_CHECK_VALUE(
        kw.cu_seqlens_q.defined() && kw.cu_seqlens_k.defined(),
        "AttentionLayers: expected flash_pack_seq_context_kwargs with cu_seqlens_q and cu_seqlens_k");
    if (packing.tokens.has_value()) {
      TORCH_CHECK_VALUE(same_offsets(kw.cu_seqlens_q, packing.tokens->cu_seqlens),
                        "AttentionLayers: expected flash_pack_seq_context_kwargs' cu_seqlens_q equal to "
                        "flash_pack_seq_kwargs' (both lay out x)");
    } else {
      packing.tokens = pack_by_offsets(kw.cu_seqlens_q, kw.max_seqlen_q, total,
                                       "flash_pack_seq_context_kwargs", "cu_seqlens_q");
    }
    TORCH_CHECK_VALUE(in.context.has_value() && in.context->dim() == 3 && in.context->sym_size(0) == 1,
                      "AttentionLayers: expected a context of shape (1, total_context, dim) with "
                      "flash_pack_seq_context_kwargs");
    packing.context =
        pack_by_offsets(kw.cu_seqlens_k, kw.max_seqlen_k, xtc::detail::static_size(*in.context, 1),
                        "flash_pack_seq_context_kwargs", "cu_seqlens_k");
    TORCH_CHECK_VALUE(
        packing.context->batch() == packing.tokens->batch(),
        "AttentionLayers: expected flash_pack_seq_context_kwargs' cu_seqlens_k to hold as many sequences "
        "(",
        packing.tokens->batch(), ") as its cu_seqlens_q, got ", packing.context->batch());
    packing.context_is_packed = true;
  }
  return packing;
}

StackPacking unpadding(const AttentionLayersInputs& in, const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(!o.any_shift_tokens(),
                    "AttentionLayers: unpad cannot be combined with shift_tokens (it shifts "
                    "along the padded sequence)");
  TORCH_CHECK_VALUE(in.mems.empty() && in.cache_kv.empty(),
                    "AttentionLayers: unpad cannot be combined with mems or a cache (incremental decoding)");
  TORCH_CHECK_VALUE(
      !in.self_attn_kv_mask.has_value() && !in.seq_start_pos.has_value(),
      "AttentionLayers: unpad packs the tokens `mask` keeps, so self_attn_kv_mask and seq_start_pos "
      "(another key mask) cannot be combined with it");
  StackPacking packing;
  packing.unpad = packing.self_packed = packing.cross_packed = true;
  packing.tokens = pack_by_mask(*in.mask);
  if (in.context.has_value()) {
    const auto& ctx = *in.context;
    packing.context = pack_by_mask(
        in.context_mask.has_value() ? *in.context_mask
                                    : at::ones({ctx.size(0), ctx.size(1)}, ctx.options().dtype(at::kBool)));
  }
  return packing;
}

std::optional<StackPacking> stack_packing(const at::Tensor& x, const AttentionLayersInputs& in,
                                          const AttentionLayersPlan& plan) {
  const auto& o = plan.options();
  if (in.flash_pack_seq.has_value() || in.flash_pack_seq_context.has_value() || o.attn().flash_pack_seq() ||
      (o.cross_attend() && o.cross_attn().flash_pack_seq()))
    return caller_packing(x, in, plan);
  if (o.unpad() && in.mask.has_value()) return unpadding(in, o);
  return std::nullopt;
}

void unpack_record(AttentionLayersHiddens& record, const AttentionLayersPlan& plan,
                   const PackedSequences& tokens) {
  for (auto* list : {&record.hiddens, &record.layer_hiddens})
    for (auto& t : *list) t = unpack(t, tokens);
  const auto& types = plan.executed_attention_types();
  for (size_t l = 0; l < types.size() && 2 * l + 1 < record.cached_kv.size(); ++l) {
    if (types[l] != 'a') continue;
    for (auto& t : {&record.cached_kv[2 * l], &record.cached_kv[2 * l + 1]})
      *t = unpack(t->transpose(1, 2), tokens).transpose(1, 2);
  }
}

}  // namespace xtc::nn::functional::detail
