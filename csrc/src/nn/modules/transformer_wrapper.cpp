#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/transformer_wrapper.h>

#include <cmath>

namespace xtc::nn {

TransformerWrapperImpl::TransformerWrapperImpl(TransformerWrapperOptions options, AttentionLayers attn_layers)
    : options(std::move(options)), attn_layers(std::move(attn_layers)) {
  reset();
}

void TransformerWrapperImpl::reset() {
  plan = std::make_shared<const functional::TransformerWrapperPlan>(options, attn_layers->options);
  const int64_t dim = attn_layers->options.dim(), emb_dim = plan->emb_dim();
  if (options.use_cls_token())
    register_parameter("cls_token", at::randn({options.num_cls_tokens(), dim}) * 0.02);
  if (options.num_memory_tokens() > 0)
    register_parameter("memory_tokens", at::randn({options.num_memory_tokens(), dim}));
  // x-transformers' init_: kaiming-normal token embeddings, or tiny ones (std 1e-5) with l2norm_embed.
  if (!options.external_token_emb()) {
    auto token_emb = std::make_shared<torch::nn::Module>("TokenEmbedding");
    torch::nn::Embedding table(options.num_tokens(), emb_dim);
    if (options.l2norm_embed())
      torch::nn::init::normal_(table->weight, 0.0, 1e-5);
    else
      torch::nn::init::kaiming_normal_(table->weight);
    token_emb->register_module("emb", table);
    register_module("token_emb", token_emb);
  }
  if (plan->has_abs_pos_emb()) {
    auto pos_emb = std::make_shared<torch::nn::Module>("AbsolutePositionalEmbedding");
    if (options.scaled_sinu_pos_emb()) {
      pos_emb->register_parameter("scale", at::ones({1}) / std::sqrt(static_cast<double>(emb_dim)));
    } else {
      torch::nn::Embedding positions(options.max_seq_len(), emb_dim);
      if (options.l2norm_embed()) torch::nn::init::normal_(positions->weight, 0.0, 1e-5);
      pos_emb->register_module("emb", positions);
    }
    register_module("pos_emb", pos_emb);
  }
  if (options.post_emb_norm()) register_module("post_emb_norm", LayerNorm(emb_dim, /*unit_offset=*/false));
  if (emb_dim != dim) register_module("project_emb", torch::nn::Linear(emb_dim, dim));
  register_module("attn_layers", attn_layers);
  if (options.attn_pool()) {
    // x-transformers' AttentionPool: learned queries, then one attention or a CrossAttender.
    auto attn_pool = std::make_shared<torch::nn::Module>("AttentionPool");
    const auto& stack = attn_layers->options;
    const int64_t pooled = plan->dim_pooled(), inner = stack.heads() * stack.attn().dim_head();
    attn_pool->register_parameter("queries", at::randn({options.num_pooled_tokens(), pooled}) * 1e-2);
    if (plan->pool_layers().has_value()) {
      attn_pool->register_module("pooler", CrossAttender(plan->pool_layers()->options()));
    } else {
      auto pooler = std::make_shared<torch::nn::Module>("Attention");
      const auto linear = [](int64_t in, int64_t out) {
        return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
      };
      pooler->register_module("to_q", linear(pooled, inner));
      pooler->register_module("to_k", linear(dim, inner));
      pooler->register_module("to_v", linear(dim, inner));
      if (stack.heads() > 1) pooler->register_module("to_out", linear(inner, pooled));
      attn_pool->register_module("pooler", pooler);
    }
    register_module("attn_pool", attn_pool);
  }
  if (!options.return_only_embed() && !options.tie_embedding())
    register_module(
        "to_logits",
        torch::nn::Linear(
            torch::nn::LinearOptions(dim, options.logits_dim().value_or(options.num_tokens())).bias(false)));
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
                                                bool return_embeddings) {
  return functional::transformer_wrapper(tokens, inputs, tensors(), *plan, is_training(), return_embeddings,
                                         {}, nullptr, extra);
}

}  // namespace xtc::nn
