#include <torch/nn/init.h>
#include <torch/nn/modules/container/modulelist.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/torch_layers.h>
#include <xtc/nn/modules/transformer_wrapper.h>

#include <cmath>

namespace xtc::nn {
namespace {

Linear bias_free(int64_t in, int64_t out) { return Linear(torch::nn::LinearOptions(in, out).bias(false)); }

}  // namespace

TransformerWrapperImpl::TransformerWrapperImpl(TransformerWrapperOptions options, AttentionLayers attn_layers)
    : options(std::move(options)), attn_layers(std::move(attn_layers)) {
  reset();
}

void TransformerWrapperImpl::reset() {
  auto built = std::make_shared<functional::TransformerWrapperPlan>(options, *attn_layers->plan);
  const int64_t dim = attn_layers->options.dim(), emb_dim = built->emb_dim();
  if (options.ff_deep_embed())
    register_parameter("ff_deep_embed",
                       module_tensor({options.num_tokens(), attn_layers->options.depth(), dim}).fill_(1));
  if (options.use_cls_token())
    register_parameter("cls_token", module_tensor({options.num_cls_tokens(), dim}).normal_().mul_(0.02));
  if (options.num_memory_tokens() > 0)
    register_parameter("memory_tokens", module_tensor({options.num_memory_tokens(), dim}).normal_());
  // x-transformers' init_: kaiming-normal token embeddings, or tiny ones (std 1e-5) with l2norm_embed.
  if (!options.external_token_emb()) {
    auto token_emb = std::make_shared<torch::nn::Module>("TokenEmbedding");
    Embedding table(options.num_tokens(), emb_dim);
    if (options.l2norm_embed())
      torch::nn::init::normal_(table->weight, 0.0, 1e-5);
    else
      torch::nn::init::kaiming_normal_(table->weight);
    token_emb->register_module("emb", table);
    register_module("token_emb", token_emb);
  }
  if (built->has_abs_pos_emb()) {
    auto pos_emb = std::make_shared<torch::nn::Module>("AbsolutePositionalEmbedding");
    if (options.scaled_sinu_pos_emb()) {
      pos_emb->register_parameter("scale",
                                  module_tensor({1}).fill_(1).div_(std::sqrt(static_cast<double>(emb_dim))));
    } else {
      Embedding positions(options.max_seq_len(), emb_dim);
      if (options.l2norm_embed()) torch::nn::init::normal_(positions->weight, 0.0, 1e-5);
      pos_emb->register_module("emb", positions);
    }
    register_module("pos_emb", pos_emb);
  }
  if (const auto extra = options.extra_embeddings(); !extra.empty()) {
    auto embeds = std::make_shared<torch::nn::Module>("ModuleDict");
    for (const auto& [name, count] : extra)
      embeds->register_module(name + "_embed", Embedding(count, emb_dim));
    register_module("embeds", embeds);
  }
  if (options.post_emb_norm()) register_module("post_emb_norm", LayerNorm(emb_dim, /*unit_offset=*/false));
  if (emb_dim != dim) register_module("project_emb", Linear(emb_dim, dim));
  register_module("attn_layers", attn_layers);
  if (options.recycling()) register_module("recycled_proj", bias_free(dim, dim));
  if (options.looped()) register_module("exit_gate", bias_free(dim, 1));
  if (options.attn_pool()) {
    // x-transformers' AttentionPool: learned queries, then one attention or a CrossAttender.
    auto attn_pool = std::make_shared<torch::nn::Module>("AttentionPool");
    const auto& stack = attn_layers->options;
    const int64_t pooled = built->dim_pooled(), inner = stack.heads() * stack.attn().dim_head();
    attn_pool->register_parameter("queries",
                                  module_tensor({options.num_pooled_tokens(), pooled}).normal_().mul_(1e-2));
    if (built->pool_layers_options().has_value()) {
      attn_pool->register_module("pooler", CrossAttender(*built->pool_layers_options()));
    } else {
      auto pooler = std::make_shared<torch::nn::Module>("Attention");
      pooler->register_module("to_q", bias_free(pooled, inner));
      pooler->register_module("to_k", bias_free(dim, inner));
      pooler->register_module("to_v", bias_free(dim, inner));
      if (stack.heads() > 1) pooler->register_module("to_out", bias_free(inner, pooled));
      attn_pool->register_module("pooler", pooler);
    }
    register_module("attn_pool", attn_pool);
  }
  register_logits_heads(dim);
  if (options.add_continuous_pred_head()) {
    auto head = std::make_shared<torch::nn::Module>("Sequential");  // (Linear, SiLU, Linear)
    head->register_module("0", bias_free(dim, dim));
    head->register_module("2", bias_free(dim, dim));
    register_module("to_next_embed_pred", head);
  }
  built->set_layout(layout_of(*this));
  plan = std::move(built);
}

// Mixture of softmaxes' expansion and weights, then the logits head(s), in x-transformers' order (and draws).
void TransformerWrapperImpl::register_logits_heads(int64_t dim) {
  if (options.mixture_of_softmax()) {
    auto to_mixture = std::make_shared<torch::nn::Module>("Sequential");  // (Linear, Rearrange)
    to_mixture->register_module("0", bias_free(dim, dim * options.mixture_of_softmax_k()));
    register_module("to_mixture", to_mixture);
    register_module("combine_mixture", bias_free(dim, options.mixture_of_softmax_k()));
  }
  if (options.return_only_embed() || options.tie_embedding()) return;
  const int64_t logits_dim = options.logits_dim().value_or(options.num_tokens());
  if (options.num_output_heads() == 1) {
    register_module("to_logits", bias_free(dim, logits_dim));
    return;
  }
  torch::nn::ModuleList heads;
  for (int64_t i = 0; i < options.num_output_heads(); ++i) heads->push_back(bias_free(dim, logits_dim));
  register_module("to_logits", heads);
}

std::vector<at::Tensor> TransformerWrapperImpl::tensors() const {
  return tensors_in_layout(*this, plan->parameters());
}

at::Tensor TransformerWrapperImpl::forward(const at::Tensor& tokens, const at::Tensor& mask,
                                           bool return_embeddings) {
  functional::AttentionLayersInputs inputs;
  if (mask.defined()) inputs.mask = mask;
  return functional::transformer_wrapper(tokens, inputs, tensors(), *plan, is_training(), return_embeddings);
}

at::Tensor TransformerWrapperImpl::forward_with(const at::Tensor& tokens,
                                                const functional::AttentionLayersInputs& inputs,
                                                const functional::ExtraEmbeddings& extra,
                                                bool return_embeddings,
                                                const functional::WrapperRecurrence& recurrence) {
  return functional::transformer_wrapper(tokens, inputs, tensors(), *plan, is_training(), return_embeddings,
                                         {}, nullptr, extra, recurrence);
}

}  // namespace xtc::nn
