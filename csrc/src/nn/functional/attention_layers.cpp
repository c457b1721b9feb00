// The layer stack's forward, as x-transformers' AttentionLayers.forward: prepare the call once (inputs
// checked, masks, positions, conditioning, packing), run each executed layer over a small state, finish
// (final norm, unpacking). The pieces live beside it: the plan (attention_layers_plan.cpp), positions
// (positional.cpp), input checks (stack_checks.cpp), the decoding cache (decoding_cache.cpp), additional
// key/values (additional_kv.cpp), packing (stack_packing.cpp), the parameters by name (stack_parameters.cpp).
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/ceil.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tanh.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/layer_integrators.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/packing.h>
#include <xtc/nn/functional/positional.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/nn/functional/shift_tokens.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "src/nn/functional/additional_kv.h"
#include "src/nn/functional/decoding_cache.h"
#include "src/nn/functional/stack_checks.h"
#include "src/nn/functional/stack_packing.h"
#include "src/nn/functional/stack_parameters.h"
#include "src/nn/functional/stack_sharding.h"
#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {
namespace {

using detail::StackPacking;
using detail::StackParameters;

// A layer's config under a layer schedule: the stack's (positions, biases, causality) with its own options.
AttentionConfig with_options(AttentionConfig config, const AttentionOptions& a,
                             const AttentionLayersOptions& o) {
  config.heads = o.heads();
  config.kv_heads = o.resolved_kv_heads(a);
  config.dim_head = a.dim_head();
  config.value_dim_head = a.value_dim_head().value_or(a.dim_head());
  config.options = a;
  return config;
}

AttentionConfig attention_config(const AttentionOptions& a, const AttentionLayersOptions& o, bool causal,
                                 const at::Tensor& slopes, const at::Tensor& rotary_angles) {
  AttentionConfig config{};
  config.causal = causal;
  config.alibi_slopes = slopes;
  config.rotary_angles = rotary_angles;
  return with_options(std::move(config), a, o);
}

// Everything one call reads, worked out once before the first layer; the layers only read it.
struct StackCall {
  StackCall(const at::Tensor& x, const AttentionLayersInputs& inputs, at::TensorList params,
            const AttentionLayersPlan& plan, bool training, AttentionLayersHiddens* record)
      : in(inputs), plan(plan), o(plan.options()), training(training), record(record), x_arg(x) {}

  const AttentionLayersInputs& in;
  const AttentionLayersPlan& plan;
  const AttentionLayersOptions& o;
  const bool training;
  AttentionLayersHiddens* const record;
  const at::Tensor x_arg;                // the input as given
  std::optional<StackParameters> p;      // set once x is known (checked against it)
  bool cached = false;                   // incremental decoding
  c10::SymInt n_in;                      // the input's length
  at::Tensor x_in;                       // the tokens this call runs: with a cache, the last cache_age
  c10::SymInt keys;                      // self-attention's keys (cached ones included)
  c10::SymInt mem_len;                   // Transformer-XL memory keys in front of them
  std::optional<at::Tensor> mask;        // the padding mask of the tokens (none with a cache)
  std::optional<at::Tensor> layer_mask;  // what attention layers zero their outputs by (none when packed)
  std::optional<at::Tensor> self_key_mask, cross_key_mask, attn_mask;
  std::optional<StackPacking> packing;
  std::optional<detail::StackShards> sharding;  // context parallelism: x is this rank's shard
  std::optional<PackedAttention> packed_self, packed_cross;
  at::Tensor condition;   // the adaptive layers' condition, per token in the running layout
  at::Tensor reinjected;  // reinject_input / in_attn_cond, added to every branch's input
  AttentionConfig self_config{}, cross_config{};
  std::vector<at::Tensor> self_kv_residuals, cross_kv_residuals;
  std::vector<std::pair<at::Tensor, at::Tensor>> additional_kv;
  std::vector<at::Tensor> ff_output_scales;  // inputs.ff_output_scales in the running layout

