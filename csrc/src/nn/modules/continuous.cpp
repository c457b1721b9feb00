#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/torch_layers.h>

#include <cmath>

namespace xtc::nn {

ContinuousTransformerWrapperImpl::ContinuousTransformerWrapperImpl(
    ContinuousTransformerWrapperOptions options, AttentionLayers attn_layers)
    : options(std::move(options)), attn_layers(std::move(attn_layers)) {
  reset();
}

void ContinuousTransformerWrapperImpl::reset() {
  auto built = std::make_shared<functional::ContinuousTransformerPlan>(options, *attn_layers->plan);
  const int64_t dim = attn_layers->options.dim();
  // Registration in x-transformers' order: own parameter first, then children.
  if (options.num_memory_tokens() > 0)
    register_parameter("memory_tokens", module_tensor({options.num_memory_tokens(), dim}).normal_());
  if (built->has_abs_pos_emb()) {
    auto pos_emb = std::make_shared<torch::nn::Module>("AbsolutePositionalEmbedding");
    if (options.scaled_sinu_pos_emb()) {
      pos_emb->register_parameter("scale",
                                  module_tensor({1}).fill_(1).div_(std::sqrt(static_cast<double>(dim))));
    } else {
      pos_emb->register_module("emb", Embedding(*options.max_seq_len(), dim));
    }
    register_module("pos_emb", pos_emb);
  }
  if (options.post_emb_norm()) register_module("post_emb_norm", LayerNorm(dim, /*unit_offset=*/false));
  register_module("attn_layers", attn_layers);
  const auto no_bias = [](int64_t in, int64_t out) { return torch::nn::LinearOptions(in, out).bias(false); };
  if (built->has_project_in()) register_module("project_in", Linear(no_bias(*options.dim_in(), dim)));
  if (built->has_project_out())
    register_module("project_out",
                    Linear(no_bias(dim, *options.dim_out() * (options.probabilistic() ? 2 : 1))));
  built->set_layout(layout_of(*this));
  plan = std::move(built);
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
