#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <xtc/nn/modules/attention.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/feedforward.h>
#include <xtc/nn/modules/layer_integrators.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/positional.h>
#include <xtc/nn/modules/residual.h>

namespace xtc::nn {
namespace {

std::shared_ptr<torch::nn::Module> make_norm(const AttentionLayersOptions& o) {
  const bool offset = o.norm_add_unit_offset();
  switch (o.norm_kind()) {
    case NormKind::LayerNorm:
      return LayerNorm(o.dim(), offset).ptr();
    case NormKind::RMSNorm:
      return RMSNorm(o.dim(), offset).ptr();
    case NormKind::ScaleNorm:
      return ScaleNorm(o.dim(), offset).ptr();
    case NormKind::SimpleRMSNorm:
      return SimpleRMSNorm(o.dim()).ptr();
    case NormKind::DynamicTanh:
      return DynamicTanh(o.dim(), o.dynamic_tanh_init_alpha(), offset).ptr();
    case NormKind::Derf:
      return Derf(o.dim(), offset).ptr();
    case NormKind::AdaptiveLayerNorm:
    case NormKind::AdaptiveRMSNorm:
      return AdaptiveNorm(o.norm_kind(), o.dim(), o.conditioning_width()).ptr();
  }
  TORCH_INTERNAL_ASSERT(false, "unknown norm kind");
}

// x-transformers' norms ModuleList keeps None slots, so its children are named by slot: 0 pre, 1 sandwich, 2
// post.
std::shared_ptr<torch::nn::Module> make_norm_slots(const AttentionLayersOptions& o) {
  auto slots = std::make_shared<torch::nn::Module>("NormSlots");
  if (o.norms_branch_input()) slots->register_module("0", make_norm(o));
  if (o.sandwich_norm()) slots->register_module("1", make_norm(o));
  if (o.applies_post_norm()) slots->register_module("2", make_norm(o));
  return slots;
}

// depth_scale_residual: a block's output projection is initialised by its block's depth, from 1.
std::optional<int64_t> output_proj_depth(const AttentionLayersOptions& o, size_t index) {
  if (!o.depth_scale_residual()) return std::nullopt;
  return static_cast<int64_t>(index) / o.block_length() + 1;
}

std::shared_ptr<torch::nn::Module> make_block(char type, size_t index, const AttentionLayersOptions& o,
                                              bool learned_value_mix, int64_t shift) {
  std::shared_ptr<torch::nn::Module> block;
  if (type == 'f') {
    auto ff = o.layer_feed_forward(index);
    ff.zero_init_output(ff.zero_init_output() || o.zero_init_branch_output());
    ff.output_proj_depth(output_proj_depth(o, index));
    block = FeedForward(o.dim(), ff).ptr();
    if (o.macaron()) block = Scale(0.5, block).ptr();
  } else {
    auto attn = o.layer_attention(index);
    attn.zero_init_output(attn.zero_init_output() || o.zero_init_branch_output());
    attn.output_proj_depth(output_proj_depth(o, index));
    block = Attention(o.dim(), o.heads(), attn, type == 'a' && o.causal(), learned_value_mix).ptr();
  }
  if (shift > 0) block = ShiftTokens(shift, block).ptr();
  if (o.use_layerscale())
    block = LayerScale(block, o.dim(), o.layerscale_init_value(), o.norm_add_unit_offset()).ptr();
  if (o.use_adaptive_layerscale()) block = AdaptiveLayerScale(block, o.dim(), o.conditioning_width()).ptr();
  if (o.scales_branch_output()) block = Scale(*o.branch_output_scale(), block).ptr();
  return block;
}

// T5's bucket embedding, or the dynamic bias MLP, under x-transformers' names (`rel_pos.*`).
std::shared_ptr<torch::nn::Module> make_rel_pos(const AttentionLayersOptions& o) {
  if (o.rel_pos_bias()) return RelativePositionBias(o.heads(), o.rel_pos_num_buckets()).ptr();
  return DynamicPositionBias(o.dim(), o.heads(), o.dynamic_pos_bias_mlp_depth(), o.dynamic_pos_bias_norm())
      .ptr();
}

std::shared_ptr<torch::nn::Module> make_residual(const AttentionLayersOptions& o, size_t index) {
  const auto layer = static_cast<int64_t>(index);
  if (o.gated_multi_residual())
    return GatedMultiResidual(o.dim(), layer, o.num_residual_streams(),
                              *o.gated_multi_residual_read_gate_rank(), o.stream_read_views(index))
        .ptr();
  if (o.hyper_connections())
    return HyperConnection(o.dim(), layer, o.num_residual_streams(), o.stream_read_views(index),
                           o.hyper_conn_sinkhorn_iters())
        .ptr();
  if (o.residual_kind() == ResidualKind::GRUGating) return GRUGating(o.dim(), o.scale_residual()).ptr();
  if (o.residual_kind() == ResidualKind::Orthogonal)
    return OrthogonalResidualUpdate(o.dim(), o.scale_residual()).ptr();
  if (o.residual_kind() == ResidualKind::MVSplit)
    return MVSplitResidualUpdate(o.dim(), o.mv_split_residual_init_alpha(), o.mv_split_residual_init_beta(),
                                 o.mv_split_residual_learned())
        .ptr();
  return Residual(o.dim(), o.scale_residual(), o.scale_residual_constant()).ptr();
}

// x-transformers' layer integrator of layer `index`: DynamicLIMe over the layers up to it, or
// AttentionResidual.
std::shared_ptr<torch::nn::Module> make_layer_integrator(const AttentionLayersOptions& o, size_t index) {
  const int64_t views = o.layer_input_views(index);
  if (o.integrate_layers())
    return DynamicLIMe(o.dim(), static_cast<int64_t>(index) + 1, views, o.layer_integrate_use_softmax())
        .ptr();
  return AttentionResidual(o.dim(), views, o.aggregated_residual_lora_rank(),
                           o.aggregated_residual_lora_activation())
      .ptr();
}

}  // namespace

AttentionLayersImpl::AttentionLayersImpl(AttentionLayersOptions options) : options(std::move(options)) {
  reset();
}

// Each layer (norms, block, residual) with its layer integrator and U-Net combine, in x-transformers'
// construction (and draw) order.
void AttentionLayersImpl::register_layers(torch::nn::Module& combines) {
  bool first_self_attention = true;
  const auto types = options.layer_types();
  torch::nn::ModuleList integrators;
  const auto skip_sources = options.unet_skips() ? options.unet_skip_sources() : std::vector<int64_t>();
  for (size_t i = 0; i < types.size(); ++i) {
    const char type = types[i];
    // Self-attention layers after the first learn their value-residual mix (ResFormer).
    const bool learned_value_mix = type == 'a' && !first_self_attention && options.add_value_residual() &&
                                   options.learned_value_residual_mix();
    if (type == 'a') first_self_attention = false;
    torch::nn::ModuleList layer;
    layer->push_back(make_norm_slots(options));
    layer->push_back(make_block(type, i, options, learned_value_mix, options.layer_shift_tokens(i)));
    if (options.integrates_layers()) integrators->push_back(make_layer_integrator(options, i));
    layer->push_back(make_residual(options, i));
    layers->push_back(layer);
    // x-transformers' skip_combines: a ConcatCombine (a bias-less (2 dim -> dim) linear) at each second-half
    // block, drawn after its layer.
    if (options.unet_skips() && skip_sources[i] >= 0)
      combines.register_module(std::to_string(i), ConcatCombine(options.dim()));
  }
  if (options.integrates_layers()) register_module("layer_integrators", integrators);
}

void AttentionLayersImpl::reset() {
  options.validate();
  layers = register_module("layers", torch::nn::ModuleList());
  // x-transformers builds (and draws) its polar embedding before the layers, and registers it after them.
  const PolarEmbedding polar =
      options.polar_pos_emb()
          ? PolarEmbedding(options.attn().dim_head(), options.heads(), options.polar_bias_uniform_init())
          : nullptr;
  if (options.multi_stream())
    register_parameter("stream_emb", module_tensor({options.num_residual_streams(), options.dim()}).zero_());
  auto combines = std::make_shared<torch::nn::Module>("SkipCombines");  // x-transformers' ModuleDict
  register_layers(*combines);
  if (options.uses_rotary())
    rotary_pos_emb = register_module("rotary_pos_emb",
                                     RotaryEmbedding(options.resolved_rotary_dim(), options.rotary_xpos(),
                                                     options.rotary_base_rescale_factor()));
  if (polar) register_module("polar_pos_emb", polar);
  if (options.rel_pos_bias() || options.dynamic_pos_bias())
    rel_pos = register_module("rel_pos", make_rel_pos(options));
  if (options.needs_condition() && options.adaptive_condition_mlp()) {
    // x-transformers' Sequential(Linear, SiLU) over the condition.
    Linear project(
        torch::nn::LinearOptions(options.resolved_dim_condition(), options.conditioning_width()).bias(false));
    register_module("adaptive_mlp", torch::nn::Sequential(project, torch::nn::SiLU()));
  }
  if (options.has_final_norm()) final_norm = register_module("final_norm", make_norm(options));
  if (options.unet_skips()) register_module("skip_combines", combines);
  if (options.reinject_input())
    register_module("reinject_input_proj",
                    Linear(torch::nn::LinearOptions(options.dim(), options.dim()).bias(false)));
  if (options.learned_reinject_input_gate())
    register_module("learned_reinject_input_gate",
                    Linear(torch::nn::LinearOptions(options.dim(), 1).bias(false)));
  // The layout the functional math reads is this tree's: declared once, by the modules above.
  plan = std::make_shared<const functional::AttentionLayersPlan>(options, layout_of(*this));
}

std::shared_ptr<const functional::AttentionLayersPlan> meta_plan(const AttentionLayersOptions& options) {
  MetaConstruction meta;
  return AttentionLayers(options)->plan;
}

std::vector<at::Tensor> tensors_in_layout(const torch::nn::Module& module,
                                          const std::vector<functional::ParameterSpec>& specs) {
  const auto params = module.named_parameters();
  const auto buffers = module.named_buffers();
  std::vector<at::Tensor> out;
  out.reserve(specs.size());
  for (const auto& spec : specs) {
    const auto* found = spec.buffer ? buffers.find(spec.name) : params.find(spec.name);
    TORCH_INTERNAL_ASSERT(found != nullptr, module.name(), ": module lacks ", spec.name, " of its layout");
    out.push_back(*found);
  }
  return out;
}

std::vector<at::Tensor> AttentionLayersImpl::tensors() const {
  return tensors_in_layout(*this, plan->parameters());
}

void AttentionLayersImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::AttentionLayers(dim=" << options.dim() << ", depth=" << options.depth()
         << ", heads=" << options.heads() << (options.causal() ? ", causal=true" : "") << ")";
}

at::Tensor AttentionLayersImpl::forward(const at::Tensor& x, const at::Tensor& mask,
                                        const at::Tensor& context, const at::Tensor& context_mask,
                                        const at::Tensor& attn_mask) {
  const auto optional = [](const at::Tensor& t) {
    return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
  };
  functional::AttentionLayersInputs inputs;
  inputs.mask = optional(mask);
  inputs.context = optional(context);
  inputs.context_mask = optional(context_mask);
  inputs.attn_mask = optional(attn_mask);
  return functional::attention_layers(x, inputs, tensors(), *plan, is_training());
}

at::Tensor AttentionLayersImpl::forward_with(const at::Tensor& x,
                                             const functional::AttentionLayersInputs& inputs,
                                             functional::AttentionLayersHiddens* record) {
  return functional::attention_layers(x, inputs, tensors(), *plan, is_training(), record);
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
