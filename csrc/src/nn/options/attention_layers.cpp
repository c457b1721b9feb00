#include <c10/util/Exception.h>
#include <xtc/nn/functional/activation.h>
#include <xtc/nn/functional/hybrid.h>
#include <xtc/nn/options/attention_layers.h>

#include <algorithm>
#include <functional>

#include "src/nn/options/keyword_arguments.h"
#include "src/nn/options/option_json.h"

namespace xtc::nn {

AttentionLayersOptions::AttentionLayersOptions(int64_t dim, int64_t depth, int64_t heads)
    : dim_(dim), depth_(depth), heads_(heads) {}

namespace {

std::vector<char> default_block(const AttentionLayersOptions& o) {
  std::vector<char> block;
  if (o.macaron()) block.push_back('f');
  if (!(o.cross_attend() && o.only_cross())) block.push_back('a');
  if (o.cross_attend()) block.push_back('c');
  if (!o.only_attn()) block.push_back('f');
  return block;
}

// The layout before only_attn takes the feed-forwards out of it.
std::vector<char> scheduled_layer_types(const AttentionLayersOptions& o);

}  // namespace

std::vector<char> AttentionLayersOptions::layer_types() const {
  auto types = scheduled_layer_types(*this);
  if (only_attn_) types.erase(std::remove(types.begin(), types.end(), 'f'), types.end());
  return types;
}

namespace {

std::vector<char> scheduled_layer_types(const AttentionLayersOptions& o) {
  const auto block = default_block(o);
  std::vector<char> types;
  if (o.custom_layers().has_value()) return {o.custom_layers()->begin(), o.custom_layers()->end()};
  const int64_t depth = o.depth();
  if (o.par_ratio().has_value()) {
    // PAR: attention-heavy head of blocks, then feed-forwards (x-transformers' construction, verbatim).
    const int64_t par_depth = depth * static_cast<int64_t>(block.size());
    std::vector<char> attn_block;
    for (char t : block)
      if (t != 'f') attn_block.push_back(t);
    const int64_t par_attn = par_depth / *o.par_ratio();
    const int64_t depth_cut = par_depth * 2 / 3;
    const int64_t par_width = (depth_cut + depth_cut / par_attn) / par_attn;
    std::vector<char> par_block = attn_block;
    par_block.resize(par_width, 'f');
    for (int64_t i = 0; i < par_attn; ++i) types.insert(types.end(), par_block.begin(), par_block.end());
    types.resize(par_depth, 'f');
    return types;
  }
  if (o.sandwich_coef().has_value()) {
    types.assign(*o.sandwich_coef(), 'a');
    for (int64_t i = 0; i < depth - *o.sandwich_coef(); ++i)
      types.insert(types.end(), block.begin(), block.end());
    types.resize(types.size() + *o.sandwich_coef(), 'f');
    return types;
  }
  const int64_t blocks = o.weight_tie_layers() ? 1 : depth;
  for (int64_t i = 0; i < blocks; ++i) types.insert(types.end(), block.begin(), block.end());
  return types;
}

}  // namespace

int64_t AttentionLayersOptions::block_length() const {
  const bool custom = custom_layers_.has_value() || par_ratio_.has_value() || sandwich_coef_.has_value();
  return custom ? 1 : static_cast<int64_t>(default_block(*this).size());
}

std::vector<int64_t> AttentionLayersOptions::unet_skip_sources() const {
  const auto types = layer_types();
  std::vector<int64_t> sources(types.size(), -1);
  if (!unet_skips_) return sources;
  // x-transformers' construction, verbatim: blocks count as one layer for custom layouts, the depth is 1 when
  // tied.
  const int64_t block = block_length();
  const int64_t depth = weight_tie_layers_ ? 1 : depth_;
  const int64_t skips = depth / block;
  TORCH_CHECK_VALUE(skips > 0, "AttentionLayers: unet_skips needs a depth of at least 2 blocks, got ", depth);
  std::vector<int64_t> open;
  for (int64_t i = 0; i < skips; ++i) open.push_back(i * block);
  for (size_t i = 0; i < types.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    if (index % block != 0 || static_cast<double>(index / block) < static_cast<double>(depth) / 2) continue;
    TORCH_CHECK_VALUE(!open.empty(),
                      "AttentionLayers: unet_skips pairs more second-half blocks than first-half "
                      "ones for this layout (x-transformers fails here too)");
    sources[i] = open.back();
    open.pop_back();
  }
  return sources;
}

std::vector<int64_t> AttentionLayersOptions::execution_order() const {
  if (!layers_execute_order_.empty()) return layers_execute_order_;
  std::vector<int64_t> order;
  const int64_t layers = static_cast<int64_t>(layer_types().size());
  const int64_t repeats = weight_tie_layers_ ? depth_ : 1;
  for (int64_t r = 0; r < repeats; ++r)
    for (int64_t i = 0; i < layers; ++i) order.push_back(i);
  return order;
}

std::vector<int64_t> AttentionLayersOptions::repeat_blocks_order(
    const std::vector<RepeatBlocks>& groups) const {
  TORCH_CHECK_VALUE(!custom_layers_.has_value() && !par_ratio_.has_value() && !sandwich_coef_.has_value(),
                    "AttentionLayers: repeat_blocks is only supported for the default block layout (not with "
                    "custom_layers, par_ratio or sandwich_coef)");
  const int64_t block = static_cast<int64_t>(default_block(*this).size());
  const int64_t blocks = static_cast<int64_t>(layer_types().size()) / block;
  std::vector<std::pair<int64_t, int64_t>> group_at(blocks,
                                                    {-1, 0});  // per first block: (last block, repeats)
  for (const auto& g : groups) {
    TORCH_CHECK_VALUE(
        0 <= g.first && g.first <= g.last && g.last < blocks && g.repeats >= 0,
        "AttentionLayers: expected repeat_blocks groups (first, last) with 0 <= first <= last < ", blocks,
        " (the blocks) and repeats >= 0, got (", g.first, ", ", g.last, ") x ", g.repeats);
    group_at[g.first] = {g.last,
                         g.repeats};  // a later group of the same first block wins, as x-transformers' dict
  }
  std::vector<int64_t> order;
  for (int64_t b = 0; b < blocks;) {
    const auto [last, repeats] = group_at[b];
    const int64_t end = last < 0 ? b : last;
    for (int64_t r = 0; r < (last < 0 ? 1 : repeats); ++r)
      for (int64_t layer = b * block; layer < (end + 1) * block; ++layer) order.push_back(layer);
    b = end + 1;
  }
  return order;
}

namespace {

// The index of `layer` among the layers of its kind.
size_t ordinal_of_kind(const std::vector<char>& types, size_t layer) {
  return static_cast<size_t>(
      std::count(types.begin(), types.begin() + static_cast<int64_t>(layer), types.at(layer)));
}

}  // namespace

const AttentionOptions& AttentionLayersOptions::layer_attention(size_t layer) const {
  const auto types = layer_types();
  const auto& schedule = types.at(layer) == 'c' ? cross_attn_per_layer_ : attn_per_layer_;
  if (schedule.empty()) return types.at(layer) == 'c' ? cross_attn_ : attn_;
  return schedule.at(ordinal_of_kind(types, layer));
}

const FeedForwardOptions& AttentionLayersOptions::layer_feed_forward(size_t layer) const {
  if (ff_per_layer_.empty()) return ff_;
  return ff_per_layer_.at(ordinal_of_kind(layer_types(), layer));
}

int64_t AttentionLayersOptions::resolved_kv_heads(const AttentionOptions& attention) const {
  if (attention.one_kv_head()) return 1;
  return attention.kv_heads().value_or(heads_);
}

NormKind AttentionLayersOptions::norm_kind() const {
  if (use_adaptive_layernorm_) return NormKind::AdaptiveLayerNorm;
  if (use_adaptive_rmsnorm_) return NormKind::AdaptiveRMSNorm;
  if (use_rmsnorm_) return NormKind::RMSNorm;
  if (use_scalenorm_) return NormKind::ScaleNorm;
  if (use_simple_rmsnorm_) return NormKind::SimpleRMSNorm;
  if (use_dynamic_tanh_) return NormKind::DynamicTanh;
  if (use_derf_) return NormKind::Derf;
  return NormKind::LayerNorm;
}

int64_t AttentionLayersOptions::layer_input_views(size_t layer) const {
  if (!(qkv_receive_diff_residuals_ || integrate_layers_)) return 1;
  const auto types = layer_types();
  if (types.at(layer) != 'a') return 1;
  // integrate_layers' first self-attention layer has no earlier layers to mix its views from.
  const bool first_self_attention =
      std::find(types.begin(), types.end(), 'a') - types.begin() == static_cast<std::ptrdiff_t>(layer);
  return integrate_layers_ && first_self_attention ? 1 : 3;
}

ResidualKind AttentionLayersOptions::residual_kind() const {
  if (gate_residual_) return ResidualKind::GRUGating;
  if (orthog_residual_) return ResidualKind::Orthogonal;
  if (mv_split_residual_) return ResidualKind::MVSplit;
  return ResidualKind::Add;
}

namespace {

// How the scores become weights, as x-transformers' Attend asserts it: one of softmax (with or without
// top-k), sigmoid and hard; none of the three variants in its flash path; none for linear attention, which
// has no scores.
void validate_attention_weighting(const char* prefix, const AttentionOptions& a,
                                  const AttentionLayersOptions& o) {
  const int variants = int(a.sigmoid()) + int(a.hard()) + int(a.sparse_topk().has_value()) +
                       int(a.l2_distance()) + int(a.gumbel_softmax());
  TORCH_CHECK_VALUE(variants <= 1, "AttentionLayers: ", prefix, "sigmoid, ", prefix, "hard, ", prefix,
                    "sparse_topk, ", prefix, "l2_distance and ", prefix,
                    "gumbel_softmax exclude each other; set at most one");
  const bool any =
      a.sigmoid() || a.hard() || a.cog_signed() || a.gumbel_softmax() || a.selective() || a.use_cope();
  TORCH_CHECK_VALUE(!(any && a.flash()), "AttentionLayers: ", prefix, "sigmoid, ", prefix, "hard, ", prefix,
                    "cog_signed, ", prefix, "gumbel_softmax, ", prefix, "selective and ", prefix,
                    "use_cope are not available with ", prefix, "flash (as x-transformers)");
  TORCH_CHECK_VALUE(!((any || a.l2_distance()) && a.linear()), "AttentionLayers: ", prefix,
                    "linear has no score matrix, so it clashes with ", prefix, "sigmoid, ", prefix, "hard, ",
                    prefix, "cog_signed, ", prefix, "l2_distance, ", prefix, "gumbel_softmax, ", prefix,
                    "selective and ", prefix, "use_cope");
  TORCH_CHECK_VALUE(!a.gumbel_softmax() || a.gumbel_softmax_temp() > 0, "AttentionLayers: expected ", prefix,
                    "gumbel_softmax_temp > 0, got ", a.gumbel_softmax_temp());
  TORCH_CHECK_VALUE(
      !a.use_cope() || (o.causal() && std::string(prefix) == "attn_"), "AttentionLayers: ", prefix,
      "use_cope was designed for causal self-attention (a Decoder), and x-transformers refuses it "
      "elsewhere, cross-attention included (attn_* options reach cross-attention too; set "
      "cross_attn_use_cope=False)");
  TORCH_CHECK_VALUE(a.cope_max_pos() > 0, "AttentionLayers: expected ", prefix, "cope_max_pos > 0, got ",
                    a.cope_max_pos());
  // Cross-attention is never causal: x-transformers asserts there too (attn_* reaches it as well).
  TORCH_CHECK_VALUE(
      !a.selective() || (o.causal() && std::string(prefix) == "attn_"), "AttentionLayers: ", prefix,
      "selective is designed for causal self-attention (a Decoder), and x-transformers refuses it ",
      "elsewhere, cross-attention included (attn_* options reach cross-attention too; set ",
      "cross_attn_selective=False)");
  // x-transformers takes inverted attention for cross-attention alone (it drops attn_inverted_attention).
  TORCH_CHECK_VALUE(
      !a.inverted_attention() || (std::string(prefix) == "cross_attn_" && !a.flash() && !a.linear() &&
                                  !a.gumbel_softmax() && !a.head_learned_sink()),
      "AttentionLayers: ", prefix,
      "inverted_attention is cross-attention's (cross_attn_inverted_attention), and clashes with ", prefix,
      "flash, ", prefix, "linear, ", prefix, "gumbel_softmax and ", prefix, "head_learned_sink");
}

// The value and output gates (x-transformers' LoRALinear gates, HyGA), LASER and the output's extras.
void validate_attention_gates(const char* prefix, const AttentionOptions& a,
                              const AttentionLayersOptions& o) {
  const auto needs = [&](bool given, bool what, const char* option, const char* needed) {
    TORCH_CHECK_VALUE(!given || what, "AttentionLayers: ", prefix, option, " needs ", prefix, needed);
  };
  needs(a.gate_values_rank().has_value() || a.gate_values_headwise(), a.gate_values(),
        "gate_values_rank / gate_values_headwise", "gate_values");
  needs(a.output_gate_rank().has_value() || a.output_gate_headwise(), a.output_gate(),
        "output_gate_rank / output_gate_headwise", "output_gate");
  needs(a.swiglu_values(), a.gate_values() || a.output_gate(), "swiglu_values",
        "gate_values or output_gate (it is their activation)");
  TORCH_CHECK_VALUE(!(a.gate_values_headwise() && a.gate_values_rank().has_value()),
                    "AttentionLayers: ", prefix, "gate_values_rank cannot be set with ", prefix,
                    "gate_values_headwise (the headwise gate projects to the heads directly)");
  TORCH_CHECK_VALUE(!(a.output_gate_headwise() && a.output_gate_rank().has_value()),
                    "AttentionLayers: ", prefix, "output_gate_rank cannot be set with ", prefix,
                    "output_gate_headwise (the headwise gate projects to the heads directly)");
  const int64_t width = o.heads() * a.value_dim_head().value_or(a.dim_head());
  const auto check_rank = [&](const char* option, const std::optional<int64_t>& rank, int64_t in,
                              int64_t out) {
    TORCH_CHECK_VALUE(!rank.has_value() || (*rank > 0 && (*rank < in || *rank < out)),
                      "AttentionLayers: expected ", prefix, option,
                      " > 0 and below the gate's input or output width (", std::max(in, out), "), got ",
                      rank.value_or(0));
  };
  check_rank("gate_values_rank", a.gate_values_rank(), o.dim(), width);
  check_rank("output_gate_rank", a.output_gate_rank(), width, width);
  TORCH_CHECK_VALUE(!a.laser() || a.laser_softclamp_value() > 0, "AttentionLayers: expected ", prefix,
                    "laser_softclamp_value > 0, got ", a.laser_softclamp_value());
  TORCH_CHECK_VALUE(a.sublayer_dropout() >= 0 && a.sublayer_dropout() < 1, "AttentionLayers: expected ",
                    prefix, "sublayer_dropout in [0, 1), got ", a.sublayer_dropout());
  // The projection spans a whole padded sequence, which packed sequences do not have.
  TORCH_CHECK_VALUE(!((a.orthog_projected_values() || a.orthog_projected_values_per_head()) &&
                      (o.unpad() || a.flash_pack_seq())),
                    "AttentionLayers: ", prefix,
                    "orthog_projected_values spans each padded sequence, so it clashes with ", "unpad and ",
                    prefix, "flash_pack_seq");
}

// The learned biases of the block's own (data-dependent ALiBi, the relative projection bias).
void validate_attention_biases(const char* prefix, const AttentionOptions& a,
                               const AttentionLayersOptions& o) {
  const bool self = std::string(prefix) == "attn_";
  TORCH_CHECK_VALUE(
      !a.data_dependent_alibi() || self, "AttentionLayers: ", prefix,
      "data_dependent_alibi gates the keys at the queries' own positions, which a context does not "
      "have (attn_* options reach cross-attention too; set cross_attn_data_dependent_alibi=False)");
  // (attn_* reach cross-attention too, where the per-row flag goes with data_dependent_alibi turned off.)
  TORCH_CHECK_VALUE(!a.data_dependent_alibi_per_row() ||
                        (self ? a.data_dependent_alibi() && o.causal() : !a.data_dependent_alibi()),
                    "AttentionLayers: ", prefix, "data_dependent_alibi_per_row needs ", prefix,
                    "data_dependent_alibi in a causal stack (x-transformers has no bidirectional form)");
  TORCH_CHECK_VALUE(
      !a.data_dependent_alibi() || !(o.alibi_pos_bias() || o.rel_pos_bias() || o.dynamic_pos_bias()),
      "AttentionLayers: ", prefix,
      "data_dependent_alibi takes the place of alibi_pos_bias, rel_pos_bias and dynamic_pos_bias "
      "(x-transformers drops them in its layers); set at most one");
  TORCH_CHECK_VALUE(a.data_dependent_alibi_per_row_dim_head() > 0 && a.rel_proj_num_distance_basis() > 0 &&
                        a.rel_proj_max_dist() > 0,
                    "AttentionLayers: expected ", prefix, "data_dependent_alibi_per_row_dim_head, ", prefix,
                    "rel_proj_num_distance_basis and ", prefix, "rel_proj_max_dist > 0");
  TORCH_CHECK_VALUE(!(a.linear() && (a.data_dependent_alibi() || a.use_rel_proj_pos_bias())),
                    "AttentionLayers: ", prefix, "linear has no score matrix, so it clashes with ", prefix,
                    "data_dependent_alibi and ", prefix, "use_rel_proj_pos_bias");
  TORCH_CHECK_VALUE(!a.use_rel_proj_pos_bias() || a.num_mem_kv() == 0, "AttentionLayers: ", prefix,
                    "use_rel_proj_pos_bias clashes with ", prefix,
                    "num_mem_kv (x-transformers pads its bias for the memory keys twice)");
  TORCH_CHECK_VALUE(
      !((a.data_dependent_alibi() || a.use_rel_proj_pos_bias()) && (o.unpad() || a.flash_pack_seq())),
      "AttentionLayers: ", prefix, "data_dependent_alibi and ", prefix,
      "use_rel_proj_pos_bias read each padded sequence, so they clash with unpad and ", prefix,
      "flash_pack_seq");
}

// Multi-latent attention: each latent with its width, the decoupled rope heads within the key heads.
void validate_latent_attention(const char* prefix, const AttentionOptions& a,
                               const AttentionLayersOptions& o) {
  const bool self = std::string(prefix) == "attn_";
  // (attn_* reach cross-attention too, where a width may go with the latent turned off.)
  const auto width = [&](bool used, const std::optional<int64_t>& dim, const char* flag, const char* option) {
    TORCH_CHECK_VALUE((used ? dim.has_value() : !self || !dim.has_value()) && dim.value_or(1) > 0,
                      "AttentionLayers: ", prefix, flag, " and ", prefix, option, " go together (", option,
                      " > 0 is the latent's width)");
  };
  width(a.use_latent_q(), a.dim_latent_q(), "use_latent_q", "dim_latent_q");
  width(a.use_latent_kv(), a.dim_latent_kv(), "use_latent_kv", "dim_latent_kv");
  const int64_t kv_heads = o.resolved_kv_heads(a);
  if (a.latent_rope_subheads().has_value()) {
    const int64_t sub = *a.latent_rope_subheads();
    TORCH_CHECK_VALUE(a.use_latent_kv() && sub > 0 && sub <= kv_heads, "AttentionLayers: ", prefix,
                      "latent_rope_subheads needs ", prefix, "use_latent_kv and 1 to ", kv_heads,
                      " (the kv heads) sub-heads, got ", sub);
    TORCH_CHECK_VALUE(
        sub == o.heads() || kv_heads == o.heads(), "AttentionLayers: ", prefix,
        "latent_rope_subheads rotates part of the heads, which needs as many kv heads as heads");
    TORCH_CHECK_VALUE(!self || !o.rotate_num_heads().has_value(),
                      "AttentionLayers: rotate_num_heads cannot be ", "set with ", prefix,
                      "latent_rope_subheads (they rotate the heads)");
  }
  if (!a.use_latent_q() && !a.use_latent_kv()) return;
  TORCH_CHECK_VALUE(!a.use_latent_kv() || a.dim_context().value_or(o.dim()) == o.dim(),
                    "AttentionLayers: ", prefix, "use_latent_kv projects inputs of width dim, so ", prefix,
                    "dim_context must be unset");
  // x-transformers feeds the query's latent to these, built for dim.
  // (The learned value mix sits on the self-attention layers after the first.)
  const auto types = o.layer_types();
  const bool learned_mix = self && o.add_value_residual() && o.learned_value_residual_mix() &&
                           std::count(types.begin(), types.end(), 'a') > 1;
  TORCH_CHECK_VALUE(
      !a.use_latent_q() || !(a.use_rel_proj_pos_bias() || (learned_mix && a.dim_latent_q() != o.dim())),
      "AttentionLayers: ", prefix, "use_latent_q clashes with ", prefix,
      "use_rel_proj_pos_bias, and with learned_value_residual_mix unless dim_latent_q == dim (they "
      "read the query's latent)");
  TORCH_CHECK_VALUE(!a.linear() && !o.unpad() && !a.flash_pack_seq(), "AttentionLayers: ", prefix,
                    "use_latent_q / use_latent_kv clash with ", prefix, "linear, unpad and ", prefix,
                    "flash_pack_seq");
}

// attn_linear has no score matrix for the options that act on one.
void validate_linear_attention(const char* prefix, const AttentionOptions& a,
                               const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(!a.linear() || !(a.softclamp_logits() || a.max_attend_past() || a.window_size() ||
                                     a.pre_talking_heads() || a.post_talking_heads() ||
                                     a.pre_scale_post_talking_heads() || a.sparse_topk() || a.dropout() > 0),
                    "AttentionLayers: ", prefix,
                    "linear has no score matrix, so it clashes with softclamp_logits, "
                    "max_attend_past, window_size, talking heads, sparse_topk and dropout");
  TORCH_CHECK_VALUE(
      !a.linear() || !(o.alibi_pos_bias() || o.rel_pos_bias() || o.dynamic_pos_bias() || o.residual_attn()),
      "AttentionLayers: ", prefix,
      "linear has no score matrix, so it clashes with alibi_pos_bias, "
      "rel_pos_bias, dynamic_pos_bias and residual_attn");
}

void validate_output_projection(const char* prefix, const AttentionOptions& a,
                                const AttentionLayersOptions& o) {
  // Without an output projection the merged heads are the block's output.
  TORCH_CHECK_VALUE(projects_out(a, o.heads()) || merged_width(a, o.heads()) == o.dim(),
                    "AttentionLayers: without an output projection (heads=1 or ", prefix,
                    "project_out=False) the merged heads are the output, so heads * ", prefix,
                    "dim_head (or ", prefix, "value_dim_head) must equal dim (", o.dim(), "), got ",
                    merged_width(a, o.heads()));
  TORCH_CHECK_VALUE(!(a.on_attn() && !projects_out(a, o.heads())), "AttentionLayers: ", prefix,
                    "on_attn is an output projection, so it clashes with ", prefix, "project_out=False");
}

// The hybrid module: its network reads x and gives one dim_head per head, the norms exist only with a fold.
void validate_hybrid(const char* prefix, const AttentionOptions& a, const AttentionLayersOptions& o) {
  if (!a.hybrid_module().has_value()) {
    TORCH_CHECK_VALUE(!a.hybrid_fold_axial_dim().has_value() && !a.hybrid_learned_mix(),
                      "AttentionLayers: ", prefix, "hybrid_fold_axial_dim and ", prefix,
                      "hybrid_learned_mix need ", prefix, "hybrid_module");
    return;
  }
  const auto spec =
      functional::parse_recurrent_spec(std::string(prefix) + "hybrid_module", *a.hybrid_module());
  TORCH_CHECK_VALUE(a.hybrid_fold_axial_dim().value_or(0) >= 1, "AttentionLayers: ", prefix,
                    "hybrid_module needs ", prefix,
                    "hybrid_fold_axial_dim >= 1 (x-transformers builds the "
                    "hybrid's norms only with it, and fails without); 1 folds nothing");
  TORCH_CHECK_VALUE(spec.input_size == o.dim() && spec.output_size() == o.heads() * a.dim_head() &&
                        a.value_dim_head().value_or(a.dim_head()) == a.dim_head(),
                    "AttentionLayers: ", prefix, "hybrid_module reads x (input_size ", o.dim(),
                    ") and gives heads x dim_head features (", o.heads() * a.dim_head(),
                    ", value_dim_head unset), got input_size ", spec.input_size, " and ", spec.output_size(),
                    " output features");
  TORCH_CHECK_VALUE(!o.unpad() && !a.flash_pack_seq(), "AttentionLayers: ", prefix,
                    "hybrid_module runs over whole padded sequences, so it clashes with unpad and ", prefix,
                    "flash_pack_seq");
}

void validate_attention(const char* prefix, const AttentionOptions& a, const AttentionLayersOptions& o) {
  validate_hybrid(prefix, a, o);
  validate_latent_attention(prefix, a, o);
  validate_attention_biases(prefix, a, o);
  validate_attention_weighting(prefix, a, o);
  TORCH_CHECK_VALUE(a.dim_head() > 0, "AttentionLayers: expected ", prefix, "dim_head > 0, got ",
                    a.dim_head());
  TORCH_CHECK_VALUE(!(a.one_kv_head() && a.kv_heads().has_value()), "AttentionLayers: ", prefix,
                    "one_kv_head and ", prefix, "kv_heads clash; set at most one of them");
  const int64_t kv_heads = o.resolved_kv_heads(a);
  TORCH_CHECK_VALUE(kv_heads > 0 && o.heads() % kv_heads == 0, "AttentionLayers: expected ", prefix,
                    "kv_heads to divide heads (", o.heads(), "), got ", kv_heads);
  TORCH_CHECK_VALUE(!a.value_dim_head().has_value() || *a.value_dim_head() > 0, "AttentionLayers: expected ",
                    prefix, "value_dim_head > 0");
  TORCH_CHECK_VALUE(a.dropout() >= 0 && a.dropout() < 1, "AttentionLayers: expected ", prefix,
                    "dropout in [0, 1), got ", a.dropout());
  TORCH_CHECK_VALUE(!a.softclamp_logits() || a.logit_softclamp_value() > 0, "AttentionLayers: expected ",
                    prefix, "logit_softclamp_value > 0, got ", a.logit_softclamp_value());
  TORCH_CHECK_VALUE(!a.max_attend_past().has_value() || *a.max_attend_past() >= 0,
                    "AttentionLayers: expected ", prefix, "max_attend_past >= 0");
  TORCH_CHECK_VALUE(!a.window_size().has_value() || *a.window_size() >= 0, "AttentionLayers: expected ",
                    prefix, "window_size >= 0");
  TORCH_CHECK_VALUE(!(a.window_size().has_value() && a.max_attend_past().has_value()),
                    "AttentionLayers: ", prefix, "window_size and ", prefix,
                    "max_attend_past clash; set at most one");
  TORCH_CHECK_VALUE(!(a.window_size().has_value() && (a.num_mem_kv() > 0 || a.add_zero_kv())),
                    "AttentionLayers: ", prefix, "window_size clashes with ", prefix, "num_mem_kv and ",
                    prefix, "add_zero_kv: memory keys sit outside every window");
  TORCH_CHECK_VALUE(!a.flash_pack_seq() || a.flash(), "AttentionLayers: ", prefix, "flash_pack_seq needs ",
                    prefix, "flash (x-transformers packs sequences only in its flash path)");
  TORCH_CHECK_VALUE(!(a.head_learned_sink() && a.flash()), "AttentionLayers: ", prefix,
                    "head_learned_sink is not ", "supported with ", prefix, "flash (as x-transformers)");
  TORCH_CHECK_VALUE(
      !(a.head_learned_sink() && (&a == &o.attn() ? o.residual_attn() : o.cross_residual_attn())),
      "AttentionLayers: ", prefix,
      "head_learned_sink clashes with residual attention (the sink "
      "column would reach the next layer's scores)");
  TORCH_CHECK_VALUE(!(a.qk_rmsnorm() && a.k_rmsnorm()), "AttentionLayers: ", prefix, "qk_rmsnorm and ",
                    prefix, "k_rmsnorm clash; set at most one");
  TORCH_CHECK_VALUE(
      !a.value_rmsnorm() ||
          (o.resolved_kv_heads(a) == o.heads() && a.value_dim_head().value_or(a.dim_head()) == a.dim_head()),
      "AttentionLayers: ", prefix, "value_rmsnorm needs as many kv heads as heads and value_dim_head == ",
      "dim_head (x-transformers' per-head gains are (heads, 1, dim_head))");
  TORCH_CHECK_VALUE(!a.qk_norm() || (a.qk_norm_groups() > 0 && a.dim_head() % a.qk_norm_groups() == 0 &&
                                     a.dim_head() / a.qk_norm_groups() > 2),
                    "AttentionLayers: expected ", prefix, "qk_norm_groups to divide ", prefix,
                    "dim_head into groups wider than 2, got ", a.qk_norm_groups());
  TORCH_CHECK_VALUE(a.num_mem_kv() >= 0, "AttentionLayers: expected ", prefix, "num_mem_kv >= 0");
  TORCH_CHECK_VALUE(a.num_mem_kv() == 0 || a.value_dim_head().value_or(a.dim_head()) == a.dim_head(),
                    "AttentionLayers: ", prefix, "num_mem_kv needs ", prefix, "value_dim_head == ", prefix,
                    "dim_head (x-transformers' memory values are dim_head wide)");
  TORCH_CHECK_VALUE(!a.sparse_topk().has_value() || *a.sparse_topk() > 0, "AttentionLayers: expected ",
                    prefix, "sparse_topk > 0");
  validate_linear_attention(prefix, a, o);
  validate_output_projection(prefix, a, o);
  validate_attention_gates(prefix, a, o);
}

int count_true(std::initializer_list<bool> flags) {
  int n = 0;
  for (bool f : flags) n += f;
  return n;
}

}  // namespace

namespace {

// PoPE: what its doubled q and k can meet.
void validate_polar(const AttentionLayersOptions& o) {
  if (!o.polar_pos_emb()) {
    TORCH_CHECK_VALUE(!o.polar_bias_uniform_init(),
                      "AttentionLayers: polar_bias_uniform_init needs polar_pos_emb");
    return;
  }
  TORCH_CHECK_VALUE(!o.uses_rotary(),
                    "AttentionLayers: rotary_pos_emb and polar_pos_emb exclude each other (as "
                    "x-transformers); set at most one");
  const auto& a = o.attn();
  const int64_t kv_heads = o.resolved_kv_heads(a);
  TORCH_CHECK_VALUE(
      kv_heads == o.heads() || kv_heads == 1,
      "AttentionLayers: polar_pos_emb biases each head's keys, so it needs one kv head per head (or "
      "one for all), got ",
      kv_heads, " kv heads for ", o.heads(), " heads");
  TORCH_CHECK_VALUE(
      a.num_mem_kv() == 0 && !a.linear() && !o.unpad() && !a.flash_pack_seq(),
      "AttentionLayers: polar_pos_emb clashes with attn_num_mem_kv (its keys stay dim_head wide, as "
      "x-transformers fails), attn_linear, unpad and attn_flash_pack_seq");
}

// How branches join the residual stream: one kind of update, and what each needs.
void validate_residual(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(
      count_true({o.gate_residual(), o.orthog_residual(), o.mv_split_residual()}) <= 1,
      "AttentionLayers: gate_residual, orthog_residual and mv_split_residual exclude each other; set "
      "at most one");
  TORCH_CHECK_VALUE(
      !(o.mv_split_residual() && (o.scale_residual() || o.scale_residual_constant() != 1.0)),
      "AttentionLayers: mv_split_residual has no residual scale, so it clashes with scale_residual "
      "and scale_residual_constant (x-transformers would ignore them)");
  TORCH_CHECK_VALUE(
      !(o.mv_split_residual_learned() || o.mv_split_residual_init_alpha() != 0.0 ||
        o.mv_split_residual_init_beta() != 0.03) ||
          o.mv_split_residual(),
      "AttentionLayers: residual_fn_kwargs learned / init_alpha / init_beta are mv_split_residual's; set "
      "mv_split_residual=True");
  // x-transformers' depth-scaled init reaches for the output projection's weight, which these leave out.
  const auto no_plain_projection = [&](const AttentionOptions& a) {
    return a.on_attn() || !projects_out(a, o.heads());
  };
  TORCH_CHECK_VALUE(
      !(o.depth_scale_residual() &&
        (no_plain_projection(o.attn()) || (o.cross_attend() && no_plain_projection(o.cross_attn())))),
      "AttentionLayers: depth_scale_residual scales the output projections' init, which attn_on_attn, "
      "heads=1 and attn_project_out=False leave without a single weight");
  // Both reduce over each sequence's whole length, which packed sequences do not have.
  TORCH_CHECK_VALUE(!((o.orthog_residual() || o.mv_split_residual()) && o.unpad()),
                    "AttentionLayers: ", o.orthog_residual() ? "orthog_residual" : "mv_split_residual",
                    " reduces over each whole sequence, so it clashes with unpad");
}

// Self-attention layers reading three views take them as q, k and v inputs; x-transformers' options that read
// the layer's input besides those projections fail on the stacked views there.
void validate_input_views(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(!o.qkv_receive_diff_residuals() || o.multi_stream() || o.integrates_layers(),
                    "AttentionLayers: qkv_receive_diff_residuals needs views to read: num_residual_streams > "
                    "1, integrate_layers or attn_aggregated_residuals");
  TORCH_CHECK_VALUE(!(o.qkv_receive_diff_residuals() && o.multi_stream() && o.attn_aggregated_residuals()),
                    "AttentionLayers: qkv_receive_diff_residuals with several residual streams and "
                    "attn_aggregated_residuals would pool stacked views (x-transformers fails there)");
  const auto types = o.layer_types();
  for (size_t i = 0; i < types.size(); ++i) {
    if (o.layer_input_views(i) == 1) continue;
    const auto& a = o.layer_attention(i);
    TORCH_CHECK_VALUE(!(a.gate_values() || a.gate_value_heads() || a.swiglu_values() ||
                        a.data_dependent_alibi() || a.use_latent_kv()) &&
                          o.layer_shift_tokens(i) == 0,
                      "AttentionLayers: qkv_receive_diff_residuals gives self-attention three inputs, which "
                      "attn_gate_values, attn_gate_value_heads, attn_swiglu_values, "
                      "attn_data_dependent_alibi, attn_use_latent_kv and shift_tokens cannot read (as "
                      "x-transformers)");
  }
}

// Residual streams (hyper-connections, gated multi residual): what each needs and excludes, as x-transformers
// asserts; their options are refused where x-transformers would ignore them.
void validate_residual_streams(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(o.num_residual_streams() >= 1 && o.hyper_conn_sinkhorn_iters() >= 0,
                    "AttentionLayers: expected num_residual_streams >= 1 and hyper_conn_sinkhorn_iters >= 0, "
                    "got ",
                    o.num_residual_streams(), " and ", o.hyper_conn_sinkhorn_iters());
  TORCH_CHECK_VALUE(
      !(o.hyper_connections() && (o.gate_residual() || o.orthog_residual() || o.mv_split_residual())),
      "AttentionLayers: hyper-connections (num_residual_streams > 1) clash with gate_residual, "
      "orthog_residual and mv_split_residual");
  TORCH_CHECK_VALUE(
      !(o.multi_stream() && o.reinject_input()),
      "AttentionLayers: reinject_input projects the stack's input once, not per residual stream "
      "(x-transformers fails there); it clashes with num_residual_streams > 1");
  TORCH_CHECK_VALUE(
      o.hyper_connections() || o.hyper_conn_sinkhorn_iters() == 5,
      "AttentionLayers: hyper_conn_sinkhorn_iters is hyper-connections' (num_residual_streams > 1 "
      "without gated_multi_residual); x-transformers would ignore it");
  TORCH_CHECK_VALUE(
      !o.gated_multi_residual() ||
          (count_true({o.gate_residual(), o.orthog_residual(), o.mv_split_residual(),
                       o.attn_aggregated_residuals()}) == 0 &&
           !o.sandwich_norm() && o.gated_multi_residual_read_gate_rank().value_or(0) > 0),
      "AttentionLayers: gated_multi_residual needs residual_fn_kwargs read_gate_rank > 0 and clashes with "
      "gate_residual, orthog_residual, mv_split_residual, attn_aggregated_residuals and sandwich_norm");
  TORCH_CHECK_VALUE(o.gated_multi_residual() || !o.gated_multi_residual_read_gate_rank().has_value(),
                    "AttentionLayers: residual_fn_kwargs read_gate_rank is gated_multi_residual's; "
                    "x-transformers would ignore it");
}

// Layer integration (integrate_layers, attn_aggregated_residuals) and what each needs and excludes.
void validate_layer_integration(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(
      !(o.integrate_layers() && o.attn_aggregated_residuals()),
      "AttentionLayers: integrate_layers and attn_aggregated_residuals both integrate the layers; "
      "x-transformers would ignore attn_aggregated_residuals, so set at most one");
  TORCH_CHECK_VALUE(o.integrate_layers() || o.layer_integrate_use_softmax(),
                    "AttentionLayers: layer_integrate_use_softmax is integrate_layers'; x-transformers would "
                    "ignore it");
  TORCH_CHECK_VALUE(
      !o.attn_aggregated_residuals() || !(o.gate_residual() || o.orthog_residual() || o.mv_split_residual()),
      "AttentionLayers: attn_aggregated_residuals clashes with gate_residual, orthog_residual and "
      "mv_split_residual");
  if (o.attn_aggregated_residuals()) {
    TORCH_CHECK_VALUE(o.aggregated_residual_lora_rank() > 0 && o.aggregated_residual_lora_rank() < o.dim(),
                      "AttentionLayers: expected attn_aggregated_residual_kwargs lora_rank in (0, dim=",
                      o.dim(), "), got ", o.aggregated_residual_lora_rank());
    if (o.aggregated_residual_lora_activation().has_value())
      functional::check_activation_spec("attn_aggregated_residual_kwargs lora_activation",
                                        *o.aggregated_residual_lora_activation());
  } else {
    TORCH_CHECK_VALUE(o.aggregated_residual_lora_rank() == 64 && !o.aggregated_residual_lora_activation(),
                      "AttentionLayers: attn_aggregated_residual_kwargs are attn_aggregated_residuals'; "
                      "x-transformers would ignore them");
  }
}

// Sizes and the norm: one kind of norm, of layerscale, and what they need.
void validate_sizes_and_norms(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(o.dim() > 0, "AttentionLayers: expected dim > 0, got ", o.dim());
  TORCH_CHECK_VALUE(o.heads() > 0, "AttentionLayers: expected heads > 0, got ", o.heads());
  TORCH_CHECK_VALUE(o.custom_layers().has_value() || o.depth() > 0,
                    "AttentionLayers: expected depth > 0, got ", o.depth());
  TORCH_CHECK_VALUE(
      count_true({o.use_scalenorm(), o.use_rmsnorm(), o.use_simple_rmsnorm(), o.use_dynamic_tanh(),
                  o.use_derf(), o.use_adaptive_layernorm(), o.use_adaptive_rmsnorm()}) <= 1,
      "AttentionLayers: use_scalenorm, use_rmsnorm, use_simple_rmsnorm, use_dynamic_tanh, use_derf, "
      "use_adaptive_layernorm and use_adaptive_rmsnorm clash; set at most one");
  TORCH_CHECK_VALUE(!(o.use_layerscale() && o.use_adaptive_layerscale()),
                    "AttentionLayers: use_layerscale and use_adaptive_layerscale clash; set at most one");
  TORCH_CHECK_VALUE(!o.dim_condition().has_value() || *o.dim_condition() > 0,
                    "AttentionLayers: expected dim_condition > 0");
  TORCH_CHECK_VALUE(o.adaptive_condition_mlp_expansion() > 0,
                    "AttentionLayers: expected adaptive_condition_mlp_expansion > 0, got ",
                    o.adaptive_condition_mlp_expansion());
  TORCH_CHECK_VALUE(!o.use_dynamic_tanh() || o.pre_norm(),
                    "AttentionLayers: use_dynamic_tanh needs pre_norm (as "
                    "x-transformers)");
}

// The layer layout: custom_layers, par_ratio, sandwich_coef, the execution order, shift_tokens.
void validate_layer_layout(const AttentionLayersOptions& o) {
  TORCH_CHECK_VALUE(count_true({o.custom_layers().has_value(), o.par_ratio().has_value(),
                                o.sandwich_coef().has_value()}) <= 1,
                    "AttentionLayers: custom_layers, par_ratio and sandwich_coef clash; set at most one");
  TORCH_CHECK_VALUE(
      !(o.weight_tie_layers() &&
        (o.custom_layers() || o.par_ratio() || o.sandwich_coef() || !o.layers_execute_order().empty())),
      "AttentionLayers: weight_tie_layers clashes with custom_layers, par_ratio, sandwich_coef and "
      "layers_execute_order");
  TORCH_CHECK_VALUE(o.pre_norm() || !o.sandwich_norm(), "AttentionLayers: sandwich_norm needs pre_norm=True");
  validate_residual(o);
  TORCH_CHECK_VALUE(!(o.only_attn() && (!o.layers_execute_order().empty() || o.unet_skips())),
                    "AttentionLayers: only_attn clashes with layers_execute_order and unet_skips (as "
                    "x-transformers: their indices count the feed-forwards)");
  TORCH_CHECK_VALUE(
      !(o.only_attn() && o.custom_layers().has_value() && o.custom_layers()->find('f') != std::string::npos),
      "AttentionLayers: only_attn clashes with feed-forward layers ('f') in custom_layers, got ",
      o.custom_layers().value_or(""));
  for (const int64_t s : o.shift_tokens())
    TORCH_CHECK_VALUE(s >= 0, "AttentionLayers: expected shift_tokens >= 0, got ", s);
  TORCH_CHECK_VALUE(o.shift_tokens().size() <= 1 || o.shift_tokens().size() == o.layer_types().size(),
                    "AttentionLayers: expected shift_tokens as one value or one per layer (",
                    o.layer_types().size(), " layers), got ", o.shift_tokens().size(), " values");
  TORCH_CHECK_VALUE(!o.only_cross() || o.cross_attend(),
                    "AttentionLayers: only_cross needs cross_attend=True");
  if (o.custom_layers().has_value()) {
    TORCH_CHECK_VALUE(!o.custom_layers()->empty(), "AttentionLayers: expected a non-empty custom_layers");
    for (char t : *o.custom_layers())
      TORCH_CHECK_VALUE(t == 'a' || t == 'f' || (t == 'c' && o.cross_attend()),
                        "AttentionLayers: custom_layers may hold ",
                        o.cross_attend() ? "'a', 'c' and 'f'" : "'a' and 'f' ('c' needs cross_attend=True)",
                        ", got '", *o.custom_layers(), "'");
  }
  if (o.par_ratio().has_value()) {
    const int64_t par_depth = o.depth() * static_cast<int64_t>(default_block(o).size());
    TORCH_CHECK_VALUE(*o.par_ratio() > 1 && *o.par_ratio() <= par_depth,
                      "AttentionLayers: par_ratio out of range (1, ", par_depth, "], got ", *o.par_ratio());
  }
  if (o.sandwich_coef().has_value())
    TORCH_CHECK_VALUE(*o.sandwich_coef() > 0 && *o.sandwich_coef() <= o.depth(),
                      "AttentionLayers: expected 0 < sandwich_coef <= depth (", o.depth(), "), got ",
                      *o.sandwich_coef());
  const auto layers = static_cast<int64_t>(o.layer_types().size());
  for (int64_t i : o.layers_execute_order())
    TORCH_CHECK_VALUE(i >= 0 && i < layers, "AttentionLayers: layers_execute_order holds ", i,
                      ", but there are ", layers, " layers");
}

// Position encodings: one kind of bias, ALiBi heads, T5 buckets, the dynamic MLP, rotary.
void validate_positions(const AttentionLayersOptions& o) {
  if (o.alibi_num_heads().has_value())
    TORCH_CHECK_VALUE(*o.alibi_num_heads() > 0 && *o.alibi_num_heads() <= o.heads(),
                      "AttentionLayers: expected 0 < alibi_num_heads <= heads (", o.heads(), "), got ",
                      *o.alibi_num_heads());
  TORCH_CHECK_VALUE(
      count_true({o.alibi_pos_bias(), o.rel_pos_bias(), o.dynamic_pos_bias()}) <= 1,
      "AttentionLayers: alibi_pos_bias, rel_pos_bias and dynamic_pos_bias clash; set at most one");
  TORCH_CHECK_VALUE(o.rel_pos_num_buckets() > 1 && o.rel_pos_num_buckets() <= o.rel_pos_max_distance(),
                    "AttentionLayers: expected 1 < rel_pos_num_buckets <= rel_pos_max_distance, got ",
                    o.rel_pos_num_buckets(), " and ", o.rel_pos_max_distance());
  TORCH_CHECK_VALUE(!o.dynamic_pos_bias() || (o.dynamic_pos_bias_mlp_depth() >= 1 && o.dim() / 4 > 0),
                    "AttentionLayers: dynamic_pos_bias needs dynamic_pos_bias_mlp_depth >= 1 and dim >= 4");
  TORCH_CHECK_VALUE(!o.rotary_xpos() || o.causal(),
                    "AttentionLayers: rotary_xpos is for causal stacks only (Decoder)");
  if (o.rotate_num_heads().has_value()) {
    TORCH_CHECK_VALUE(*o.rotate_num_heads() > 0 && *o.rotate_num_heads() <= o.heads(),
                      "AttentionLayers: expected 0 < rotate_num_heads <= heads (", o.heads(), "), got ",
                      *o.rotate_num_heads());
    TORCH_CHECK_VALUE(
        *o.rotate_num_heads() == o.heads() || o.resolved_kv_heads(o.attn()) == o.heads(),
        "AttentionLayers: rotate_num_heads below heads needs as many kv heads as heads (no GQA), got ",
        o.resolved_kv_heads(o.attn()), " kv heads");
  }
  validate_polar(o);
  TORCH_CHECK_VALUE(
      o.alibi_slopes().empty() || (o.alibi_pos_bias() && static_cast<int64_t>(o.alibi_slopes().size()) ==
                                                             o.alibi_num_heads().value_or(o.heads())),
      "AttentionLayers: rel_pos_kwargs slopes (alibi_slopes) needs alibi_pos_bias and one slope per "
      "ALiBi head (",
      o.alibi_num_heads().value_or(o.heads()), "), got ", o.alibi_slopes().size());
  TORCH_CHECK_VALUE(o.rotary_xpos_scale_base() > 0,
                    "AttentionLayers: expected rotary_xpos_scale_base > 0, got ", o.rotary_xpos_scale_base());
  if (o.uses_rotary()) {
    const int64_t r = o.resolved_rotary_dim();
    TORCH_CHECK_VALUE(r >= 2 && r % 2 == 0 && r <= o.attn().dim_head(),
                      "AttentionLayers: expected an even rotary_emb_dim in [2, ", o.attn().dim_head(),
                      "] (attn_dim_head), got ", r);
    TORCH_CHECK_VALUE(o.rotary_interpolation_factor() >= 1,
                      "AttentionLayers: expected rotary_interpolation_factor >= 1, got ",
                      o.rotary_interpolation_factor());
    TORCH_CHECK_VALUE(r > 2 || o.rotary_base_rescale_factor() == 1.0,
                      "AttentionLayers: rotary_base_rescale_factor needs rotary_emb_dim > 2");
  }
}

// Attention and feed-forward options, the stack's and each layer's under a schedule.
// The feed-forward's activation variants (each layer's, with a schedule), as x-transformers asserts them; and
// softclamp_value beside glu, which x-transformers would ignore, refused rather than dropped.
void validate_feed_forward(const FeedForwardOptions& f) {
  if (f.custom_activation().has_value()) {
    functional::check_activation_spec("ff_custom_activation", *f.custom_activation());
    TORCH_CHECK_VALUE(
        !(f.swish() || f.relu_squared() || f.solu()),
        "AttentionLayers: ff_custom_activation takes the place of ff_swish, ff_relu_squared and ",
        "ff_solu (x-transformers would ignore them); set at most one");
  }
  TORCH_CHECK_VALUE(!(f.solu() && f.relu_squared()),
                    "AttentionLayers: ff_solu and ff_relu_squared exclude each "
                    "other, got both");
  TORCH_CHECK_VALUE(f.sublayer_dropout() >= 0 && f.sublayer_dropout() < 1,
                    "AttentionLayers: expected ff_sublayer_dropout in [0, 1), got ", f.sublayer_dropout());
  TORCH_CHECK_VALUE(f.softclamp_value().value_or(1) > 0,
                    "AttentionLayers: expected ff_softclamp_value > 0, got ",
                    f.softclamp_value().value_or(0));
  TORCH_CHECK_VALUE(!(f.glu() && f.softclamp_value().has_value()),
                    "AttentionLayers: ff_softclamp_value clamps the non-GLU projection; with ff_glu, use "
                    "ff_glu_softclamp (x-transformers would ignore it)");
  if (!f.glu_softclamp()) return;
  const auto custom = f.custom_activation().value_or("gelu");
  TORCH_CHECK_VALUE(f.glu() && !f.relu_squared() && !f.solu() &&
                        (custom == "gelu" || custom == "gelu_tanh" || custom == "silu"),
                    "AttentionLayers: ff_glu_softclamp needs ff_glu with the GELU or swish activation");
  TORCH_CHECK_VALUE(
      f.glu_gate_softclamp_value() > 0 && f.glu_up_softclamp_value() > 0,
      "AttentionLayers: expected ff_glu_gate_softclamp_value and ff_glu_up_softclamp_value > 0, got ",
      f.glu_gate_softclamp_value(), " and ", f.glu_up_softclamp_value());
}

void validate_blocks(const AttentionLayersOptions& o) {
  validate_feed_forward(o.ff());
  for (const auto& f : o.ff_per_layer()) validate_feed_forward(f);
  validate_attention("attn_", o.attn(), o);
  if (o.cross_attend()) validate_attention("cross_attn_", o.cross_attn(), o);
  {
    // A schedule has one entry per layer of its kind, each valid on its own.
    const auto kinds = o.layer_types();
    const auto count = [&](char kind) {
      return static_cast<size_t>(std::count(kinds.begin(), kinds.end(), kind));
    };
    const auto check_length = [&](const char* name, size_t given, char kind) {
      TORCH_CHECK_VALUE(given == 0 || given == count(kind), "AttentionLayers: expected the ", name,
                        " schedule to give one value per layer of that kind (", count(kind), "), got ",
                        given);
    };
    check_length("attn_*", o.attn_per_layer().size(), 'a');
    check_length("cross_attn_*", o.cross_attn_per_layer().size(), 'c');
    check_length("ff_*", o.ff_per_layer().size(), 'f');
    for (const auto& a : o.attn_per_layer()) validate_attention("attn_", a, o);
    for (const auto& a : o.cross_attn_per_layer()) validate_attention("cross_attn_", a, o);
    for (const auto& f : o.ff_per_layer())
      TORCH_CHECK_VALUE(
          f.mult() > 0 && static_cast<int64_t>(o.dim() * f.mult()) > 0 && f.dropout() >= 0 && f.dropout() < 1,
          "AttentionLayers: expected each ff_mult > 0 giving an inner width >= 1 and each ff_dropout "
          "in [0, 1), got ",
          f.mult(), " and ", f.dropout());
  }
  TORCH_CHECK_VALUE(o.attn().dim_context().value_or(o.dim()) == o.dim(),
                    "AttentionLayers: self-attention reads x, so its "
                    "keys' input width is dim (",
                    o.dim(), "), got attn_dim_context=", *o.attn().dim_context(),
                    "; set cross_attn_dim_context for a context of another width");
  TORCH_CHECK_VALUE(o.cross_attn().dim_context().value_or(1) > 0,
                    "AttentionLayers: expected cross_attn_dim_context > 0, "
                    "got ",
                    o.cross_attn().dim_context().value_or(0));
  TORCH_CHECK_VALUE(o.ff().mult() > 0 && static_cast<int64_t>(o.dim() * o.ff().mult()) > 0,
                    "AttentionLayers: expected ff_mult > 0 giving an inner width >= 1, got ", o.ff().mult());
  for (auto [name, p] : {std::pair<const char*, double>{"ff_dropout", o.ff().dropout()},
                         {"layer_dropout", o.layer_dropout()},
                         {"cross_attn_tokens_dropout", o.cross_attn_tokens_dropout()}})
    TORCH_CHECK_VALUE(p >= 0 && p < 1, "AttentionLayers: expected ", name, " in [0, 1), got ", p);
  TORCH_CHECK_VALUE(!o.softclamp_output() || o.softclamp_output_value() > 0,
                    "AttentionLayers: expected softclamp_output_value > 0");
  // The learned mix sits on the self-attention layers after the first; x-transformers fails at forward there
  // when kv heads are fewer than heads, so refuse at construction (a single self-attention layer has no mix).
  const auto types = o.layer_types();
  TORCH_CHECK_VALUE(
      !(o.add_value_residual() && o.learned_value_residual_mix() &&
        o.resolved_kv_heads(o.attn()) != o.heads() && std::count(types.begin(), types.end(), 'a') > 1),
      "AttentionLayers: add_value_residual's learned mix needs one kv head per query head (attn_kv_heads "
      "unset), got ",
      o.resolved_kv_heads(o.attn()), " kv heads for ", o.heads(), " heads");
}

}  // namespace

void AttentionLayersOptions::validate() const {
  validate_sizes_and_norms(*this);
  validate_layer_layout(*this);
  validate_positions(*this);
  validate_blocks(*this);
  validate_residual_streams(*this);
  validate_layer_integration(*this);
  validate_input_views(*this);
}

// ------------------------------------------------------------------------------------------------
// serialisation

namespace {

using Field = detail::OptionField<AttentionLayersOptions>;

AttentionOptions& attn(AttentionLayersOptions& o) { return o.attn(); }
AttentionOptions& cross_attn(AttentionLayersOptions& o) { return o.cross_attn(); }
FeedForwardOptions& ff(AttentionLayersOptions& o) { return o.ff(); }

void add_attention_fields(std::vector<Field>& fields, const std::string& prefix,
                          AttentionOptions& (*part)(AttentionLayersOptions&)) {
#define XTC_ATTN(NAME, TYPE)                                                                              \
  fields.push_back(XTC_OPTION_FIELD_OF(AttentionLayersOptions, AttentionOptions, part, "AttentionLayers", \
                                       prefix, #NAME, NAME, TYPE))
  XTC_ATTN(dim_head, int64_t);
  XTC_ATTN(kv_heads, std::optional<int64_t>);
  XTC_ATTN(one_kv_head, bool);
  XTC_ATTN(value_dim_head, std::optional<int64_t>);
  XTC_ATTN(dropout, double);
  XTC_ATTN(flash, bool);
  XTC_ATTN(flash_pack_seq, bool);
  XTC_ATTN(softclamp_logits, bool);
  XTC_ATTN(logit_softclamp_value, double);
  XTC_ATTN(max_attend_past, std::optional<int64_t>);
  XTC_ATTN(window_size, std::optional<int64_t>);
  XTC_ATTN(linear, bool);
  XTC_ATTN(pre_talking_heads, bool);
  XTC_ATTN(post_talking_heads, bool);
  XTC_ATTN(pre_scale_post_talking_heads, bool);
  XTC_ATTN(sparse_topk, std::optional<int64_t>);
  XTC_ATTN(sparse_topk_straight_through, bool);
  XTC_ATTN(sigmoid, bool);
  XTC_ATTN(hard, bool);
  XTC_ATTN(cog_signed, bool);
  XTC_ATTN(data_dependent_alibi, bool);
  XTC_ATTN(data_dependent_alibi_per_row, bool);
  XTC_ATTN(data_dependent_alibi_per_row_dim_head, int64_t);
  XTC_ATTN(data_dependent_alibi_bias_init, double);
  XTC_ATTN(data_dependent_alibi_post_log_scale, double);
  XTC_ATTN(use_rel_proj_pos_bias, bool);
  XTC_ATTN(rel_proj_num_distance_basis, int64_t);
  XTC_ATTN(rel_proj_max_dist, int64_t);
  XTC_ATTN(use_latent_q, bool);
  XTC_ATTN(dim_latent_q, std::optional<int64_t>);
  XTC_ATTN(use_latent_kv, bool);
  XTC_ATTN(dim_latent_kv, std::optional<int64_t>);
  XTC_ATTN(latent_rope_subheads, std::optional<int64_t>);
  XTC_ATTN(use_cope, bool);
  XTC_ATTN(cope_max_pos, int64_t);
  XTC_ATTN(cope_soft_onehot_pos, bool);
  XTC_ATTN(cope_talking_heads, bool);
  XTC_ATTN(l2_distance, bool);
  XTC_ATTN(gumbel_softmax, bool);
  XTC_ATTN(gumbel_softmax_temp, double);
  XTC_ATTN(gumbel_softmax_hard, bool);
  XTC_ATTN(selective, bool);
  XTC_ATTN(inverted_attention, bool);
  XTC_ATTN(on_attn, bool);
  XTC_ATTN(qk_norm, bool);
  XTC_ATTN(qk_norm_groups, int64_t);
  XTC_ATTN(qk_norm_scale, double);
  XTC_ATTN(qk_norm_dim_scale, bool);
  XTC_ATTN(gate_values, bool);
  XTC_ATTN(gate_values_rank, std::optional<int64_t>);
  XTC_ATTN(gate_values_headwise, bool);
  XTC_ATTN(output_gate, bool);
  XTC_ATTN(output_gate_rank, std::optional<int64_t>);
  XTC_ATTN(output_gate_headwise, bool);
  XTC_ATTN(low_rank_silu_gates, bool);
  XTC_ATTN(swiglu_values, bool);
  XTC_ATTN(gate_value_heads, bool);
  XTC_ATTN(laser, bool);
  XTC_ATTN(laser_softclamp_value, double);
  XTC_ATTN(orthog_projected_values, bool);
  XTC_ATTN(orthog_projected_values_per_head, bool);
  XTC_ATTN(project_out, std::optional<bool>);
  XTC_ATTN(sublayer_dropout, double);
  XTC_ATTN(head_scale, bool);
  XTC_ATTN(num_mem_kv, int64_t);
  XTC_ATTN(add_zero_kv, bool);
  XTC_ATTN(qk_rmsnorm, bool);
  XTC_ATTN(k_rmsnorm, bool);
  XTC_ATTN(value_rmsnorm, bool);
  XTC_ATTN(head_learned_sink, bool);
  XTC_ATTN(dim_context, std::optional<int64_t>);
  XTC_ATTN(zero_init_output, bool);
  XTC_ATTN(hybrid_module, std::optional<std::string>);
  XTC_ATTN(hybrid_fold_axial_dim, std::optional<int64_t>);
  XTC_ATTN(hybrid_learned_mix, bool);
#undef XTC_ATTN
}

const std::vector<Field>& fields() {
  static const std::vector<Field> all = [] {
    std::vector<Field> f;
    using O = AttentionLayersOptions;
#define XTC_OWN(NAME, TYPE) f.push_back(XTC_OPTION_FIELD(O, "AttentionLayers", NAME, TYPE))
    XTC_OWN(dim, int64_t);
    XTC_OWN(depth, int64_t);
    XTC_OWN(heads, int64_t);
    XTC_OWN(causal, bool);
    XTC_OWN(cross_attend, bool);
    XTC_OWN(only_cross, bool);
    XTC_OWN(layer_dropout, double);
    XTC_OWN(cross_attn_tokens_dropout, double);
    XTC_OWN(use_scalenorm, bool);
    XTC_OWN(use_rmsnorm, bool);
    XTC_OWN(use_simple_rmsnorm, bool);
    XTC_OWN(use_dynamic_tanh, bool);
    XTC_OWN(dynamic_tanh_init_alpha, double);
    XTC_OWN(use_derf, bool);
    XTC_OWN(norm_add_unit_offset, bool);
    XTC_OWN(pre_norm, bool);
    XTC_OWN(sandwich_norm, bool);
    XTC_OWN(pre_norm_has_final_norm, bool);
    XTC_OWN(pre_and_post_norm, bool);
    XTC_OWN(unet_skips, bool);
    XTC_OWN(use_adaptive_layernorm, bool);
    XTC_OWN(use_adaptive_rmsnorm, bool);
    XTC_OWN(use_adaptive_layerscale, bool);
    XTC_OWN(dim_condition, std::optional<int64_t>);
    XTC_OWN(adaptive_condition_mlp, bool);
    XTC_OWN(adaptive_condition_mlp_expansion, int64_t);
    XTC_OWN(reinject_input, bool);
    XTC_OWN(learned_reinject_input_gate, bool);
    XTC_OWN(scale_residual, bool);
    XTC_OWN(scale_residual_constant, double);
    XTC_OWN(gate_residual, bool);
    XTC_OWN(orthog_residual, bool);
    XTC_OWN(mv_split_residual, bool);
    XTC_OWN(mv_split_residual_learned, bool);
    XTC_OWN(mv_split_residual_init_alpha, double);
    XTC_OWN(mv_split_residual_init_beta, double);
    XTC_OWN(num_residual_streams, int64_t);
    XTC_OWN(hyper_conn_sinkhorn_iters, int64_t);
    XTC_OWN(qkv_receive_diff_residuals, bool);
    XTC_OWN(integrate_layers, bool);
    XTC_OWN(layer_integrate_use_softmax, bool);
    XTC_OWN(gated_multi_residual, bool);
    XTC_OWN(gated_multi_residual_read_gate_rank, std::optional<int64_t>);
    XTC_OWN(attn_aggregated_residuals, bool);
    XTC_OWN(aggregated_residual_lora_rank, int64_t);
    XTC_OWN(aggregated_residual_lora_activation, std::optional<std::string>);
    XTC_OWN(branch_output_scale, std::optional<double>);
    XTC_OWN(depth_scale_residual, bool);
    XTC_OWN(use_layerscale, bool);
    XTC_OWN(layerscale_init_value, double);
    XTC_OWN(macaron, bool);
    XTC_OWN(only_attn, bool);
    XTC_OWN(custom_layers, std::optional<std::string>);
    XTC_OWN(sandwich_coef, std::optional<int64_t>);
    XTC_OWN(par_ratio, std::optional<int64_t>);
    XTC_OWN(layers_execute_order, std::vector<int64_t>);
    XTC_OWN(weight_tie_layers, bool);
    XTC_OWN(alibi_pos_bias, bool);
    XTC_OWN(alibi_num_heads, std::optional<int64_t>);
    XTC_OWN(alibi_slopes, std::vector<double>);
    XTC_OWN(shift_tokens, std::vector<int64_t>);
    XTC_OWN(add_value_residual, bool);
    XTC_OWN(learned_value_residual_mix, bool);
    XTC_OWN(residual_attn, bool);
    XTC_OWN(cross_residual_attn, bool);
    XTC_OWN(rel_pos_bias, bool);
    XTC_OWN(rel_pos_num_buckets, int64_t);
    XTC_OWN(rel_pos_max_distance, int64_t);
    XTC_OWN(dynamic_pos_bias, bool);
    XTC_OWN(dynamic_pos_bias_log_distance, bool);
    XTC_OWN(dynamic_pos_bias_mlp_depth, int64_t);
    XTC_OWN(dynamic_pos_bias_norm, bool);
    XTC_OWN(rotary_pos_emb, bool);
    XTC_OWN(rotary_emb_dim, std::optional<int64_t>);
    XTC_OWN(rotary_interpolation_factor, double);
    XTC_OWN(rotary_base_rescale_factor, double);
    XTC_OWN(rotary_xpos, bool);
    XTC_OWN(rotary_xpos_scale_base, int64_t);
    XTC_OWN(rotate_num_heads, std::optional<int64_t>);
    XTC_OWN(polar_pos_emb, bool);
    XTC_OWN(polar_bias_uniform_init, bool);
    XTC_OWN(disable_abs_pos_emb, std::optional<bool>);
    XTC_OWN(softclamp_output, bool);
    XTC_OWN(softclamp_output_value, double);
    XTC_OWN(zero_init_branch_output, bool);
    XTC_OWN(unpad, bool);
#undef XTC_OWN
    add_attention_fields(f, "attn_", attn);
    add_attention_fields(f, "cross_attn_", cross_attn);
#define XTC_FF(NAME, TYPE) \
  f.push_back(XTC_OPTION_FIELD_OF(O, FeedForwardOptions, ff, "AttentionLayers", "ff_", #NAME, NAME, TYPE))
    XTC_FF(mult, double);
    XTC_FF(glu, bool);
    XTC_FF(glu_mult_bias, bool);
    XTC_FF(custom_activation, std::optional<std::string>);
    XTC_FF(swish, bool);
    XTC_FF(relu_squared, bool);
    XTC_FF(solu, bool);
    XTC_FF(softclamp_value, std::optional<double>);
    XTC_FF(glu_softclamp, bool);
    XTC_FF(glu_gate_softclamp_value, double);
    XTC_FF(glu_up_softclamp_value, double);
    XTC_FF(post_act_ln, bool);
    XTC_FF(no_bias, bool);
    XTC_FF(dropout, double);
    XTC_FF(sublayer_dropout, double);
    XTC_FF(zero_init_output, bool);
#undef XTC_FF
    for (size_t i = 0; i < f.size(); ++i)  // a prefixed name of the stack's own must not shadow a block's
      TORCH_INTERNAL_ASSERT(detail::find_field(f, f[i].key) == &f[i], "option key twice: ", f[i].key);
    return f;
  }();
  return all;
}

}  // namespace

namespace {

// Layer schedules: a block option's values, one per layer of its kind, as a list ("ff_mult": [4, 2, 1]);
// block options hold no lists of their own. A schedule's field is read and written through a copy of the
// options whose common block options are that layer's.
struct Schedule {
  std::string part;                                             // the fields' part: "attn_", "ff_", ...
  char kind;                                                    // its layers' letter
  size_t size;                                                  // entries (0: no schedule)
  std::function<void(AttentionLayersOptions&, size_t)> select;  // common options := entry i
  std::function<void(AttentionLayersOptions&, size_t, const AttentionLayersOptions&)>
      store;  // entry i := common
  std::function<void(AttentionLayersOptions&, size_t)> resize;
};

std::vector<Schedule> schedules(const AttentionLayersOptions& o) {
  using O = AttentionLayersOptions;
  return {
      {"attn_", 'a', o.attn_per_layer().size(), [](O& t, size_t i) { t.attn(t.attn_per_layer().at(i)); },
       [](O& t, size_t i, const O& from) { t.attn_per_layer().at(i) = from.attn(); },
       [](O& t, size_t n) { t.attn_per_layer().assign(n, t.attn()); }},
      {"cross_attn_", 'c', o.cross_attn_per_layer().size(),
       [](O& t, size_t i) { t.cross_attn(t.cross_attn_per_layer().at(i)); },
       [](O& t, size_t i, const O& from) { t.cross_attn_per_layer().at(i) = from.cross_attn(); },
       [](O& t, size_t n) { t.cross_attn_per_layer().assign(n, t.cross_attn()); }},
      {"ff_", 'f', o.ff_per_layer().size(), [](O& t, size_t i) { t.ff(t.ff_per_layer().at(i)); },
       [](O& t, size_t i, const O& from) { t.ff_per_layer().at(i) = from.ff(); },
       [](O& t, size_t n) { t.ff_per_layer().assign(n, t.ff()); }},
  };
}

const Schedule* schedule_of(const std::vector<Schedule>& all, const Field& field) {
  for (const auto& s : all)
    if (field.part == s.part) return &s;
  return nullptr;
}

using Scheduled = std::vector<std::pair<const Field*, detail::Json>>;  // fields given a list, and the list

// x-transformers: an attn_* schedule that does not match the self-attention layers goes to cross-attention
// (CrossAttender), unless cross_attn_* gives that option.
void move_schedules_to_cross_attention(AttentionLayersOptions& options, Scheduled& scheduled,
                                       const detail::Json& given) {
  const auto types = options.layer_types();
  const auto self_layers = static_cast<size_t>(std::count(types.begin(), types.end(), 'a'));
  if (self_layers > 0) return;
  for (size_t e = 0, entries = scheduled.size(); e < entries; ++e) {
    const auto [field, values] = scheduled[e];
    if (field->part != "attn_" || values.size() == self_layers) continue;
    const std::string cross_key = "cross_" + field->key;
    scheduled[e].first = nullptr;
    if (given.contains(cross_key)) continue;
    const Field* cross = detail::find_field(fields(), cross_key);
    cross->read(options, values.front());
    scheduled.emplace_back(cross, values);
  }
  scheduled.erase(std::remove_if(scheduled.begin(), scheduled.end(),
                                 [](const auto& entry) { return entry.first == nullptr; }),
                  scheduled.end());
}

// Each scheduled field's values into its kind's per-layer options.
void apply_schedules(AttentionLayersOptions& options, const Scheduled& scheduled) {
  const auto types = options.layer_types();
  for (const auto& s : schedules(options)) {
    const auto in_this = [&](const Field* field) { return field->part == s.part; };
    if (std::none_of(scheduled.begin(), scheduled.end(),
                     [&](const auto& entry) { return in_this(entry.first); }))
      continue;
    const auto layers = static_cast<size_t>(std::count(types.begin(), types.end(), s.kind));
    s.resize(options, layers);
    for (const auto& [field, values] : scheduled) {
      if (!in_this(field)) continue;
      TORCH_CHECK_VALUE(values.size() == layers, "AttentionLayers: expected ", field->key, " per layer as ",
                        layers, " values (one per layer of that kind), got ", values.size());
      for (size_t i = 0; i < layers; ++i) {
        AttentionLayersOptions layer = options;
        s.select(layer, i);
        field->read(layer, values[i]);
        s.store(options, i, layer);
      }
    }
  }
}

// x-transformers routes attn_* to cross-attention too, unless cross_attn_* gives it; a schedule (one value
// per layer) stays with self-attention.
void add_cross_attention_defaults(detail::Json& given) {
  detail::Json defaults = detail::Json::object();
  for (const auto& [key, value] : given.items()) {
    const std::string cross_key = "cross_" + key;
    if (key.rfind("attn_", 0) == 0 && !value.is_array() && !given.contains(cross_key) &&
        detail::find_field(fields(), cross_key) != nullptr)
      defaults[cross_key] = value;
  }
  given.update(defaults);
}

}  // namespace

std::string AttentionLayersOptions::serialize() const {
  const auto all = schedules(*this);
  detail::Json object = detail::Json::object();
  for (const auto& field : fields()) {
    detail::Json value = field.write(*this);
    if (const Schedule* s = schedule_of(all, field); s != nullptr && s->size > 0) {
      detail::Json values = detail::Json::array();  // per layer when the layers differ in this field
      for (size_t i = 0; i < s->size; ++i) {
        AttentionLayersOptions layer = *this;
        s->select(layer, i);
        values.push_back(field.write(layer));
      }
      if (std::adjacent_find(values.begin(), values.end(), std::not_equal_to<>()) != values.end())
        value = values;
    }
    object[field.key] = value;
  }
  return object.dump();
}

AttentionLayersOptions AttentionLayersOptions::parse(const std::string& json) {
  constexpr const char* owner = "AttentionLayers";
  detail::Json given = detail::parse_object(owner, json);
  expand_keyword_forms(given);
  detail::check_known_keys(owner, fields(), given);
  add_cross_attention_defaults(given);
  AttentionLayersOptions options(0, 0, 0);
  Scheduled scheduled;  // applied once the layer counts are known
  for (const auto& [key, value] : given.items()) {
    const Field* field = detail::find_field(fields(), key);
    if (field->part.empty() || !value.is_array()) {
      field->read(options, value);
      continue;
    }
    TORCH_CHECK_VALUE(!value.empty(), owner, ": expected ", key, " as one value or one per layer, got []");
    field->read(options, value.front());  // the common value: the first layer's
    scheduled.emplace_back(field, value);
  }
  move_schedules_to_cross_attention(options, scheduled, given);
  apply_schedules(options, scheduled);
  options.validate();
  return options;
}

std::vector<std::string> AttentionLayersOptions::keys() { return detail::field_keys(fields()); }

}  // namespace xtc::nn
