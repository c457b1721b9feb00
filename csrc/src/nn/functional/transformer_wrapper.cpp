#include <ATen/ops/_assert_async.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/transformer_wrapper.h>

#include <cmath>
#include <functional>

#include "src/nn/functional/recurrent_depth.h"
#include "src/nn/functional/wrapper_parts.h"
#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

// A wrapper tensor by its state_dict name (undefined where the options leave it out).
using TensorByName = std::function<at::Tensor(const std::string&)>;

TransformerWrapperPlan::TransformerWrapperPlan(TransformerWrapperOptions options, AttentionLayersPlan layers)
    : options_(std::move(options)), layers_(std::move(layers)) {
  options_.validate();
  const auto& o = options_;
  const int64_t dim = layers_.options().dim();
  emb_dim_ = o.emb_dim().value_or(dim);
  has_abs_pos_emb_ = o.max_seq_len() > 0 && o.use_abs_pos_emb() && !layers_.options().disables_abs_pos_emb();
  TORCH_CHECK_VALUE(!(o.scaled_sinu_pos_emb() && has_abs_pos_emb_) || emb_dim_ % 2 == 0,
                    "TransformerWrapper: scaled_sinu_pos_emb needs an even emb_dim, got ", emb_dim_);
  TORCH_CHECK_VALUE(
      !o.looped() || layers_.options().pre_and_post_norm(),
      "TransformerWrapper: looped needs a stack with pre_and_post_norm=True (as x-transformers' "
      "looped LM)");
  TORCH_CHECK_VALUE(!o.tie_embedding() || emb_dim_ == dim,
                    "TransformerWrapper: tie_embedding needs emb_dim == dim (", dim, "), got ", emb_dim_);
  if (!o.attn_pool()) return;
  // x-transformers' AttentionPool(dim_pooled, dim_context=dim, heads, dim_head) of the stack's heads: one
  // attention, or a CrossAttender when deeper.
  const auto& stack = layers_.options();
  const int64_t heads = stack.heads(), dim_head = stack.attn().dim_head();
  if (o.attn_pool_depth() == 1) {
    TORCH_CHECK_VALUE(
        heads > 1 || dim_head == dim_pooled(),
        "TransformerWrapper: attn_pool with one head needs attn_dim_head == dim_pooled_tokens (",
        dim_pooled(), "), got ", dim_head);
    return;
  }
  AttentionLayersOptions pooler(dim_pooled(), o.attn_pool_depth(), heads);
  pooler.cross_attend(true).only_cross(true);
  pooler.attn().dim_head(dim_head);
  pooler.cross_attn().dim_head(dim_head).dim_context(dim);
  pool_layers_options_ = pooler;
}

void TransformerWrapperPlan::set_layout(std::vector<ParameterSpec> layout) {
  TORCH_INTERNAL_ASSERT(parameters_.empty(), "TransformerWrapperPlan: layout set twice");
  parameters_ = std::move(layout);
  layers_offset_ = detail::layout_offset("TransformerWrapper", parameters_, "attn_layers.");
  if (!options_.attn_pool()) return;
  pool_offset_ = detail::layout_offset("TransformerWrapper", parameters_, "attn_pool.pooler.");
  if (pool_layers_options_.has_value())
    pool_layers_.emplace(*pool_layers_options_, detail::sublayout(parameters_, "attn_pool.pooler."));
}

namespace {

// The learned queries through the pooler over x (b, n, dim) with its key mask.
at::Tensor attn_pool_tokens(const at::Tensor& x, const std::optional<at::Tensor>& key_mask,
                            at::TensorList params, const TransformerWrapperPlan& plan, bool training) {
  const auto get = [&](const std::string& name) {
    return detail::find_tensor("TransformerWrapper", plan.parameters(), params, name);
  };
  const auto queries = get("attn_pool.queries");
  const auto q =
      queries.unsqueeze(0).expand_symint({x.sym_size(0), queries.sym_size(0), queries.sym_size(1)});
  if (plan.pool_layers().has_value()) {
    AttentionLayersInputs inputs;
    inputs.context = x;
    inputs.context_mask = key_mask;
    return attention_layers(q, inputs,
                            params.slice(plan.pool_offset(), plan.pool_layers()->parameters().size()),
                            *plan.pool_layers(), training);
  }
  const auto& stack = plan.layers().options();
  const int64_t heads = stack.heads(), dim_head = stack.attn().dim_head();
  AttentionWeights w;
  w.to_q = get("attn_pool.pooler.to_q.weight");
  w.to_k = get("attn_pool.pooler.to_k.weight");
  w.to_v = get("attn_pool.pooler.to_v.weight");
  w.to_out = get("attn_pool.pooler.to_out.weight");  // undefined with one head
  AttentionConfig config{};
  config.heads = config.kv_heads = heads;
  config.dim_head = config.value_dim_head = dim_head;
  config.options.dim_head(dim_head).dim_context(stack.dim());
  return attention(q, x, std::nullopt, key_mask, w, config, training);
}

}  // namespace

