#include "src/nn/functional/stack_sharding.h"

#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

namespace xtc::nn::functional::detail {
namespace {

// The forward inputs that need the whole sequence (or a cache) in one place, among those this call passed.
std::vector<std::string> unshardable_inputs(const AttentionLayersInputs& in) {
  const std::vector<std::pair<const char*, bool>> inputs = {
      {"attn_mask", in.attn_mask.has_value()},
      {"attn_bias", in.attn_bias.has_value()},
      {"self_attn_kv_mask", in.self_attn_kv_mask.has_value()},
      {"seq_start_pos", in.seq_start_pos.has_value()},
      {"pos", in.pos.has_value()},
      {"mems", !in.mems.empty()},
      {"flash_pack_seq", in.flash_pack_seq.has_value()},
      {"self_attn_additional_kv", !in.self_attn_additional_kv.empty()},
      {"cache", !in.cache_kv.empty()},
  };
  std::vector<std::string> passed;
  for (const auto& [name, given] : inputs)
    if (given) passed.emplace_back(name);
  return passed;
}

// An option's reason to need the whole sequence in one place; nullptr when it shards.
const char* unshardable(const AttentionOptions& a) {
  if (a.hybrid_module().has_value()) return "hybrid_module runs a recurrent network along the sequence";
  if (a.data_dependent_alibi()) return "data_dependent_alibi accumulates gates along the whole sequence";
  if (a.use_rel_proj_pos_bias()) return "use_rel_proj_pos_bias projects the whole sequence's tokens";
  if (a.inverted_attention()) return "inverted_attention normalises each key over every query";
  if (a.selective()) return "selective attention sums its gate down the queries";
  if (a.orthog_projected_values() || a.orthog_projected_values_per_head())
    return "orthog_projected_values projects over the whole sequence's values";
  if (a.linear()) return "attn_linear keeps its own running sums (not sharded)";
  if (a.use_cope()) return "CoPE counts gated keys along each row (not sharded)";
  return nullptr;
}

const char* unshardable(const AttentionLayersOptions& o, bool training) {
  if (o.any_shift_tokens()) return "shift_tokens reads the neighbouring tokens, across the shards' edges";
  if (o.residual_attn()) return "residual_attn hands each layer's whole score matrix on";
  if (training && o.layer_dropout() > 0)
    return "layer_dropout draws per rank, so the ranks would drop different layers";
  if (training && o.cross_attn_tokens_dropout() > 0)
    return "cross_attn_tokens_dropout draws per rank, so the ranks would drop different context tokens";
  return nullptr;
}

void refuse_unshardable_options(const AttentionLayersPlan& plan, bool training) {
  const char* reason = unshardable(plan.options(), training);
  for (const int64_t i : plan.execution_order())
    // Cross-attention layers too: their queries are the shard's.
    if (reason == nullptr && plan.layer_types()[static_cast<size_t>(i)] != 'f')
      reason = unshardable(plan.layer_attention(static_cast<size_t>(i)));
  TORCH_CHECK_VALUE(reason == nullptr,
                    "context_parallel: this stack cannot run sharded: ", reason == nullptr ? "" : reason);
}

}  // namespace

std::optional<StackShards> stack_shards(const at::Tensor& x, const AttentionLayersInputs& inputs,
                                        const AttentionLayersPlan& plan, bool training) {
  const ContextParallel* setting = current_context_parallel();
  if (setting == nullptr) return std::nullopt;
  // The options are every rank's alike: refused before any collective, on every rank.
  refuse_unshardable_options(plan, training);
  auto [shards, any_mask] = exchange_shards(*setting, x, inputs.mask, unshardable_inputs(inputs));
  const auto positions = shards.positions(x.options().dtype(at::kLong));
  return StackShards{std::make_shared<const SequenceShards>(std::move(shards)), any_mask, positions};
}

}  // namespace xtc::nn::functional::detail
