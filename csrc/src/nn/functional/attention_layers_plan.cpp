// AttentionLayersPlan: what a stack's options imply, worked out once per construction (and cached by the
// ops): the layer kinds and their execution order, each layer's block options and state_dict prefix, and
// ALiBi's slopes; beside them the parameter layout, which the module tree gives (xtc::nn::layout_of).
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/hybrid.h>
#include <xtc/nn/functional/positional.h>

#include <string>

namespace xtc::nn::functional {
namespace {

// Where the block of a layer sits: LayerScale adds `gamma` and a `.fn` level, ShiftTokens and macaron's Scale
// a `.fn` level each (x-transformers wraps layer -> Scale -> ShiftTokens -> LayerScale).
std::string layer_block_prefix(size_t index, char type, const AttentionLayersOptions& o) {
  std::string p = "layers." + std::to_string(index) + ".1.";
  if (o.scales_branch_output()) p += "fn.";
  if (o.use_layerscale() || o.use_adaptive_layerscale()) p += "fn.";
  if (o.layer_shift_tokens(index) > 0) p += "fn.";
  if (o.macaron() && type == 'f') p += "fn.";
  return p;
}

}  // namespace

AttentionLayersPlan::AttentionLayersPlan(AttentionLayersOptions options, std::vector<ParameterSpec> layout)
    : options_(std::move(options)), parameters_(std::move(layout)) {
  layer_types_ = options_.layer_types();
  execution_order_ = options_.execution_order();
  unet_skip_sources_ = options_.unet_skip_sources();
  for (size_t i = 0; i < layer_types_.size(); ++i) {
    const bool feed_forward = layer_types_[i] == 'f';
    layer_attention_.push_back(feed_forward ? options_.attn() : options_.layer_attention(i));
    layer_feed_forward_.push_back(feed_forward ? options_.layer_feed_forward(i) : options_.ff());
  }
  for (const int64_t i : execution_order_) {
    if (layer_types_[i] == 'f') continue;
    executed_attention_types_.push_back(layer_types_[i]);
    const auto& hybrid = layer_attention_[i].hybrid_module();
    executed_hybrid_states_.push_back(hybrid.has_value() &&
                                      !parse_recurrent_spec("hybrid_module", *hybrid).lstm);
  }
  for (size_t i = 0; i < layer_types_.size(); ++i)
    block_prefixes_.push_back(layer_block_prefix(i, layer_types_[i], options_));
  for (size_t i = 0; i < parameters_.size(); ++i)
    index_.emplace(parameters_[i].name, static_cast<int64_t>(i));
  if (options_.alibi_pos_bias()) {
    alibi_slopes_ = options_.alibi_slopes().empty()
                        ? geometric_alibi_slopes(options_.alibi_num_heads().value_or(options_.heads()))
                        : options_.alibi_slopes();
    alibi_slopes_.resize(options_.heads(), 0.0);  // heads past alibi_num_heads get no bias
  }
}

int64_t AttentionLayersPlan::index(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

}  // namespace xtc::nn::functional
