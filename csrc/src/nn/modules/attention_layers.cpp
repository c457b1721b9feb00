#include <xtc/nn/modules/attention.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/feedforward.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/residual.h>

namespace xtc::nn {
namespace {

std::shared_ptr<torch::nn::Module> make_norm(const AttentionLayersOptions& o) {
  const bool offset = o.norm_add_unit_offset();
  switch (o.norm_kind()) {
    case NormKind::LayerNorm: return LayerNorm(o.dim(), offset).ptr();
    case NormKind::RMSNorm: return RMSNorm(o.dim(), offset).ptr();
    case NormKind::ScaleNorm: return ScaleNorm(o.dim(), offset).ptr();
    case NormKind::SimpleRMSNorm: return SimpleRMSNorm(o.dim()).ptr();
  }
  TORCH_INTERNAL_ASSERT(false, "unknown norm kind");
}

// x-transformers' norms ModuleList keeps None slots, so its children are named by slot: 0 pre, 1 sandwich, 2 post.
std::shared_ptr<torch::nn::Module> make_norm_slots(const AttentionLayersOptions& o) {
  auto slots = std::make_shared<torch::nn::Module>("NormSlots");
  if (o.pre_norm()) slots->register_module("0", make_norm(o));
  if (o.sandwich_norm()) slots->register_module("1", make_norm(o));
  if (!o.pre_norm()) slots->register_module("2", make_norm(o));
  return slots;
}

std::shared_ptr<torch::nn::Module> make_block(char type, const AttentionLayersOptions& o) {
  std::shared_ptr<torch::nn::Module> block;
  if (type == 'f') {
    auto ff = o.ff();
    ff.zero_init_output(ff.zero_init_output() || o.zero_init_branch_output());
    block = FeedForward(o.dim(), ff).ptr();
    if (o.macaron()) block = Scale(0.5, block).ptr();
  } else {
    auto attn = type == 'a' ? o.attn() : o.cross_attn();
    attn.zero_init_output(attn.zero_init_output() || o.zero_init_branch_output());
    block = Attention(o.dim(), o.heads(), attn, type == 'a' && o.causal()).ptr();
  }
  if (o.use_layerscale())
    block = LayerScale(block, o.dim(), o.layerscale_init_value(), o.norm_add_unit_offset()).ptr();
  return block;
}

std::shared_ptr<torch::nn::Module> make_residual(const AttentionLayersOptions& o) {
  if (o.residual_kind() == ResidualKind::GRUGating) return GRUGating(o.dim(), o.scale_residual()).ptr();
  return Residual(o.dim(), o.scale_residual(), o.scale_residual_constant()).ptr();
}

}  // namespace

AttentionLayersImpl::AttentionLayersImpl(AttentionLayersOptions options) : options(std::move(options)) { reset(); }

void AttentionLayersImpl::reset() {
  plan = std::make_shared<const functional::AttentionLayersPlan>(options);
  layers = register_module("layers", torch::nn::ModuleList());
  for (const char type : plan->layer_types()) {
    torch::nn::ModuleList layer;
    layer->push_back(make_norm_slots(options));
    layer->push_back(make_block(type, options));
    layer->push_back(make_residual(options));
    layers->push_back(layer);
  }
  if (options.has_final_norm()) final_norm = register_module("final_norm", make_norm(options));
  // The functional math reads parameters by the plan's layout: the module must produce exactly that layout.
  const auto params = named_parameters();
  const auto& specs = plan->parameters();
  TORCH_INTERNAL_ASSERT(params.size() == specs.size(), "AttentionLayers: module has ", params.size(),
                        " parameters, layout ", specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    TORCH_INTERNAL_ASSERT(params[i].key() == specs[i].name && params[i].value().sizes() == specs[i].shape,
                          "AttentionLayers: module parameter ", params[i].key(), " ", params[i].value().sizes(),
                          " differs from layout ", specs[i].name, " ", c10::IntArrayRef(specs[i].shape));
  }
}

void AttentionLayersImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::AttentionLayers(dim=" << options.dim() << ", depth=" << options.depth()
         << ", heads=" << options.heads() << (options.causal() ? ", causal=true" : "") << ")";
}

at::Tensor AttentionLayersImpl::forward(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& context,
                                        const at::Tensor& context_mask) {
  const auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
  return functional::attention_layers(x, optional(mask), optional(context), optional(context_mask), parameters(),
                                      *plan, is_training());
}

EncoderImpl::EncoderImpl(AttentionLayersOptions options)
    : AttentionLayersImpl([&] {
        TORCH_CHECK_VALUE(!options.causal(), "Encoder: cannot set causality on an Encoder; use Decoder");
        return options;
      }()) {}

DecoderImpl::DecoderImpl(AttentionLayersOptions options) : AttentionLayersImpl(options.causal(true)) {}

CrossAttenderImpl::CrossAttenderImpl(AttentionLayersOptions options)
    : AttentionLayersImpl(options.cross_attend(true).only_cross(true)) {}

}  // namespace xtc::nn
