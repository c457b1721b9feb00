#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/norm.h>

#include <cmath>

namespace xtc::nn {

ContinuousTransformerWrapperImpl::ContinuousTransformerWrapperImpl(
    ContinuousTransformerWrapperOptions options, AttentionLayers attn_layers)
    : options(std::move(options)), attn_layers(std::move(attn_layers)) {
  reset();
}

void ContinuousTransformerWrapperImpl::reset() {
  plan = std::make_shared<const functional::ContinuousTransformerPlan>(options, attn_layers->options);
  const int64_t dim = attn_layers->options.dim();
  // Registration in x-transformers' order: own parameter first, then children.
  if (options.num_memory_tokens() > 0)
    register_parameter("memory_tokens", at::randn({options.num_memory_tokens(), dim}));
  if (plan->has_abs_pos_emb()) {
    auto pos_emb = std::make_shared<torch::nn::Module>("AbsolutePositionalEmbedding");
    if (options.scaled_sinu_pos_emb()) {
      pos_emb->register_parameter("scale", at::ones({1}) / std::sqrt(static_cast<double>(dim)));
    } else {
      pos_emb->register_module("emb", torch::nn::Embedding(*options.max_seq_len(), dim));
    }
    register_module("pos_emb", pos_emb);
  }
  if (options.post_emb_norm()) register_module("post_emb_norm", LayerNorm(dim, /*unit_offset=*/false));
  register_module("attn_layers", attn_layers);
  const auto no_bias = [](int64_t in, int64_t out) { return torch::nn::LinearOptions(in, out).bias(false); };
  if (plan->has_project_in())
    register_module("project_in", torch::nn::Linear(no_bias(*options.dim_in(), dim)));
  if (plan->has_project_out())
    register_module("project_out",
                    torch::nn::Linear(no_bias(dim, *options.dim_out() * (options.probabilistic() ? 2 : 1))));
}

std::vector<at::Tensor> ContinuousTransformerWrapperImpl::tensors() const {
  return tensors_in_layout(*this, plan->parameters());
}

at::Tensor ContinuousTransformerWrapperImpl::forward(const at::Tensor& x, const at::Tensor& mask,
                                                     const at::Tensor& lens, bool return_embeddings) {
  const auto optional = [](const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  };
  functional::AttentionLayersInputs inputs;
  inputs.mask = optional(mask);
  return functional::continuous_transformer(x, inputs, optional(lens), tensors(), *plan, is_training(),
                                            return_embeddings);
}

}  // namespace xtc::nn
