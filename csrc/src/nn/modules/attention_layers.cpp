#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/modules/attention.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/feedforward.h>

namespace xtc::nn {

AttentionLayersImpl::AttentionLayersImpl(AttentionLayersOptions options) : options(std::move(options)) { reset(); }

void AttentionLayersImpl::reset() {
  options.validate();
  layers = register_module("layers", torch::nn::ModuleList());
  for (const char type : options.layer_types()) {
    // x-transformers' layer: ModuleList[norms, block, residual]; norms holds (pre, post-branch, post-main) slots and
    // the default pre-norm fills slot 0. The plain residual has no parameters.
    torch::nn::ModuleList norms, layer;
    norms->push_back(LayerNorm(options.dim()));
    layer->push_back(norms);
    if (type == 'a') {
      layer->push_back(Attention(options.dim(), options.heads(), options.attn(), options.causal()));
    } else {
      layer->push_back(FeedForward(options.dim(), options.ff()));
    }
    layers->push_back(layer);
  }
  final_norm = register_module("final_norm", LayerNorm(options.dim()));
}

void AttentionLayersImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::AttentionLayers(" << options.serialize() << ")";
}

at::Tensor AttentionLayersImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  return functional::attention_layers(x, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
                                      parameters(), options, is_training());
}

EncoderImpl::EncoderImpl(AttentionLayersOptions options)
    : AttentionLayersImpl([&] {
        TORCH_CHECK_VALUE(!options.causal(), "Encoder: cannot set causality on an Encoder; use Decoder");
        return options;
      }()) {}

DecoderImpl::DecoderImpl(AttentionLayersOptions options) : AttentionLayersImpl(options.causal(true)) {}

}  // namespace xtc::nn