at::Tensor transformer_wrapper_attn_pool(const at::Tensor& embeddings, const std::optional<at::Tensor>& mask,
                                         const ExtraEmbeddings& extra, at::TensorList params,
                                         const TransformerWrapperPlan& plan, bool training) {
  TORCH_CHECK_VALUE(plan.options().attn_pool(),
                    "TransformerWrapper: attn_pool is off, so there is no pooler");
  TORCH_CHECK_VALUE(params.size() == plan.parameters().size(), "TransformerWrapper: expected ",
                    plan.parameters().size(), " parameters for these options, got ", params.size());
  const int64_t dim = plan.layers().options().dim();
  TORCH_CHECK_VALUE(embeddings.dim() == 3 && embeddings.sym_size(-1) == dim,
                    "TransformerWrapper: expected embeddings of shape (b, n, ", dim, "), got ",
                    embeddings.sym_sizes());
  const c10::SymInt prepended = extra.prepend_embeds.has_value() ? extra.prepend_embeds->sym_size(1) : 0;
  const auto key_mask =
      detail::mask_with_prepend("TransformerWrapper", mask, extra.prepend_embeds, extra.prepend_mask,
                                embeddings.sym_size(0), embeddings.sym_size(1) - prepended, embeddings);
  if (key_mask.has_value())
    TORCH_CHECK_VALUE(key_mask->dim() == 2 && key_mask->sym_size(1) == embeddings.sym_size(1),
                      "TransformerWrapper: expected the mask to cover the ", embeddings.sym_size(1),
                      " embeddings (prepended ones included), got ", key_mask->sym_sizes());
  return attn_pool_tokens(embeddings, key_mask, params, plan, training);
}

at::Tensor transformer_wrapper_logits(const at::Tensor& x, at::TensorList params,
                                      const TransformerWrapperPlan& plan) {
  const auto& o = plan.options();
  TORCH_CHECK_VALUE(plan.has_logits(), "TransformerWrapper: return_only_embed has no logits");
  TORCH_CHECK_VALUE(params.size() == plan.parameters().size(), "TransformerWrapper: expected ",
                    plan.parameters().size(), " parameters for these options, got ", params.size());
  const int64_t dim = plan.layers().options().dim();
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.sym_size(-1) == dim,
                    "TransformerWrapper: expected embeddings of width ", dim, ", got ", x.sym_sizes());
  const auto get = [&](const std::string& name) {
    return detail::find_tensor("TransformerWrapper", plan.parameters(), params, name);
  };
  const double tied_scale = o.tie_embedding_scale().value_or(1.0 / std::sqrt(static_cast<double>(dim)));
  // Mixture of softmaxes: the embedding expanded to k, and the mixture weights from it.
  at::Tensor h = x, mixture;
  if (o.mixture_of_softmax()) {
    mixture = at::softmax(at::linear(x, get("combine_mixture.weight")), -1);
    h = at::linear(x, get("to_mixture.0.weight")).unflatten(-1, {o.mixture_of_softmax_k(), dim});
  }
  at::Tensor logits;
  if (o.tie_embedding()) {
    logits = at::matmul(h, get("token_emb.emb.weight").t()) * tied_scale;
  } else if (o.num_output_heads() == 1) {
    logits = at::linear(h, get("to_logits.weight"));
  } else {
    std::vector<at::Tensor> heads;
    for (int64_t i = 0; i < o.num_output_heads(); ++i)
      heads.push_back(at::linear(h, get("to_logits." + std::to_string(i) + ".weight")));
    logits = at::stack(heads);
  }
  if (o.sigsoftmax_logits()) logits = logits + at::sigmoid(logits).log();
  // The mixture's log-probabilities: its weighted softmaxes, log clamped at 1e-20 as x-transformers'.
  if (mixture.defined()) logits = (logits.softmax(-1) * mixture.unsqueeze(-1)).sum(-2).clamp_min(1e-20).log();
  return o.squeeze_out_last_dim() && logits.sym_size(-1) == 1 ? logits.squeeze(-1) : logits;
}

