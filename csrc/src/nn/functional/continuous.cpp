#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/stack.h>
#include <xtc/nn/functional/continuous.h>
#include <xtc/nn/functional/norm.h>

#include <cmath>

#include "src/nn/functional/wrapper_parts.h"
#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

ContinuousTransformerPlan::ContinuousTransformerPlan(ContinuousTransformerWrapperOptions options,
                                                     AttentionLayersPlan layers)
    : options_(std::move(options)), layers_(std::move(layers)) {
  options_.validate();
  const auto& o = options_;
  const int64_t dim = layers_.options().dim();
  // x-transformers: absolute positions need max_seq_len, and the stack's rotary or T5 positions turn them
  // off.
  has_abs_pos_emb_ =
      o.max_seq_len().value_or(0) > 0 && o.use_abs_pos_emb() && !layers_.options().disables_abs_pos_emb();
  has_project_in_ = o.dim_in().has_value() && (!o.use_identity_if_same_dim() || *o.dim_in() != dim);
  // Probabilistic outputs are twice as wide (a mean and a log-variance per feature), as x-transformers.
  const int64_t dim_out = o.dim_out().value_or(0) * (o.probabilistic() ? 2 : 1);
  has_project_out_ = o.dim_out().has_value() && (!o.use_identity_if_same_dim() || dim_out != dim);
  TORCH_CHECK_VALUE(!o.scaled_sinu_pos_emb() || dim % 2 == 0,
                    "ContinuousTransformerWrapper: scaled_sinu_pos_emb needs an even dim, got ", dim);
}

void ContinuousTransformerPlan::set_layout(std::vector<ParameterSpec> layout) {
  TORCH_INTERNAL_ASSERT(parameters_.empty(), "ContinuousTransformerPlan: layout set twice");
  parameters_ = std::move(layout);
  layers_offset_ = detail::layout_offset("ContinuousTransformerWrapper", parameters_, "attn_layers.");
}

namespace {

// x-transformers' continuous prepend_embeds: in front of everything (memory tokens included, which it then
// cannot unpack: refused), the mask padded for them; returns how many.
c10::SymInt prepend_embeddings(at::Tensor& x, std::optional<at::Tensor>& mask, const c10::SymInt& b,
                               const ContinuousTransformerPlan& plan, const ExtraEmbeddings& extra,
                               const WrapperCache& cache) {
  TORCH_CHECK_VALUE(!extra.token_embeds.has_value() && extra.embed_ids.empty(),
                    "ContinuousTransformerWrapper: token embeddings and embed_ids are TransformerWrapper's");
  const auto n = x.sym_size(1);
  mask = detail::mask_with_prepend("ContinuousTransformerWrapper", mask, extra.prepend_embeds,
                                   extra.prepend_mask, b, n, x);
  if (!extra.prepend_embeds.has_value()) return 0;
  detail::check_prepend_embeds("ContinuousTransformerWrapper", *extra.prepend_embeds, x);
  TORCH_CHECK_VALUE(plan.options().num_memory_tokens() == 0 && !plan.options().average_pool_embed(),
                    "ContinuousTransformerWrapper: prepend_embeds clashes with num_memory_tokens and "
                    "average_pool_embed (x-transformers fails there)");
  TORCH_CHECK_VALUE(
      cache.kv.empty() || !cache.input_not_include_cache,
      "ContinuousTransformerWrapper: prepend_embeds with a cache needs the whole sequence so far "
      "(input_not_include_cache off): the prefix leads it");
  x = at::cat({*extra.prepend_embeds, x}, 1);
  return extra.prepend_embeds->sym_size(1);
}

// The key mask: `mask`, or `lens` (b) as one, the positions before each length kept (at most one given).
std::optional<at::Tensor> key_mask(const std::optional<at::Tensor>& mask,
                                   const std::optional<at::Tensor>& lens, const at::Tensor& x) {
  TORCH_CHECK_VALUE(!(mask.has_value() && lens.has_value()),
                    "ContinuousTransformerWrapper: pass either mask or lens, not both");
  if (!lens.has_value()) return mask;
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1);
  TORCH_CHECK_VALUE(lens->dim() == 1 && lens->sym_size(0) == b && !lens->is_floating_point(),
                    "ContinuousTransformerWrapper: expected lens of shape (", b,
                    ") and an integer dtype, got ", lens->sym_sizes(), " ", lens->scalar_type());
  return at::arange(n, lens->options()).unsqueeze(0) < lens->unsqueeze(1);
}