  bool unpad() const { return packing.has_value() && packing->unpad; }
  bool caller_packed() const { return packing.has_value() && !packing->unpad; }
  // A per-token input in the layout x runs in: packed with the tokens under unpad.
  at::Tensor per_token_packed(const at::Tensor& rows) const {
    return unpad() ? pack(rows.expand({-1, x_in.size(1), -1}), *packing->tokens) : rows;
  }
  // The stack's norm with the tensors under `prefix` (a norm slot or final_norm).
  at::Tensor norm(const at::Tensor& t, const std::string& prefix) const {
    const NormKind kind = o.norm_kind();
    const auto weights = detail::norm_weights(*p, prefix, kind);
    if (kind == NormKind::AdaptiveLayerNorm || kind == NormKind::AdaptiveRMSNorm)
      return adaptive_norm(kind, t, at::linear(condition, weights.gain));
    return functional::norm(kind, t, weights, o.norm_add_unit_offset(), o.dynamic_tanh_init_alpha());
  }
};

// What changes from layer to layer.
struct StackState {
  at::Tensor x;                                      // the residual stream
  at::Tensor self_scores, cross_scores;              // RealFormer: the previous layer's pre-softmax scores
  at::Tensor first_self_values, first_cross_values;  // ResFormer: the first attention layers' values
  size_t next_memory = 0, next_cache = 0;            // the next Transformer-XL memory and cache pair
  std::vector<at::Tensor> hybrid_states;  // the hybrid GRU states of the attention layers run so far
  size_t next_self_layer = 0, next_cross_layer = 0;  // executed attention layers that ran so far
  size_t next_feed_forward = 0;                      // executed feed-forwards that ran so far
  std::vector<at::Tensor> skip_hiddens;              // U-Net skips: the input of every executed step
  std::vector<at::Tensor> layer_inputs;  // layer integrators: every executed layer's input (after its read)
  std::optional<at::Tensor> context, context_mask;  // cross-attention's, after cross_attn_tokens_dropout
};

// What a layer reads from the residual before its branch: the branch's input, (b, n, d) or (views, b, n, d);
// and the single stream's residual, or the streams' read.
struct ResidualRead {
  at::Tensor branch_input, residual;
  StreamRead streams;
};

// ------------------------------------------------------------------------------------------------ prepare

// The tokens and masks of the call: with a cache only the last cache_age tokens run (x-transformers' slicing)
// and `mask` covers the cached and new keys. As x-transformers: self-attention's keys follow
// self_attn_kv_mask when given (else `mask`), and left padding (seq_start_pos) hides keys before each
// sequence's start.
void prepare_tokens_and_masks(StackCall& c) {
  const auto& in = c.in;
  c.cached = !in.cache_kv.empty();
  const int64_t past = c.cached ? detail::check_cache(in.cache_kv, c.x_arg, in, c.plan, c.training) : 0;
  // Lengths as SymInts: torch.export and torch.compile keep them symbolic (dynamic shapes).
  c.n_in = c.x_arg.dim() == 3 ? c.x_arg.sym_size(1) : c10::SymInt(0);
  const bool slice = c.cached && in.cache_age > 0 && c.n_in > in.cache_age;
  c.x_in = slice ? c.x_arg.narrow_symint(1, c.n_in - in.cache_age, in.cache_age) : c.x_arg;
  // Self-attention's keys; with a cache `mask` covers the cached ones too (check_cache has checked x there).
  if (c.cached) c.keys = c.x_in.sym_size(1) + past;
  const c10::SymInt* key_length = c.cached ? &c.keys : nullptr;
  detail::check_memories(in.mems, in.mem_masks, c.x_in, c.plan,
                         in.attn_mask.has_value() || in.attn_bias.has_value());
  detail::check_inputs(c.x_in, in.mask, in.context, in.context_mask, c.o, key_length);
  detail::check_mask("self_attn_kv_mask", in.self_attn_kv_mask, c.x_in, key_length);
  if (!c.cached) c.keys = c.x_in.sym_size(1);
  c.mem_len = in.mems.empty() ? c10::SymInt(0) : in.mems.front().sym_size(1);
  c.self_key_mask = in.self_attn_kv_mask;
  if (c.cached && !c.self_key_mask.has_value()) c.self_key_mask = in.mask;
  c.mask = c.cached ? std::nullopt : in.mask;
  if (in.seq_start_pos.has_value()) {
    const auto& start = *in.seq_start_pos;
    TORCH_CHECK_VALUE(
        start.dim() == 1 && start.sym_size(0) == c.x_in.sym_size(0) && !start.is_floating_point(),
        "AttentionLayers: expected seq_start_pos of shape (", c.x_in.sym_size(0),
        ") and an integer dtype, got ", start.sym_sizes(), " ", start.scalar_type());
    const auto left_pad = at::arange(c.keys, start.options()).unsqueeze(0) >= start.unsqueeze(1);
    c.self_key_mask = c.self_key_mask.has_value() ? c.self_key_mask->logical_and(left_pad) : left_pad;
  }
  c.attn_mask = detail::normalized_attn_mask(in.attn_mask, c.x_in, c.o.heads());
}

// Packed sequences: the caller's (flash_pack_seq_kwargs) or the mask's (unpad). Packed layers take their
// masks from the layouts.
void prepare_packing(StackCall& c) {
  c.packing = detail::stack_packing(c.x_in, c.in, c.plan);
  if (c.packing.has_value() && c.packing->self_packed) c.packed_self = c.packing->self_attention();
  if (c.packing.has_value() && c.packing->cross_packed && c.packing->context.has_value())
    c.packed_cross = c.packing->cross_attention();
  c.layer_mask = c.packing.has_value() ? std::nullopt : c.mask;
  c.cross_key_mask = c.packed_cross.has_value() ? std::nullopt : c.in.context_mask;
}

// Rotary angles (and xPos scales) of the self-attention keys' positions, in the running layout.
std::pair<at::Tensor, at::Tensor> rotary_of_call(const StackCall& c) {
  if (!c.o.uses_rotary()) return {};
  // With memories the keys reach back to position -M (the first memory's length, as x-transformers). With a
  // cache the positions run to n_in + cache_length (x-transformers' seq_pos_offset), the keys being the last.
  // Custom positions replace the range.
  const c10::SymInt positions = (c.cached ? c.n_in + c.in.cache_length : c.x_in.sym_size(1)) + c.mem_len;
  TORCH_CHECK_VALUE(positions >= c.keys + c.mem_len, "AttentionLayers: cache_length ", c.in.cache_length,
                    " is shorter than the ", c.keys - c.x_in.sym_size(1), " cached keys");
  const auto& inv_freq = c.p->get("rotary_pos_emb.inv_freq");
  const auto longs = inv_freq.options().dtype(at::kLong);
  const at::Tensor t = c.in.pos.has_value()     ? *c.in.pos
                       : c.sharding.has_value() ? c.sharding->positions
                                                : at::arange(-c.mem_len, positions - c.mem_len, longs);
  at::Tensor angles = rotary_angles(inv_freq, t, c.o.rotary_interpolation_factor());
  at::Tensor scales;
  if (c.o.rotary_xpos() && c.sharding.has_value()) {
    // xPos centres its scales on the whole sequence: the shard's rows of the whole sequence's scales.
    const auto whole = at::arange(c.sharding->shards->total, longs);
    scales =
        xpos_scales(c.p->get("rotary_pos_emb.scale"), whole, c.o.rotary_xpos_scale_base()).index_select(0, t);
  } else if (c.o.rotary_xpos()) {
    scales = xpos_scales(c.p->get("rotary_pos_emb.scale"), t, c.o.rotary_xpos_scale_base());
  }
  if (c.unpad()) {
    // Each kept token keeps its position's angles (and xPos scales): (total, r).
    const auto packed_rows = [&](const at::Tensor& rows) {
      const int64_t n = c.packing->tokens->frame_length();
      const auto last = rows.narrow(-2, rows.size(-2) - n, n);  // custom positions may reach further back
      const auto per_token =
          last.dim() == 2 ? last.unsqueeze(0).expand({c.packing->tokens->batch(), -1, -1}) : last;
      return pack(per_token, *c.packing->tokens).squeeze(0);
    };
    angles = packed_rows(angles);
    if (scales.defined()) scales = packed_rows(scales);
  }
  return {angles, scales};
}

// PoPE's angles of the self-attention keys' positions (x-transformers' seq_pos_offset with a cache), or of
// the custom positions, and the keys' per-head shift clamped to [-2 pi, 0].
void prepare_polar(StackCall& c) {
  if (!c.o.polar_pos_emb()) return;
  TORCH_CHECK_VALUE(c.mem_len == 0,
                    "AttentionLayers: polar_pos_emb cannot be combined with mems (x-transformers' ",
                    "polar positions do not cover a memory)");
  const auto& inv_freq = c.p->get("polar_pos_emb.inv_freq");
  const c10::SymInt positions = c.cached ? c.n_in + c.in.cache_length : c.x_in.sym_size(1);
  const auto longs = inv_freq.options().dtype(at::kLong);
  const at::Tensor t = c.in.pos.has_value()     ? *c.in.pos
                       : c.sharding.has_value() ? c.sharding->positions
                                                : at::arange(positions, longs);
  c.self_config.polar_angles = polar_angles(inv_freq, t);
  c.self_config.polar_bias = c.p->get("polar_pos_emb.learned_bias").clamp(-2 * M_PI, 0);
}

// Self-attention's biases: ALiBi (in the kernel, or dense over custom positions), T5 / dynamic, attn_bias.
// Built in the padded frame, where attention runs when the varlen kernel cannot; they span the memory keys
// too.
void prepare_self_biases(StackCall& c, const at::Tensor& slopes) {
  const auto& o = c.o;
  auto& config = c.self_config;
  const c10::SymInt frame_length =
      c.caller_packed() ? c10::SymInt(c.packing->tokens->frame_length()) : c.x_in.sym_size(1);
  c10::SymInt frame_keys = c.caller_packed() ? frame_length : c.keys + c.mem_len;
  // Sharded: this rank's queries at their global positions over the whole sequence's keys.
  at::Tensor query_positions;
  if (c.sharding.has_value()) {
    frame_keys = c.sharding->shards->total;
    query_positions = c.sharding->positions;
  }
  if (c.in.pos.has_value() && slopes.defined()) {
    // x-transformers' Alibi.forward_custom_pos: -|pos_j - pos_i| * slope, a dense bias (heads past
    // alibi_num_heads have slope 0, its zero padding).
    auto t = c.in.pos->dim() == 1 ? c.in.pos->unsqueeze(0) : *c.in.pos;  // (1|b, n) or (b, alibi heads, n)
    TORCH_CHECK_VALUE(t.dim() == 2 || !c.caller_packed(),
                      "AttentionLayers: pos per ALiBi head cannot be combined with packed sequences");
    if (c.caller_packed()) t = unpack(t, *c.packing->tokens);  // the packed positions in their frames
    if (t.dim() == 2) t = t.unsqueeze(1);
    auto distance = (t.unsqueeze(-2) - t.unsqueeze(-1)).abs().to(c.x_in.scalar_type());  // (., h', n, n)
    // The heads past alibi_num_heads take no bias (their slopes are 0; x-transformers pads them with zeros).
    const int64_t rows = distance.size(1);
    if (rows > 1 && rows < o.heads())
      distance = at::constant_pad_nd(distance, {0, 0, 0, 0, 0, o.heads() - rows});
    config.position_bias = -distance * slopes.to(c.x_in.scalar_type()).view({1, o.heads(), 1, 1});
    config.alibi_slopes = at::Tensor();
  }
  if (o.rel_pos_bias())
    config.position_bias = t5_position_bias(c.p->get("rel_pos.relative_attention_bias.weight"), frame_length,
                                            frame_keys, o, query_positions);
  if (o.dynamic_pos_bias())
    config.position_bias = dynamic_position_bias(detail::dynamic_position_bias_weights(*c.p, o), frame_length,
                                                 frame_keys, c.x_in, o, query_positions);
  if (c.in.attn_bias.has_value())
    config.position_bias = detail::normalized_attn_bias(*c.in.attn_bias, c.x_in, o);
}

// x-transformers' context_pos: cross-attention's queries rotate by the tokens' positions (all heads), its
// keys by the context's.
void prepare_context_rotary(StackCall& c, const at::Tensor& angles, const at::Tensor& scales) {
  const auto& t = *c.in.context_pos;
  const auto& context = c.in.context;
  TORCH_CHECK_VALUE(angles.defined() && context.has_value(),
                    "AttentionLayers: context_pos sets cross-attention's rotary positions, so it needs "
                    "rotary_pos_emb (or rotary_xpos) and cross-attention with a context");
  const c10::SymInt context_length = context->sym_size(1);
  TORCH_CHECK_VALUE(!t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool &&
                        (t.dim() == 1 || (t.dim() == 2 && t.sym_size(0) == context->sym_size(0))) &&
                        t.sym_size(-1) == context_length && t.device() == c.x_in.device(),
                    "AttentionLayers: expected context_pos of shape (", context_length, ") or (",
                    context->sym_size(0), ", ", context_length, ") and an integer dtype on x's device, got ",
                    t.sym_sizes(), " ", t.scalar_type(), " on ", t.device());
  auto& config = c.cross_config;
  config.rotary_angles = angles;
  config.rotary_scale = scales;
  config.key_rotary_angles =
      rotary_angles(c.p->get("rotary_pos_emb.inv_freq"), t, c.o.rotary_interpolation_factor());
  if (c.o.rotary_xpos())
    config.key_rotary_scale = xpos_scales(c.p->get("rotary_pos_emb.scale"), t, c.o.rotary_xpos_scale_base());
}

// The attention configs of the call's self- and cross-attention layers. Cross-attention gets neither ALiBi,
// learned position biases nor rotary (x-transformers passes them to self-attention only), unless context_pos.
void prepare_positions(StackCall& c) {
  const auto& o = c.o;
  const at::Tensor slopes =
      c.plan.alibi_slopes().empty() ? at::Tensor() : alibi_slopes_tensor(c.plan.alibi_slopes(), c.x_in);
  if (c.in.pos.has_value())
    check_positions(*c.in.pos, c.x_in, o, c.keys + c.mem_len, c.cached || c.mem_len > 0);
  const auto [angles, scales] = rotary_of_call(c);
  c.self_config = attention_config(o.attn(), o, c.in.causal.value_or(o.causal()), slopes, angles);
  c.self_config.rotary_scale = scales;
  c.self_config.rotary_heads = o.rotate_num_heads().value_or(-1);
  prepare_self_biases(c, slopes);
  prepare_polar(c);
  c.cross_config = attention_config(o.cross_attn(), o, /*causal=*/false, at::Tensor(), at::Tensor());
  if (c.in.context_pos.has_value()) prepare_context_rotary(c, angles, scales);
  c.self_config.residual_scores = o.residual_attn();
  c.cross_config.residual_scores = o.cross_residual_attn();
  if (c.sharding.has_value()) {
    // Self-attention attends to every rank's keys: the whole sequence's key mask.
    c.self_key_mask = c.sharding->shards->gather_mask(c.mask, c.sharding->any_mask, c.x_in);
    c.self_config.shards = c.sharding->shards;
  }
}

// The adaptive layers' condition, (b, 1 | n, width) after adaptive_condition_mlp, and what every branch reads
// besides the stream: reinject_input's W x_in or in_attn_cond, gated per token by the learned gate.
void prepare_conditioning(StackCall& c, const at::Tensor& x) {
  const auto& o = c.o;
  const auto& in = c.in;
  TORCH_CHECK_VALUE(in.condition.has_value() == o.needs_condition(),
                    o.needs_condition()
                        ? "AttentionLayers: condition must be passed in with use_adaptive_layernorm, "
                          "use_adaptive_rmsnorm or use_adaptive_layerscale"
                        : "AttentionLayers: condition was passed in, but no adaptive norm or "
                          "layerscale reads it");
  if (in.condition.has_value()) {
    c.condition =
        detail::per_token_input("condition", *in.condition, c.x_in, c.n_in, o.resolved_dim_condition(),
                                /*per_sequence=*/true);
    if (o.adaptive_condition_mlp())
      c.condition = at::silu(at::linear(c.condition, c.p->get("adaptive_mlp.0.weight")));
    c.condition = c.per_token_packed(c.condition);
  }
  TORCH_CHECK_VALUE(!(o.reinject_input() && in.in_attn_cond.has_value()),
                    "AttentionLayers: in_attn_cond cannot be combined with reinject_input");
  if (o.reinject_input()) {
    c.reinjected = at::linear(x, c.p->get("reinject_input_proj.weight"));
  } else if (in.in_attn_cond.has_value()) {
    c.reinjected = c.per_token_packed(detail::per_token_input("in_attn_cond", *in.in_attn_cond, c.x_in,
                                                              c.n_in, o.dim(), /*per_sequence=*/true));
  }
  if (c.reinjected.defined() && o.learned_reinject_input_gate())
    c.reinjected = c.reinjected * at::sigmoid(at::linear(x, c.p->get("learned_reinject_input_gate.weight")));
}

// kv residuals (self-attention's over x's tokens, packed with them; cross-attention's over the context's),
// additional key/values, and the feed-forwards' output scales (per token, as the kv residuals).
void prepare_extra_key_values(StackCall& c) {
  const auto& in = c.in;
  c.self_kv_residuals = detail::kv_residual_list("self_attn_kv_residuals", in.self_attn_kv_residuals);
  for (auto& r : c.self_kv_residuals)
    r = c.per_token_packed(detail::per_token_input("self_attn_kv_residuals", r, c.x_in, c.n_in, c.o.dim(),
                                                   /*per_sequence=*/false));
  c.cross_kv_residuals = detail::kv_residual_list("cross_attn_kv_residuals", in.cross_attn_kv_residuals);
  detail::check_cross_kv_residuals(c.cross_kv_residuals, in.context, c.o);
  for (const auto& scale : in.ff_output_scales)
    c.ff_output_scales.push_back(c.per_token_packed(detail::per_token_input(
        "ff_output_scales", scale, c.x_in, c.n_in, c.o.dim(), /*per_sequence=*/false)));
  c.additional_kv = detail::additional_kv_per_layer(in, c.plan, c.x_in);
  TORCH_CHECK_VALUE(c.additional_kv.empty() || !c.packing.has_value(),
                    "AttentionLayers: self_attn_additional_kv cannot be used with packed sequences or unpad");
}

// ------------------------------------------------------------------------------------------------ layers

// The cache entry of the next attention layer, as our (b, N, hk, d) layout, with its hybrid GRU state (the
// cache holds those after every (k, v) pair).
KVCache next_cache_entry(const StackCall& c, StackState& s) {
  KVCache kv;
  if (c.cached) {
    kv.k = c.in.cache_kv[2 * s.next_cache].transpose(1, 2);
    kv.v = c.in.cache_kv[2 * s.next_cache + 1].transpose(1, 2);
    if (c.plan.executed_hybrid_states()[s.next_cache])
      kv.hybrid_hidden = c.in.cache_kv[2 * c.plan.executed_attention_types().size() + s.hybrid_states.size()];
  }
  ++s.next_cache;
  return kv;
}

// An attention layer's keys, values and maps go to the record, when recording; its hybrid GRU state is kept
// for the record's end.
void record_attention(const StackCall& c, StackState& s, const KVCache& kv, const AttentionMaps& maps) {
  if (kv.hybrid_hidden.defined()) s.hybrid_states.push_back(kv.hybrid_hidden);
  if (c.record == nullptr) return;
  c.record->cached_kv.push_back(kv.k.transpose(1, 2));
  c.record->cached_kv.push_back(kv.v.transpose(1, 2));
  for (const auto* t : {&maps.qk_similarities, &maps.pre_softmax_attn, &maps.post_softmax_attn})
    c.record->attn_maps.push_back(t->defined() ? *t : at::empty({0}, c.x_in.options()));
}

// The next self-attention layer's memory (pre-normed with its norm) and per-call key/values.
std::pair<XLMemory, ExtraKeyValues> self_attention_extras(const StackCall& c, StackState& s,
                                                          const std::string& layer) {
  XLMemory memory;
  if (s.next_memory < c.in.mems.size()) {
    memory.mem = c.in.mems[s.next_memory];
    if (c.o.norms_branch_input()) memory.mem = c.norm(memory.mem, layer + "0.0.");
    if (s.next_memory < c.in.mem_masks.size()) memory.mask = c.in.mem_masks[s.next_memory];
    ++s.next_memory;
  }
  ExtraKeyValues extra;
  if (s.next_self_layer < c.self_kv_residuals.size())
    extra.input_residual = c.self_kv_residuals[s.next_self_layer];
  if (s.next_self_layer < c.additional_kv.size()) {
    std::tie(extra.k, extra.v) = c.additional_kv[s.next_self_layer];
    if (extra.k.defined()) extra.mask = c.in.additional_kv_mask;
  }
  ++s.next_self_layer;
  return {memory, extra};
}

// x-transformers' dropout_seq: in training each cross-attention layer keeps a random share of the context's
// tokens (of those the previous one kept), drawn as it draws them: the top of standard normal logits, masked
// tokens last, and a mask keeping each sequence's own share of its tokens.
void drop_context_tokens(const StackCall& c, StackState& s) {
  const double dropout = c.o.cross_attn_tokens_dropout();
  if (!c.training || dropout == 0 || c.cached) return;
  TORCH_CHECK_VALUE(
      !c.packed_cross.has_value() && c.cross_kv_residuals.empty() && !c.in.context_pos.has_value(),
      "AttentionLayers: cross_attn_tokens_dropout drops context tokens, which packed sequences "
      "(unpad), cross_attn_kv_residuals and context_pos cover whole");
  const auto& context = *s.context;
  const int64_t b = xtc::detail::static_size(context, 0), m = xtc::detail::static_size(context, 1);
  auto logits = at::randn({b, m}, context.options().dtype(at::kFloat));
  if (s.context_mask.has_value())
    logits = logits.masked_fill(s.context_mask->logical_not(), std::numeric_limits<float>::lowest());
  const double keep = 1.0 - dropout;
  const auto kept = std::get<1>(logits.topk(std::max<int64_t>(1, static_cast<int64_t>(keep * m)), 1));
  s.context = context.gather(1, kept.unsqueeze(-1).expand({-1, -1, context.size(-1)}));
  if (!s.context_mask.has_value()) return;
  const auto counts = at::ceil(s.context_mask->sum(-1) * keep).to(at::kInt);
  const auto within = at::arange(kept.size(1), kept.options()).unsqueeze(0) < counts.unsqueeze(1);
  s.context_mask = s.context_mask->gather(1, kept).logical_and(within);
}

// Self-attention's input: one view, or three (q, k and v each read their own; qkv_receive_diff_residuals).
std::pair<at::Tensor, ExtraKeyValues> self_attention_views(const at::Tensor& h, ExtraKeyValues extra) {
  if (h.dim() == 3) return {h, extra};
  extra.key_input = h[1];
  extra.value_input = h[2];
  return {h[0], extra};
}

// Self- ('a') or cross- ('c') attention of layer i on its normed input h.
at::Tensor attention_block(const StackCall& c, StackState& s, size_t i, char type, const at::Tensor& normed) {
  const bool self = type == 'a';
  const auto& a = c.plan.layer_attention(i);
  const std::string layer = "layers." + std::to_string(i) + ".";
  XLMemory memory;
  ExtraKeyValues extra;
  at::Tensor h = normed;
  if (self) {
    std::tie(memory, extra) = self_attention_extras(c, s, layer);
    std::tie(h, extra) = self_attention_views(normed, extra);
  } else {
    drop_context_tokens(c, s);
    if (s.next_cross_layer < c.cross_kv_residuals.size())
      extra.input_residual = c.cross_kv_residuals[s.next_cross_layer];
    ++s.next_cross_layer;
  }
  const bool scheduled = self ? !c.o.attn_per_layer().empty() : !c.o.cross_attn_per_layer().empty();
  const auto& stack_config = self ? c.self_config : c.cross_config;
  const AttentionConfig config = scheduled ? with_options(stack_config, a, c.o) : stack_config;
  at::Tensor& first_values = self ? s.first_self_values : s.first_cross_values;
  at::Tensor values;
  KVCache kv = next_cache_entry(c, s);
  AttentionMaps maps;
  // Maps only where x-transformers' counterpart would return them.
  const bool wants_maps = c.record != nullptr && !a.flash() && !a.linear();
  const auto& packed = self ? c.packed_self : c.packed_cross;
  const auto out =
      attention(h, self ? std::nullopt : s.context, c.layer_mask, self ? c.self_key_mask : s.context_mask,
                detail::attention_weights(*c.p, c.plan.block_prefix(i), a), config, c.training,
                self ? c.attn_mask : std::nullopt, self ? &s.self_scores : &s.cross_scores,
                ValueResidual{c.o.add_value_residual() ? first_values : at::Tensor(), &values}, memory,
                c.record != nullptr || c.cached ? &kv : nullptr, wants_maps ? &maps : nullptr,
                packed.has_value() ? &*packed : nullptr, extra);
  record_attention(c, s, kv, maps);
  if (!first_values.defined()) first_values = values;
  return out;
}

// The block's output scaled as x-transformers' LayerScale / AdaptiveLayerScale wrap it.
at::Tensor scaled_output(const StackCall& c, at::Tensor out, const std::string& layer) {
  // The layer scales sit inside branch_output_scale's Scale wrapper.
  const std::string scale = layer + (c.o.scales_branch_output() ? "1.fn." : "1.");
  if (c.o.use_layerscale()) {
    const auto gamma = c.p->get(scale + "gamma");
    out = out * (c.o.norm_add_unit_offset() ? gamma + 1 : gamma);
  }
  if (c.o.use_adaptive_layerscale())
    out = out * at::sigmoid(at::linear(c.condition, c.p->get(scale + "to_gamma.weight"),
                                       c.p->get(scale + "to_gamma.bias")));
  if (c.o.scales_branch_output()) out = out * *c.o.branch_output_scale();
  return out;
}

// U-Net skips: the step's input joins the mirror step's through a (2 dim -> dim) projection (x-transformers'
// skip hiddens, kept before layer dropout).
void join_unet_skip(const StackCall& c, StackState& s, int64_t i) {
  s.skip_hiddens.push_back(s.x);
  const int64_t source = c.plan.unet_skip_sources()[i];
  if (source < 0) return;
  TORCH_CHECK_VALUE(source < static_cast<int64_t>(s.skip_hiddens.size()),
                    "AttentionLayers: unet_skips needs the execution order to reach step ", source,
                    " before layer ", i);
  s.x = at::linear(at::cat({s.skip_hiddens[source], s.x}, -1),
                   c.p->get("skip_combines." + std::to_string(i) + ".combine.weight"));
}

// The layer's read of the residual stream (x-transformers' residual_fn.prepare): the streams' mixes under
// hyper-connections or the gated multi residual, else the stream itself.
ResidualRead read_residual(const StackCall& c, const StackState& s, size_t i) {
  if (!c.o.gated_multi_residual() && !c.o.hyper_connections()) return {s.x, s.x, {}};
  const std::string prefix = "layers." + std::to_string(i) + ".2.";
  const int64_t streams = c.o.num_residual_streams(), views = c.o.stream_read_views(i);
  if (c.o.gated_multi_residual()) {
    auto read =
        gated_multi_residual_read(s.x, detail::gated_multi_residual_weights(*c.p, prefix), streams, views);
    return {read.branch_input, {}, read};
  }
  auto read = hyper_connection_read(s.x, detail::hyper_connection_weights(*c.p, prefix), streams, views,
                                    c.o.hyper_conn_sinkhorn_iters());
  return {read.branch_input, {}, read};
}

// The branch output joins the residual (x-transformers' residual_fn).
at::Tensor write_residual(const StackCall& c, const ResidualRead& read, const at::Tensor& out, size_t i) {
  if (read.streams.beta.defined()) return stream_write(out, read.streams);
  const std::string prefix = "layers." + std::to_string(i) + ".2.";
  return residual(c.o.residual_kind(), out, read.residual, detail::residual_weights(*c.p, prefix),
                  c.o.scale_residual_constant(), c.mask);
}

// x-transformers' layer integrators: the layer's input from every executed layer's input so far, its own
// last (DynamicLIMe, AttentionResidual).
at::Tensor integrate_layer_inputs(const StackCall& c, StackState& s, size_t i, const at::Tensor& input) {
  if (!c.o.integrates_layers()) return input;
  s.layer_inputs.push_back(input);
  const std::string prefix = "layer_integrators." + std::to_string(i) + ".";
  const int64_t views = c.o.layer_input_views(i);
  if (c.o.integrate_layers())
    return dynamic_lime(input, s.layer_inputs, detail::dynamic_lime_weights(*c.p, prefix), views,
                        c.o.layer_integrate_use_softmax());
  return attention_residual(s.layer_inputs, detail::attention_residual_weights(*c.p, prefix), views,
                            c.o.aggregated_residual_lora_activation());
}

// The layer's branch on its normed input: the feed-forward or the attention.
at::Tensor run_branch(const StackCall& c, StackState& s, size_t i, char type, const at::Tensor& h) {
  if (type != 'f') return attention_block(c, s, i, type, h);
  const auto& f = c.plan.layer_feed_forward(i);
  auto out = feed_forward(h, detail::feed_forward_weights(*c.p, c.plan.block_prefix(i), f), f, c.training);
  if (const size_t k = s.next_feed_forward++; k < c.ff_output_scales.size())
    out = out * c.ff_output_scales[k];
  return c.o.macaron() ? out * 0.5 : out;
}

// One executed layer: residual read, layer integration, norm, token shift, branch, layerscale, sandwich norm,
// residual write, post norm.
void run_layer(const StackCall& c, StackState& s, int64_t i) {
  const auto& o = c.o;
  if (o.unet_skips()) join_unet_skip(c, s, i);
  if (c.training && o.layer_dropout() > 0 && at::rand({}, at::kDouble).item<double>() < o.layer_dropout())
    return;
  const auto index = static_cast<size_t>(i);
  const char type = c.plan.layer_types()[index];
  if (c.record != nullptr && type == 'a') c.record->hiddens.push_back(s.x);
  const std::string layer = "layers." + std::to_string(i) + ".";
  const ResidualRead read = read_residual(c, s, index);
  if (c.record != nullptr) c.record->layer_hiddens.push_back(read.branch_input);
  at::Tensor h = integrate_layer_inputs(c, s, index, read.branch_input);
  if (c.reinjected.defined()) h = h + c.reinjected;
  if (o.norms_branch_input()) h = c.norm(h, layer + "0.0.");
  if (const int64_t shift = o.layer_shift_tokens(index); shift > 0)
    h = shift_tokens(h, shift, o.causal(), type == 'f' ? std::optional<at::Tensor>() : c.mask);
  at::Tensor out = scaled_output(c, run_branch(c, s, index, type, h), layer);
  if (o.sandwich_norm()) out = c.norm(out, layer + "0.1.");
  s.x = write_residual(c, read, out, index);
  if (o.applies_post_norm()) s.x = c.norm(s.x, layer + "0.2.");
}

// ------------------------------------------------------------------------------------------------ finish

at::Tensor finish(const StackCall& c, const StackState& s, at::Tensor x) {
  if (c.record != nullptr) {
    c.record->layer_hiddens.push_back(x);
    c.record->cached_kv.insert(c.record->cached_kv.end(), s.hybrid_states.begin(), s.hybrid_states.end());
  }
  if (c.o.softclamp_output()) x = at::tanh(x / c.o.softclamp_output_value()) * c.o.softclamp_output_value();
  if (c.o.multi_stream()) x = merge_streams(x, c.o.num_residual_streams());
  if (c.o.has_final_norm()) x = c.norm(x, "final_norm.");
  if (c.unpad()) {
    // Back to the padded batch: zeros where the mask drops a token.
    x = unpack(x, *c.packing->tokens);
    if (c.record != nullptr) detail::unpack_record(*c.record, c.plan, *c.packing->tokens);
  }
  return x;
}

}  // namespace

at::Tensor attention_layers(const at::Tensor& x, const AttentionLayersInputs& inputs, at::TensorList params,
                            const AttentionLayersPlan& plan, bool training, AttentionLayersHiddens* record) {
  StackCall call(x, inputs, params, plan, training, record);
  // First, so that every rank checks the shards alike before anything can fail on one rank alone.
  call.sharding = detail::stack_shards(x, inputs, plan, training);
  prepare_tokens_and_masks(call);
  call.p.emplace(plan, params, call.x_in);
  prepare_packing(call);
  prepare_positions(call);
  StackState state;
  state.x = call.unpad() ? pack(call.x_in, *call.packing->tokens) : call.x_in;
  prepare_conditioning(call, state.x);
  prepare_extra_key_values(call);
  if (plan.options().multi_stream()) state.x = expand_streams(state.x, call.p->get("stream_emb"));
  state.context = call.in.context;
  state.context_mask = call.cross_key_mask;
  for (const int64_t i : plan.execution_order()) run_layer(call, state, i);
  return finish(call, state, state.x);
}

}  // namespace xtc::nn::functional