namespace {

// The ids against num_tokens (in the graph when traced), or the external token_emb's output against them.
void check_tokens(const at::Tensor& tokens, const TransformerWrapperOptions& o,
                  const ExtraEmbeddings& extra) {
  TORCH_CHECK_VALUE(tokens.dim() == 2 && !tokens.is_floating_point() && !tokens.is_complex(),
                    "TransformerWrapper: expected token ids of shape (batch, seq) and an integer dtype, got ",
                    tokens.sym_sizes(), " ", tokens.scalar_type());
  TORCH_CHECK_VALUE(extra.token_embeds.has_value() == o.external_token_emb(),
                    o.external_token_emb()
                        ? "TransformerWrapper: a token_emb module needs its embeddings passed in"
                        : "TransformerWrapper: token embeddings were passed in, but the wrapper "
                          "has its own token_emb");
  if (o.external_token_emb()) return;  // whatever the caller's module made of the ids
  if (tokens.key_set().has(c10::DispatchKey::Python)) {
    // Traced (fake tensors under torch.export / torch.compile): no ids to read; the check runs in the graph.
    at::_assert_async(
        tokens.ge(0).logical_and(tokens.lt(o.num_tokens())).all(),
        "TransformerWrapper: expected token ids in [0, " + std::to_string(o.num_tokens()) + ")");
  } else if (tokens.sym_numel() > 0) {
    const int64_t low = tokens.min().item<int64_t>(), high = tokens.max().item<int64_t>();
    TORCH_CHECK_VALUE(low >= 0 && high < o.num_tokens(), "TransformerWrapper: expected token ids in [0, ",
                      o.num_tokens(), "), got ids from ", low, " to ", high);
  }
}

// The tokens' embeddings: the wrapper's token_emb (l2-normed with l2norm_embed) or the external module's.
at::Tensor token_embeddings(const at::Tensor& tokens, const TransformerWrapperPlan& plan,
                            const TensorByName& get, const ExtraEmbeddings& extra) {
  if (!plan.options().external_token_emb()) {
    const auto x = at::embedding(get("token_emb.emb.weight"), tokens.to(at::kLong));
    return plan.options().l2norm_embed() ? detail::l2norm(x) : x;
  }
  const auto& x = *extra.token_embeds;
  const c10::SymInt n = tokens.sym_size(1);
  TORCH_CHECK_VALUE(x.dim() == 3 && x.sym_size(0) == tokens.sym_size(0) && x.sym_size(1) == n &&
                        x.sym_size(2) == plan.emb_dim() && x.is_floating_point() &&
                        x.device() == tokens.device(),
                    "TransformerWrapper: expected the token_emb module's output of shape (",
                    tokens.sym_size(0), ", ", n, ", ", plan.emb_dim(),
                    ") and a float dtype on the tokens' device, got ", x.sym_sizes(), " ", x.scalar_type());
  return x;
}

// The absolute position embedding (learned or scaled sinusoidal), at x-transformers' positions: custom pos,
// left padding, and after the cached ones with input_not_include_cache (its seq_pos_offset).
at::Tensor with_positions(at::Tensor x, const TransformerWrapperPlan& plan, const TensorByName& get,
                          const AttentionLayersInputs& given, const WrapperCache& cache) {
  const auto& o = plan.options();
  if (!plan.has_abs_pos_emb()) return x;
  const c10::SymInt n = x.sym_size(1);
  const int64_t offset = cache.input_not_include_cache ? cache.cached_length() : 0;
  const c10::SymInt end = detail::positions_end(n, offset, x.device());
  TORCH_CHECK_VALUE(end <= o.max_seq_len() || o.scaled_sinu_pos_emb(),
                    "TransformerWrapper: expected at most max_seq_len (", o.max_seq_len(),
                    ") positions, got ", end);
  const auto positions =
      detail::wrapper_positions("TransformerWrapper", n, given, x, !o.scaled_sinu_pos_emb(), offset);
  return x + (o.scaled_sinu_pos_emb()
                  ? detail::scaled_sinusoidal_positions(get("pos_emb.scale"), positions, plan.emb_dim(), x)
                  : detail::absolute_positions(get("pos_emb.emb.weight"), positions, o.l2norm_embed()));
}

// embed_num_tokens' embeddings of their ids, added in the option's order.
at::Tensor with_extra_embeddings(at::Tensor x, const TransformerWrapperPlan& plan, const TensorByName& get,
                                 const ExtraEmbeddings& extra, const at::Tensor& tokens) {
  const auto names = plan.options().extra_embeddings();
  TORCH_CHECK_VALUE(extra.embed_ids.size() == names.size(), "TransformerWrapper: expected embed_ids for the ",
                    names.size(), " embed_num_tokens tables, got ", extra.embed_ids.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const auto& ids = extra.embed_ids[i];
    const auto& [name, count] = names[i];
    TORCH_CHECK_VALUE(ids.sym_sizes() == tokens.sym_sizes() && !ids.is_floating_point() && !ids.is_complex(),
                      "TransformerWrapper: expected embed_ids '", name, "' of the tokens' shape ",
                      tokens.sym_sizes(), " and an integer dtype, got ", ids.sym_sizes(), " ",
                      ids.scalar_type());
    if (!ids.key_set().has(c10::DispatchKey::Python) && ids.sym_numel() > 0)
      TORCH_CHECK_VALUE(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < count,
                        "TransformerWrapper: expected embed_ids '", name, "' in [0, ", count, ")");
    x = x + at::embedding(get("embeds." + name + "_embed.weight"), ids.to(at::kLong));
  }
  return x;
}

// PaLI-style prefix embeddings in front; returns how many (the mask, when given, covers them too).
c10::SymInt prepend_embeddings(at::Tensor& x, const TransformerWrapperPlan& plan,
                               const ExtraEmbeddings& extra, const WrapperCache& cache) {
  if (!extra.prepend_embeds.has_value()) return 0;
  const auto& front = *extra.prepend_embeds;
  detail::check_prepend_embeds("TransformerWrapper", front, x);
  TORCH_CHECK_VALUE(!plan.options().average_pool_embed(),
                    "TransformerWrapper: prepend_embeds cannot be combined with average_pool_embed");
  // With a cache the prefix goes in front of the whole sequence so far, as x-transformers' (its keys cached).
  TORCH_CHECK_VALUE(cache.kv.empty() || !cache.input_not_include_cache,
                    "TransformerWrapper: prepend_embeds with a cache needs the whole sequence so far "
                    "(input_not_include_cache off): the prefix leads it");
  x = at::cat({front, x}, 1);
  return front.sym_size(1);
}

// x-transformers' interspersed memory tokens: x (b, n, d) zero-padded to chunks of `every`, the memory tokens
// in front of each chunk; and back, the first n tokens.
at::Tensor intersperse_memory(const at::Tensor& x, const at::Tensor& memory_tokens, int64_t every) {
  const int64_t b = xtc::detail::static_size(x, 0), n = xtc::detail::static_size(x, 1);
  const int64_t chunks = (n + every - 1) / every, memory = memory_tokens.size(0);
  const auto chunked =
      at::constant_pad_nd(x, {0, 0, 0, chunks * every - n}).view({b * chunks, every, x.size(2)});
  const auto with_memory =
      at::cat({memory_tokens.unsqueeze(0).expand({b * chunks, memory, x.size(2)}), chunked}, 1);
  return with_memory.view({b, chunks * (memory + every), x.size(2)});
}

at::Tensor without_interspersed_memory(const at::Tensor& x, int64_t memory, int64_t every, int64_t n) {
  const int64_t b = xtc::detail::static_size(x, 0), d = xtc::detail::static_size(x, 2);
  const auto chunks = x.view({-1, memory + every, d}).narrow(1, memory, every);
  return chunks.reshape({b, -1, d}).narrow(1, 0, n);
}

// The embeddings before the prefix: the tokens' at their positions, embed_num_tokens' and sum_embeds added,
// then post_emb_norm.
at::Tensor input_embeddings(const at::Tensor& tokens, const AttentionLayersInputs& given,
                            const TransformerWrapperPlan& plan, const TensorByName& get,
                            const ExtraEmbeddings& extra, const WrapperCache& cache) {
  at::Tensor x = with_positions(token_embeddings(tokens, plan, get, extra), plan, get, given, cache);
  x = detail::add_sum_embeds("TransformerWrapper", with_extra_embeddings(x, plan, get, extra, tokens),
                             extra.sum_embeds);
  if (plan.options().post_emb_norm()) x = layer_norm(x, get("post_emb_norm.gamma"), /*unit_offset=*/false);
  return x;
}

// The memory tokens in front of x (the mask keeps them), or of each chunk (interspersed); returns what takes
// them off the stack's output (the first `kept` positions after them).
std::function<at::Tensor(const at::Tensor&)> add_memory_tokens(at::Tensor& x, std::optional<at::Tensor>& mask,
                                                               const TransformerWrapperPlan& plan,
                                                               const TensorByName& get,
                                                               const c10::SymInt& kept, bool prepended) {
  const int64_t memory = plan.options().num_memory_tokens();
  const auto every = plan.options().memory_tokens_interspersed_every();
  if (every.has_value()) {
    // x-transformers pads neither a mask nor a prefix into the chunks (it fails there): refused.
    TORCH_CHECK_VALUE(plan.layers().options().causal() && !mask.has_value() && !prepended,
                      "TransformerWrapper: memory_tokens_interspersed_every needs a Decoder, and no mask or "
                      "prepend_embeds");
    // Interspersing pads to whole chunks, a static length (x-transformers' rearranges need one too).
    const int64_t n = xtc::detail::static_size(x, 1);
    x = intersperse_memory(x, get("memory_tokens"), *every);
    return [=](const at::Tensor& y) { return without_interspersed_memory(y, memory, *every, n); };
  }
  if (memory == 0) return [](const at::Tensor& y) { return y; };
  detail::prepend_memory(x, mask, get("memory_tokens"));
  return [=](const at::Tensor& y) { return y.narrow_symint(1, memory, kept); };
}

// RWKV-8's deep embeddings: each token's (depth, dim) row of ff_deep_embed, one (b, n, dim) scale per
// feed-forward in turn.
void add_deep_embeds(AttentionLayersInputs& inputs, const at::Tensor& tokens,
                     const TransformerWrapperPlan& plan, const TensorByName& get,
                     const ExtraEmbeddings& extra, const at::Tensor& x) {
  if (!plan.options().ff_deep_embed()) return;
  TORCH_CHECK_VALUE(!extra.prepend_embeds.has_value(),
                    "TransformerWrapper: ff_deep_embed scales the tokens' positions, so it clashes with "
                    "prepend_embeds");
  TORCH_CHECK_VALUE(inputs.ff_output_scales.empty(),
                    "TransformerWrapper: ff_deep_embed gives the stack its deep embeddings, so pass none "
                    "(deep_embeds_and_ids / ff_output_scales)");
  const auto table = get("ff_deep_embed");  // (num_tokens, depth, dim)
  const auto rows = at::embedding(table.flatten(1), tokens.to(at::kLong));
  inputs.ff_output_scales = rows.unflatten(-1, {table.size(1), table.size(2)}).to(x.scalar_type()).unbind(2);
}

// The stack (with recycling or looped runs), on the embeddings and memory tokens x.
at::Tensor run_layers(const at::Tensor& x, const AttentionLayersInputs& inputs, at::TensorList params,
                      const TransformerWrapperPlan& plan, const TensorByName& get, bool training,
                      const WrapperRecurrence& recurrence, bool prompt, AttentionLayersHiddens* record,
                      TransformerWrapperRecord* wrapper_record) {
  const auto layer_params = params.slice(plan.layers_offset(), plan.layers().parameters().size());
  const detail::RunStack run = [&](const at::Tensor& input, const AttentionLayersInputs& step_inputs,
                                   AttentionLayersHiddens* step_record) {
    return attention_layers(input, step_inputs, layer_params, plan.layers(), training, step_record);
  };
  const auto& o = plan.options();
  const at::Tensor weight = o.recycling() ? get("recycled_proj.weight")
                            : o.looped()  ? get("exit_gate.weight")
                                          : at::Tensor();
  return detail::recurrent_depth(x, run, inputs, plan, weight, training, recurrence, prompt, record,
                                 wrapper_record);
}

// x-transformers' continuous prediction head: linear, SiLU, linear.
at::Tensor next_embed_prediction(const at::Tensor& x, const TensorByName& get) {
  return at::linear(at::silu(at::linear(x, get("to_next_embed_pred.0.weight"))),
                    get("to_next_embed_pred.2.weight"));
}

}  // namespace