// x's embeddings: projected in, at their positions (x-transformers' offset after the cache with
// input_not_include_cache), plus sum_embeds, then post_emb_norm.
template <typename Get>
at::Tensor input_embeddings(const at::Tensor& x_in, const AttentionLayersInputs& given,
                            const ContinuousTransformerPlan& plan, const Get& get,
                            const ExtraEmbeddings& extra, const WrapperCache& cache) {
  const auto& o = plan.options();
  const c10::SymInt n = x_in.sym_size(1);
  at::Tensor x = plan.has_project_in() ? at::linear(x_in, get("project_in.weight")) : x_in;
  if (plan.has_abs_pos_emb()) {
    const int64_t offset = cache.input_not_include_cache ? cache.cached_length() : 0;
    const c10::SymInt end = detail::positions_end(n, offset, x.device());
    TORCH_CHECK_VALUE(end <= *o.max_seq_len(),
                      "ContinuousTransformerWrapper: expected a sequence of at most max_seq_len (",
                      *o.max_seq_len(), ") positions, got ", end);
    const auto positions = detail::wrapper_positions("ContinuousTransformerWrapper", n, given, x,
                                                     !o.scaled_sinu_pos_emb(), offset);
    const int64_t dim = plan.layers().options().dim();
    x = x + (o.scaled_sinu_pos_emb()
                 ? detail::scaled_sinusoidal_positions(get("pos_emb.scale"), positions, dim, x)
                 : detail::absolute_positions(get("pos_emb.emb.weight"), positions, false));
  }
  x = detail::add_sum_embeds("ContinuousTransformerWrapper", x, extra.sum_embeds);
  if (o.post_emb_norm()) x = layer_norm(x, get("post_emb_norm.gamma"), /*unit_offset=*/false);
  return x;
}

}  // namespace

at::Tensor continuous_transformer(const at::Tensor& x_in, const AttentionLayersInputs& given,
                                  const std::optional<at::Tensor>& lens, at::TensorList params,
                                  const ContinuousTransformerPlan& plan, bool training,
                                  bool return_embeddings, const WrapperCache& cache,
                                  AttentionLayersHiddens* record, const ExtraEmbeddings& extra) {
  const auto& o = plan.options();
  detail::refuse_when_sharded("ContinuousTransformerWrapper",
                              {{"num_memory_tokens", o.num_memory_tokens() > 0},
                               {"average_pool_embed", o.average_pool_embed()},
                               {"prepend_embeds", extra.prepend_embeds.has_value()},
                               {"lens", lens.has_value()}});
  const std::optional<at::Tensor>& mask_in = given.mask;
  const int64_t dim = plan.layers().options().dim();
  const int64_t dim_in = plan.has_project_in() ? *o.dim_in() : dim;
  TORCH_CHECK_VALUE(x_in.dim() == 3 && x_in.sym_size(2) == dim_in,
                    "ContinuousTransformerWrapper: expected x of shape (batch, seq, ", dim_in, "), got ",
                    x_in.sym_sizes());
  TORCH_CHECK_VALUE(params.size() == plan.parameters().size(), "ContinuousTransformerWrapper: expected ",
                    plan.parameters().size(), " parameters for these options, got ", params.size());
  // Batch and length as SymInts: torch.export and torch.compile keep them symbolic.
  const c10::SymInt b = x_in.sym_size(0), n = x_in.sym_size(1);
  const std::optional<at::Tensor> mask = key_mask(mask_in, lens, x_in);
  const auto get = [&](const std::string& name) {
    return detail::find_tensor("ContinuousTransformerWrapper", plan.parameters(), params, name);
  };
  at::Tensor x = input_embeddings(x_in, given, plan, get, extra, cache);
  const int64_t memory = o.num_memory_tokens();
  std::optional<at::Tensor> layer_mask = mask;
  if (memory > 0) detail::prepend_memory(x, layer_mask, get("memory_tokens"));
  const c10::SymInt prepended = prepend_embeddings(x, layer_mask, b, plan, extra, cache);
  if (training && o.emb_dropout() > 0) x = at::dropout(x, o.emb_dropout(), training);
  const auto layer_params = params.slice(plan.layers_offset(), plan.layers().parameters().size());
  // Unlike TransformerWrapper, x-transformers' continuous wrapper keeps pos and seq_start_pos to its position
  // embedding: the stack gets neither.
  AttentionLayersInputs for_stack = given;
  for_stack.pos.reset();
  for_stack.seq_start_pos.reset();
  const auto inputs = detail::stack_inputs("ContinuousTransformerWrapper", for_stack, layer_mask, cache,
                                           prepended + n, memory > 0, o.average_pool_embed());
  x = attention_layers(x, inputs, layer_params, plan.layers(), training, record);
  if (memory > 0) x = x.narrow_symint(1, memory, n);
  // x-transformers pools with the mask as passed: with `lens` instead, it averages over every position.
  if (o.average_pool_embed()) x = detail::masked_mean(x, mask_in);
  if (return_embeddings) return x;
  const at::Tensor out = plan.has_project_out() ? at::linear(x, get("project_out.weight")) : x;
  if (!o.probabilistic()) return out;
  // '... (d mean_log_var) -> mean_log_var ... d': interleaved pairs; the variance is exp(log_var).
  const auto pairs = out.unflatten(-1, {xtc::detail::static_size(out, -1) / 2, 2});
  return at::stack({pairs.select(-1, 0), pairs.select(-1, 1).exp()});
}

}  // namespace xtc::nn::functional
