#include <ATen/ops/arange.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/modules/attention.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/lora_linear.h>
#include <xtc/nn/modules/norm.h>
#include <xtc/nn/modules/positional.h>
#include <xtc/nn/modules/torch_layers.h>

#include <cmath>

namespace xtc::nn {

AttentionImpl::AttentionImpl(int64_t dim, int64_t heads, AttentionOptions options, bool causal,
                             bool learned_value_mix)
    : dim(dim), heads(heads), options(options), causal(causal), learned_value_mix(learned_value_mix) {
  reset();
}

namespace {

int64_t kv_heads_of(const AttentionOptions& o, int64_t heads) {
  return o.one_kv_head() ? 1 : o.kv_heads().value_or(heads);
}

torch::nn::LinearOptions no_bias(int64_t in, int64_t out) {
  return torch::nn::LinearOptions(in, out).bias(false);
}

std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace

void AttentionImpl::reset() {
  const int64_t kv_heads = kv_heads_of(options, heads);
  TORCH_CHECK_VALUE(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
                    "Attention: expected kv_heads to divide heads (", heads, "), got ", kv_heads);
  // x-transformers' registration (and draw) order; own parameters precede the modules in the state_dict.
  register_own_parameters();
  register_projections();
  register_gates();
  register_head_norms();
  // CoPE draws before the learned biases, and Attend holds it.
  const CoPE cope = options.use_cope() ? CoPE(options.dim_head(), heads, options.cope_max_pos(),
                                              options.cope_soft_onehot_pos(), options.cope_talking_heads())
                                       : nullptr;
  register_learned_biases();
  register_attend(cope);
  if (learned_value_mix) {
    to_value_residual_mix = Linear(dim, heads);
    register_module("to_value_residual_mix",
                    torch::nn::Sequential(to_value_residual_mix, torch::nn::Sigmoid()));
  }
  register_hybrid();
  register_output_projection();
}

void AttentionImpl::register_hybrid() {
  if (!options.hybrid_module().has_value()) return;
  // x-transformers wraps the network in FoldAxially (`fn`) and norms both outputs' heads.
  auto fold = std::make_shared<torch::nn::Module>("FoldAxially");
  const auto network = fold->register_module(
      "fn", TorchRecurrent(functional::parse_recurrent_spec("hybrid_module", *options.hybrid_module())));
  register_module("hybrid_module", fold);
  torch::nn::ModuleList norms;
  const MultiheadRMSNorm out_norm(heads, options.dim_head()), hybrid_norm(heads, options.dim_head());
  norms->push_back(out_norm);
  norms->push_back(hybrid_norm);
  register_module("hybrid_norms", norms);
  hybrid = {network->flat_weights(), out_norm->gamma, hybrid_norm->gamma, {}};
  if (options.hybrid_learned_mix())
    hybrid.mix =
        register_module("hybrid_mix", Linear(torch::nn::LinearOptions(dim, heads).bias(false)))->weight;
}

void AttentionImpl::register_own_parameters() {
  const int64_t kv_heads = kv_heads_of(options, heads), dh = options.dim_head();
  if (options.qk_norm() && options.qk_norm_dim_scale()) {
    const double init = std::pow(static_cast<double>(dh), 0.25);
    qk_norm_q_scale = register_parameter("qk_norm_q_scale", module_tensor({heads, 1, dh}).fill_(init));
    qk_norm_k_scale = register_parameter("qk_norm_k_scale", module_tensor({kv_heads, 1, dh}).fill_(init));
  }
  if (options.head_scale())
    head_scale_params = register_parameter("head_scale_params", module_tensor({1, heads, 1, 1}).fill_(1));
  if (options.num_mem_kv() > 0) {
    mem_k = register_parameter("mem_k", module_tensor({kv_heads, options.num_mem_kv(), dh}).normal_());
    mem_v = register_parameter("mem_v", module_tensor({kv_heads, options.num_mem_kv(), dh}).normal_());
  }
}

void AttentionImpl::register_projections() {
  const int64_t kv_heads = kv_heads_of(options, heads), dh = options.dim_head();
  const int64_t dv = options.value_dim_head().value_or(dh);
  // Multi-latent attention: q, and k and v, from latents; the decoupled rope heads of k from the input.
  const auto latent = [&](const char* name, bool used, const std::optional<int64_t>& width) {
    return used ? register_module(name, Linear(no_bias(dim, *width))) : Linear(nullptr);
  };
  to_latent_q = latent("to_latent_q", options.use_latent_q(), options.dim_latent_q());
  to_latent_kv = latent("to_latent_kv", options.use_latent_kv(), options.dim_latent_kv());
  const int64_t rope_heads = options.latent_rope_subheads().value_or(0);
  if (rope_heads > 0)
    to_rotateable_k = register_module("to_rotateable_k", Linear(no_bias(dim, dh * rope_heads)));
  to_q = register_module("to_q",
                         Linear(no_bias(options.use_latent_q() ? *options.dim_latent_q() : dim, heads * dh)));
  // Cross-attention over a context of another width; the latent's width under MLA.
  const int64_t dim_kv =
      options.use_latent_kv() ? *options.dim_latent_kv() : options.dim_context().value_or(dim);
  to_k = register_module("to_k", Linear(no_bias(dim_kv, (kv_heads - rope_heads) * dh)));
  to_v = register_module("to_v", Linear(no_bias(dim_kv, kv_heads * dv)));
}

void AttentionImpl::register_gates() {
  const int64_t width = heads * options.value_dim_head().value_or(options.dim_head());
  // The gates' projections start at zero (x-transformers' LoRALinear); gate_value_heads' starts open.
  const bool silu = options.low_rank_silu_gates();
  if (options.gate_values())
    to_v_gate = register_lora_linear(*this, "to_v_gate", dim, options.gate_values_headwise() ? heads : width,
                                     options.gate_values_rank(), silu);
  if (options.output_gate())
    to_output_gate =
        register_lora_linear(*this, "to_output_gate", width, options.output_gate_headwise() ? heads : width,
                             options.output_gate_rank(), silu);
  if (options.gate_value_heads()) {
    to_v_head_gate = register_module("to_v_head_gate", Linear(dim, heads));
    torch::nn::init::zeros_(to_v_head_gate->weight);
    torch::nn::init::constant_(to_v_head_gate->bias, 10.0);
  }
}

void AttentionImpl::register_head_norms() {
  const auto multihead_rms_norm = [&](const char* name, int64_t norm_heads) {
    return register_module(name, MultiheadRMSNorm(norm_heads, options.dim_head()))->gamma;
  };
  if (options.qk_rmsnorm()) q_rmsnorm = multihead_rms_norm("q_rmsnorm", heads);
  if (options.qk_rmsnorm() || options.k_rmsnorm())
    k_rmsnorm = multihead_rms_norm("k_rmsnorm", kv_heads_of(options, heads));
  if (options.value_rmsnorm()) value_rmsnorm = multihead_rms_norm("value_rmsnorm", heads);
}

void AttentionImpl::register_attend(const CoPE& cope) {
  if (!(options.head_learned_sink() || options.pre_talking_heads() || options.post_talking_heads() ||
        options.pre_scale_post_talking_heads() || cope))
    return;
  auto attend = register_module("attend", Attend(heads, options, cope));
  if (cope) {
    cope_pos_emb = cope->pos_emb;
    cope_talking_heads = cope->talking_heads ? cope->talking_heads->weight : at::Tensor();
  }
  head_attn_sink = attend->head_attn_sink;
  const auto weight = [](const Conv2d& conv) { return conv ? conv->weight : at::Tensor(); };
  pre_talking_heads = weight(attend->pre_softmax_talking_heads);
  post_talking_heads = weight(attend->post_softmax_talking_heads);
  pre_scale_post_talking_heads = weight(attend->pre_scale_post_talking_heads);
}

void AttentionImpl::register_output_projection() {
  const int64_t merged = merged_width(options, heads);
  if (!projects_out(options, heads)) return;  // x-transformers' nn.Identity: the merged heads are the output
  if (options.on_attn()) {
    // Attention on attention: Linear to 2 x dim, then a GLU.
    Linear glu_projection(no_bias(merged, 2 * dim));
    if (options.zero_init_output()) torch::nn::init::zeros_(glu_projection->weight);
    to_out_glu = glu_projection->weight;
    register_module("to_out", torch::nn::Sequential(glu_projection, torch::nn::GLU()));
    return;
  }
  to_out = register_module("to_out", Linear(no_bias(merged, dim)));
  if (options.zero_init_output())
    torch::nn::init::zeros_(to_out->weight);
  else if (options.output_proj_depth().has_value())
    torch::nn::init::normal_(to_out->weight, 0.0, depth_scaled_std(merged, *options.output_proj_depth()));
}

void AttentionImpl::register_learned_biases() {
  const auto& o = options;
  if (o.data_dependent_alibi() && o.data_dependent_alibi_per_row()) {
    auto dda = register_module("data_dependent_alibi",
                               PerRowDataDependentAlibi(dim, heads, o.data_dependent_alibi_per_row_dim_head(),
                                                        o.data_dependent_alibi_post_log_scale()));
    forget_gate_weight = dda->to_forget_gates->weight;
  } else if (o.data_dependent_alibi()) {
    auto dda = register_module("data_dependent_alibi",
                               DataDependentAlibi(dim, heads, causal, o.data_dependent_alibi_bias_init(),
                                                  o.data_dependent_alibi_post_log_scale()));
    forget_gate_weight = dda->to_forget_gates->weight;
    forget_gate_bias = dda->to_forget_gates->bias;
  }
  if (o.use_rel_proj_pos_bias())
    rel_proj_pos_bias = register_module(
        "rel_proj_pos_bias",
        RelativeProjPositionalBias(dim, heads, o.rel_proj_num_distance_basis(), o.rel_proj_max_dist()));
}

void AttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Attention(dim=" << dim << ", heads=" << heads << ", dim_head=" << options.dim_head();
  if (causal) stream << ", causal=true";
  stream << ")";
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& context,
                                  const at::Tensor& context_mask) {
  functional::AttentionConfig config{};
  config.heads = heads;
  config.kv_heads = kv_heads_of(options, heads);
  config.dim_head = options.dim_head();
  config.value_dim_head = options.value_dim_head().value_or(options.dim_head());
  config.causal = causal && !context.defined();
  config.options = options;
  functional::AttentionWeights w{
      to_latent_q ? to_latent_q->weight : at::Tensor(),
      to_latent_kv ? to_latent_kv->weight : at::Tensor(),
      to_rotateable_k ? to_rotateable_k->weight : at::Tensor(),
      to_q->weight,
      to_k->weight,
      to_v->weight,
      to_v_gate,
      to_output_gate,
      to_v_head_gate ? to_v_head_gate->weight : at::Tensor(),
      to_v_head_gate ? to_v_head_gate->bias : at::Tensor(),
      to_out ? to_out->weight : at::Tensor(),
      head_scale_params,
      mem_k,
      mem_v,
      qk_norm_q_scale,
      qk_norm_k_scale,
      to_out_glu,
      pre_talking_heads,
      post_talking_heads,
      pre_scale_post_talking_heads,
      to_value_residual_mix ? to_value_residual_mix->weight : at::Tensor(),
      to_value_residual_mix ? to_value_residual_mix->bias : at::Tensor(),
      q_rmsnorm,
      k_rmsnorm,
      value_rmsnorm,
      head_attn_sink,
      forget_gate_weight,
      forget_gate_bias,
      rel_proj_pos_bias ? rel_proj_pos_bias->to_distance_weights->weight : at::Tensor(),
      rel_proj_pos_bias ? rel_proj_pos_bias->to_distance_weights->bias : at::Tensor(),
      rel_proj_pos_bias ? rel_proj_pos_bias->distance_bank : at::Tensor(),
      cope_pos_emb,
      cope_talking_heads,
      hybrid};
  return functional::attention(x, optional(context), optional(mask), optional(context_mask), w, config,
                               is_training());
}

AttendImpl::AttendImpl(int64_t heads, AttentionOptions options, CoPE cope)
    : heads(heads), options(std::move(options)), cope(std::move(cope)) {
  reset();
}

CoPEImpl::CoPEImpl(int64_t dim, int64_t heads, int64_t max_pos, bool soft_onehot, bool talking_heads)
    : dim(dim), heads(heads), max_pos(max_pos), soft_onehot(soft_onehot), use_talking_heads(talking_heads) {
  reset();
}

void CoPEImpl::reset() {
  pos_emb = register_parameter("pos_emb", module_tensor({max_pos, dim}).zero_());
  if (use_talking_heads)
    talking_heads = register_module("talking_heads", Conv2d(heads, heads, 1, /*bias=*/false));
  if (soft_onehot)
    positions =
        register_buffer("positions", at::arange(max_pos, module_tensor({0}).options().dtype(at::kLong)));
}

void CoPEImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::CoPE(dim=" << dim << ", heads=" << heads << ", max_pos=" << max_pos
         << (soft_onehot ? ", soft_onehot=true" : "") << (use_talking_heads ? ", talking_heads=true" : "")
         << ")";
}

void AttendImpl::reset() {
  // Registration order is x-transformers': the sink logits, then the talking-heads convolutions.
  if (options.head_learned_sink())
    head_attn_sink = register_parameter("head_attn_sink", module_tensor({heads}));
  const auto talking = [&](const char* name) {
    return register_module(name, Conv2d(heads, heads, 1, /*bias=*/false));
  };
  if (options.pre_talking_heads()) pre_softmax_talking_heads = talking("pre_softmax_talking_heads");
  if (options.post_talking_heads()) post_softmax_talking_heads = talking("post_softmax_talking_heads");
  if (options.pre_scale_post_talking_heads())
    pre_scale_post_talking_heads = talking("pre_scale_post_talking_heads");
  if (cope) register_module("cope", cope);
  reset_parameters();
}

void AttendImpl::reset_parameters() {
  if (head_attn_sink.defined()) torch::nn::init::zeros_(head_attn_sink);
  // The talking heads start as the identity mix (dirac).
  for (auto* conv : {&pre_softmax_talking_heads, &post_softmax_talking_heads, &pre_scale_post_talking_heads})
    if (*conv) torch::nn::init::dirac_((*conv)->weight);
}

void AttendImpl::pretty_print(std::ostream& stream) const {
  stream << "xtc::nn::Attend(heads=" << heads
         << (options.head_learned_sink() ? ", head_learned_sink=true" : "")
         << (options.pre_talking_heads() ? ", pre_talking_heads=true" : "")
         << (options.post_talking_heads() ? ", post_talking_heads=true" : "")
         << (options.pre_scale_post_talking_heads() ? ", pre_scale_post_talking_heads=true" : "") << ")";
}

}  // namespace xtc::nn