at::Tensor transformer_wrapper(const at::Tensor& tokens, const AttentionLayersInputs& given,
                               at::TensorList params, const TransformerWrapperPlan& plan, bool training,
                               bool return_embeddings, const WrapperCache& cache,
                               AttentionLayersHiddens* record, const ExtraEmbeddings& extra,
                               const WrapperRecurrence& recurrence,
                               TransformerWrapperRecord* wrapper_record) {
  const auto& o = plan.options();
  check_tokens(tokens, o, extra);
  detail::refuse_when_sharded("TransformerWrapper", {{"num_memory_tokens", o.num_memory_tokens() > 0},
                                                     {"use_cls_token", o.use_cls_token()},
                                                     {"average_pool_embed", o.average_pool_embed()},
                                                     {"attn_pool", o.attn_pool()},
                                                     {"prepend_embeds", extra.prepend_embeds.has_value()}});
  TORCH_CHECK_VALUE(params.size() == plan.parameters().size(), "TransformerWrapper: expected ",
                    plan.parameters().size(), " parameters for these options, got ", params.size());
  const TensorByName get = [&](const std::string& name) {
    return detail::find_tensor("TransformerWrapper", plan.parameters(), params, name);
  };
  // The length as a SymInt: torch.export and torch.compile keep it symbolic.
  const c10::SymInt n = tokens.sym_size(1);
  at::Tensor x = input_embeddings(tokens, given, plan, get, extra, cache);
  const c10::SymInt prepended = prepend_embeddings(x, plan, extra, cache);
  std::optional<at::Tensor> layer_mask = detail::mask_with_prepend(
      "TransformerWrapper", given.mask, extra.prepend_embeds, extra.prepend_mask, x.sym_size(0), n, x);
  if (o.emb_frac_gradient() < 1) x = x * o.emb_frac_gradient() + x.detach() * (1 - o.emb_frac_gradient());
  if (wrapper_record != nullptr) wrapper_record->initial_embeds = x;
  const std::optional<at::Tensor> pool_mask =
      layer_mask;  // the attention pool's: over what the wrapper returns
  if (training && o.emb_dropout() > 0) x = at::dropout(x, o.emb_dropout(), training);
  if (plan.emb_dim() != plan.layers().options().dim())
    x = at::linear(x, get("project_emb.weight"), get("project_emb.bias"));
  // [CLS] tokens, then memory tokens, in front (x-transformers' order); the mask keeps both.
  const int64_t cls = o.use_cls_token() ? o.num_cls_tokens() : 0;
  if (cls > 0) detail::prepend_memory(x, layer_mask, get("cls_token"));
  const int64_t memory = o.num_memory_tokens();
  const auto without_memory =
      add_memory_tokens(x, layer_mask, plan, get, cls + prepended + n, extra.prepend_embeds.has_value());
  // As x-transformers, the stack also gets pos and seq_start_pos.
  auto inputs = detail::stack_inputs("TransformerWrapper", given, layer_mask, cache, prepended + n,
                                     memory > 0 || cls > 0, o.average_pool_embed() || cls > 0);
  add_deep_embeds(inputs, tokens, plan, get, extra, x);
  // Looped inference of a prompt: several tokens and no cache (x-transformers keeps each step's keys then).
  const bool prompt = recurrence.looped_inference && cache.kv.empty() && n.guard_int(__FILE__, __LINE__) > 1;
  x = without_memory(
      run_layers(x, inputs, params, plan, get, training, recurrence, prompt, record, wrapper_record));
  if (o.average_pool_embed()) x = detail::masked_mean(x, given.mask);
  if (cls > 0) x = cls == 1 ? x.select(1, 0) : x.narrow(1, 0, cls);
  if (wrapper_record != nullptr && o.add_continuous_pred_head())
    wrapper_record->next_embed_pred = next_embed_prediction(x, get);
  // An encoder's output is then the pooled tokens, as x-transformers'.
  if (o.attn_pool() && !plan.layers().options().causal() && !return_embeddings)
    return attn_pool_tokens(x, pool_mask, params, plan, training);
  if (return_embeddings || !plan.has_logits()) return x;
  return transformer_wrapper_logits(x, params, plan);
}

}  // namespace xtc::nn::functional
