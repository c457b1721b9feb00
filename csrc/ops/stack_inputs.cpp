#include "ops/stack_inputs.h"

#include <c10/util/Exception.h>

namespace xtc::ops::detail {
namespace {

// flash_pack_seq_kwargs as the schema carries them: [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q,
// max_seqlen_k], or two empty lists.
std::optional<nn::functional::FlashPackSeq> flash_pack_seq_inputs(at::TensorList cu_seqlens,
                                                                  at::IntArrayRef max_seqlen,
                                                                  const char* name) {
  if (cu_seqlens.empty() && max_seqlen.empty()) return std::nullopt;
  TORCH_CHECK_VALUE(cu_seqlens.size() == 2 && max_seqlen.size() == 2, "AttentionLayers: expected ", name,
                    " as [cu_seqlens_q, cu_seqlens_k] and [max_seqlen_q, max_seqlen_k], got ",
                    cu_seqlens.size(), " tensors and ", max_seqlen.size(), " lengths");
  return nn::functional::FlashPackSeq{cu_seqlens[0], cu_seqlens[1], max_seqlen[0], max_seqlen[1]};
}

}  // namespace

nn::functional::AttentionLayersInputs stack_inputs(XTC_STACK_INPUT_PARAMETERS EndOfStackInputs) {
  nn::functional::AttentionLayersInputs inputs;
  inputs.mask = mask;
  inputs.context = context;
  inputs.context_mask = context_mask;
  inputs.attn_mask = attn_mask;
  inputs.self_attn_kv_mask = self_attn_kv_mask;
  inputs.seq_start_pos = seq_start_pos;
  inputs.attn_bias = attn_bias;
  inputs.pos = pos;
  inputs.mems = mems.vec();
  // Tracing takes no lists of optional tensors, so the schema has Tensor[] (one mask per leading mem, or
  // none).
  inputs.mem_masks.assign(mem_masks.begin(), mem_masks.end());
  inputs.flash_pack_seq = flash_pack_seq_inputs(flash_pack_seq, flash_pack_seq_max, "flash_pack_seq");
  inputs.flash_pack_seq_context =
      flash_pack_seq_inputs(flash_pack_seq_context, flash_pack_seq_context_max, "flash_pack_seq_context");
  inputs.causal = causal;
  inputs.condition = condition;
  inputs.in_attn_cond = in_attn_cond;
  inputs.context_pos = context_pos;
  inputs.self_attn_additional_kv = self_attn_additional_kv.vec();
  inputs.additional_kv_mask = additional_kv_mask;
  inputs.route_additional_kv_to_top = route_additional_kv_to_top;
  inputs.self_attn_kv_residuals = self_attn_kv_residuals;
  inputs.cross_attn_kv_residuals = cross_attn_kv_residuals;
  return inputs;
}

}  // namespace xtc::ops::detail
