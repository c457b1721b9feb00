#include <torch/nn/modules/container/sequential.h>
#include <xtc/nn/modules/layer_integrators.h>

namespace xtc::nn {

DynamicLIMeImpl::DynamicLIMeImpl(int64_t dim, int64_t num_layers, int64_t views, bool use_softmax)
    : dim(dim), num_layers(num_layers), views(views), use_softmax(use_softmax) {
  reset();
}

void DynamicLIMeImpl::reset() {
  // x-transformers' Sequential(RMSNorm, Linear, Rearrange, Softmax | ReLU): the parameters sit at 0 and 1.
  norm = RMSNorm(dim, /*unit_offset=*/false);
  linear = Linear(dim, views * num_layers);
  register_module("to_weights", torch::nn::Sequential(norm, linear));
}

void DynamicLIMeImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::DynamicLIMe(dim=" << dim << ", num_layers=" << num_layers << ", views=" << views
         << (use_softmax ? "" : ", use_softmax=false") << ")";
}

functional::DynamicLIMeWeights DynamicLIMeImpl::weights() const {
  return {norm->g, linear->weight, linear->bias};
}

at::Tensor DynamicLIMeImpl::forward(const at::Tensor& x, at::TensorList hiddens) {
  return functional::dynamic_lime(x, hiddens, weights(), views, use_softmax);
}

AttentionResidualImpl::AttentionResidualImpl(int64_t dim, int64_t views, int64_t lora_rank,
                                             std::optional<std::string> lora_activation)
    : dim(dim), views(views), lora_rank(lora_rank), lora_activation(std::move(lora_activation)) {
  reset();
}

void AttentionResidualImpl::reset() {
  TORCH_CHECK_VALUE(lora_rank > 0 && lora_rank < dim,
                    "AttentionResidual: expected lora_rank in (0, dim=", dim, "), got ", lora_rank);
  to_keys = register_module("to_keys", TorchRMSNorm(dim));
  query_input_norm = TorchRMSNorm(dim);
  query_lora = LoRALinear(dim, dim * views, lora_rank, lora_activation);
  register_module("to_query", torch::nn::Sequential(query_input_norm, query_lora));
  norm = register_module("norm", TorchRMSNorm(dim));
}

void AttentionResidualImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::AttentionResidual(dim=" << dim << ", views=" << views << ", lora_rank=" << lora_rank
         << ")";
}

functional::AttentionResidualWeights AttentionResidualImpl::weights() const {
  return {to_keys->weight, query_input_norm->weight, norm->weight, query_lora->down->weight,
          query_lora->up->weight};
}

at::Tensor AttentionResidualImpl::forward(at::TensorList hiddens) {
  return functional::attention_residual(hiddens, weights(), views, lora_activation);
}

}  // namespace xtc::nn
