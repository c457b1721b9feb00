#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/glu.h>
#include <ATen/ops/lerp.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <xtc/backends.h>
#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/packing.h>
#include <xtc/nn/functional/positional.h>
#include <xtc/nn/functional/residual.h>
#include <xtc/ops/flash_attention.h>
#include <xtc/ops/flash_attention_varlen.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "src/nn/functional/offset_attention.h"
#include "src/nn/functional/sdpa_route.h"
#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {
namespace {

// x-transformers' l2norm: normalise each of `groups` slices of the head dim.
at::Tensor l2norm(const at::Tensor& t, int64_t groups) {
  auto grouped = t.unflatten(-1, {groups, xtc::detail::static_size(t, -1) / groups});
  grouped = grouped / at::linalg_vector_norm(grouped, 2, {-1}, true).clamp_min(1e-12);
  return grouped.flatten(-2);
}

// Keys in front of the sequence's own that every query sees unbiased: the zero key/value, then the memory
// ones.
int64_t memory_keys(const AttentionOptions& o) { return o.num_mem_kv() + (o.add_zero_kv() ? 1 : 0); }

// The flash family of a device, as one candidate of a layer's path: the CPU kernel, or the CUDA kernels (the
// op picks among them and records its own choice).
BackendCandidate flash_candidate(const at::Device& device, std::vector<std::string> reasons) {
  if (device.is_cpu()) return {Backend::CpuFlash, std::move(reasons)};
  if (!device.is_cuda()) {
    reasons.push_back(std::string("no flash kernel for device type ") + c10::DeviceTypeName(device.type()));
    return {Backend::CpuFlash, std::move(reasons)};
  }
  for (const auto b : {Backend::CudaHopperForward, Backend::CudaMmaSync, Backend::CudaSimple})
    if (backend_enabled(b)) return {b, std::move(reasons)};
  return {Backend::CudaSimple, std::move(reasons)};  // every CUDA family disabled: choose_backend says so
}

// Why packed sequences cannot attend in the varlen op (empty: they can). The varlen op's CUDA kernel (one
// dense launch per sequence) has not run on a GPU yet: on CUDA it needs the cuda_varlen backend too.
std::vector<std::string> varlen_reasons(const at::Device& device, const AttentionConfig& c,
                                        const std::vector<std::string>& flash_no, bool positional,
                                        const PackedAttention& packed) {
  std::vector<std::string> reasons = flash_no;
  if (!backend_enabled(flash_candidate(device, {}).backend))
    reasons.emplace_back("it runs the device's flash kernel per sequence, which is disabled");
  if (device.is_cuda() && !backend_enabled(Backend::CudaVarlen))
    reasons.emplace_back("on CUDA the varlen op also needs the cuda_varlen backend (no GPU has run it yet)");
  if (memory_keys(c.options) > 0)
    reasons.emplace_back("memory or zero key/values lead every sequence's keys");
  if (positional && !(packed.queries->consecutive && packed.keys->consecutive))
    reasons.emplace_back("ALiBi or a window over sequences whose kept positions are not one span");
  return reasons;
}

double logit_scale(const AttentionConfig& c) {
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(c.dim_head));
  if (!c.options.qk_norm() || c.options.qk_norm_dim_scale()) return default_scale;
  return c.options.qk_norm_scale();
}

}  // namespace

at::Tensor apply_rotary(const at::Tensor& t, const at::Tensor& angles, const at::Tensor& scale,
                        bool inverse_scale) {
  const int64_t r = xtc::detail::static_size(angles, -1), d = xtc::detail::static_size(t, -1);
  const c10::SymInt n = t.sym_size(1);
  // The last n positions, broadcast over heads (and over the batch for shared positions).
  const auto last = [&](const at::Tensor& rows) {
    const int64_t dim = rows.dim() - 2;
    return rows.narrow_symint(dim, rows.sym_size(dim) - n, n)
        .view_symint({rows.dim() == 3 ? rows.sym_size(0) : c10::SymInt(1), n, 1, r});
  };
  const auto a = last(angles);  // the last n positions
  const auto rotated = t.narrow(-1, 0, r);
  // rotate_half on interleaved pairs: (x1, x2) -> (-x2, x1)
  const auto pairs = rotated.unflatten(-1, {r / 2, 2});
  const auto half = at::stack({-pairs.select(-1, 1), pairs.select(-1, 0)}, -1).flatten(-2);
  at::Tensor out;
  if (scale.defined()) {
    const auto s = inverse_scale ? last(scale).pow(-1) : last(scale);
    out = (rotated * a.cos() * s + half * a.sin() * s).to(t.scalar_type());
  } else {
    out = (rotated * a.cos() + half * a.sin()).to(t.scalar_type());
  }
  if (r == d) return out;
  return at::cat({out, t.narrow(-1, r, d - r)}, -1);
}

at::Tensor linear_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& key_padding_mask, bool causal, int64_t chunk) {
  const int64_t heads = xtc::detail::static_size(q, 2), kv_heads = xtc::detail::static_size(k, 2);
  const auto kv_index = at::arange(heads, q.options().dtype(at::kLong)).remainder(kv_heads);
  const auto phi_q = at::elu(q) + 1;                        // (b, n, h, d)
  auto phi_k = (at::elu(k) + 1).index_select(2, kv_index);  // (b, m, h, d)
  auto values = v.index_select(2, kv_index);                // (b, m, h, dv)
  if (key_padding_mask.has_value()) {
    const auto keep = key_padding_mask->unsqueeze(-1).unsqueeze(-1).to(q.scalar_type());
    phi_k = phi_k * keep;
    values = values * keep;
  }
  // A zero normaliser only happens where every visible key is masked: the numerator is 0 there too.
  const auto divide = [](const at::Tensor& num, const at::Tensor& den) {
    return num / at::where(den == 0, at::ones_like(den), den).unsqueeze(-1);
  };
  if (!causal) {
    const auto state = at::einsum("bmhd,bmhe->bhde", {phi_k, values});
    const auto z = phi_k.sum(1);  // (b, h, d)
    return divide(at::einsum("bnhd,bhde->bnhe", {phi_q, state}), at::einsum("bnhd,bhd->bnh", {phi_q, z}));
  }
  // Causal, right-aligned: query i sees keys j <= i + (m - n). Keys before the first query's position seed
  // the state; each chunk of queries then sees the state plus its own positions' keys, quadratically
  // (masked), and adds those keys to the state for the chunks after it. The chunk loop needs concrete
  // lengths.
  const int64_t n = xtc::detail::static_size(q, 1), m = xtc::detail::static_size(k, 1);
  const int64_t offset = m - n;
  const int64_t seed = std::clamp<int64_t>(offset, 0, m);
  auto state = at::einsum("bmhd,bmhe->bhde", {phi_k.narrow(1, 0, seed), values.narrow(1, 0, seed)});
  auto z = phi_k.narrow(1, 0, seed).sum(1);
  std::vector<at::Tensor> outputs;
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t rows = std::min(chunk, n - i0);
    const auto q_chunk = phi_q.narrow(1, i0, rows);
    // Keys at this chunk's positions: [i0 + offset, i0 + rows + offset), clipped to [0, m).
    const int64_t k0 = std::clamp<int64_t>(i0 + offset, 0, m),
                  k1 = std::clamp<int64_t>(i0 + rows + offset, 0, m);
    auto num = at::einsum("bnhd,bhde->bnhe", {q_chunk, state});
    auto den = at::einsum("bnhd,bhd->bnh", {q_chunk, z});
    if (k1 > k0) {
      const auto k_new = phi_k.narrow(1, k0, k1 - k0), v_new = values.narrow(1, k0, k1 - k0);
      auto scores = at::einsum("bnhd,bmhd->bhnm", {q_chunk, k_new});
      const auto query_pos = at::arange(i0, i0 + rows, q.options().dtype(at::kLong)).unsqueeze(1) + offset;
      const auto key_pos = at::arange(k0, k1, q.options().dtype(at::kLong)).unsqueeze(0);
      scores = scores * (key_pos <= query_pos).to(q.scalar_type());
      num = num + at::einsum("bhnm,bmhe->bnhe", {scores, v_new});
      den = den + scores.sum(-1).transpose(1, 2);
      state = state + at::einsum("bmhd,bmhe->bhde", {k_new, v_new});
      z = z + k_new.sum(1);
    }
    outputs.push_back(divide(num, den));
  }
  return at::cat(outputs, 1);
}

std::vector<std::string> flash_reasons(const AttentionConfig& c, bool training, bool has_attn_mask,
                                       bool wants_maps) {
  std::vector<std::string> reasons;
  if (wants_maps)
    reasons.emplace_back("the attention maps were asked for (return_hiddens without attn_flash)");
  // functorch includes its front-mode key in the thread's dispatch keys while any transform's layer is alive.
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode))
    reasons.emplace_back(
        "a torch.func transform (vmap, grad, jacrev, ...) is active: the kernel's C++ autograd has no "
        "functorch rules, the aten ops do");
  if (has_attn_mask)
    reasons.emplace_back("attn_mask is an arbitrary (query, key) pattern, not a padding mask");
  if (c.position_bias.defined())
    reasons.emplace_back("a learned position bias or attn_bias is a dense (head, query, key) tensor");
  const auto& o = c.options;
  if (o.pre_talking_heads() || o.post_talking_heads() || o.pre_scale_post_talking_heads())
    reasons.emplace_back("talking heads mix the scores of every head");
  if (o.sparse_topk().has_value()) reasons.emplace_back("top-k sparsity needs each row's scores at once");
  if (o.sigmoid())
    reasons.emplace_back("sigmoid attention is not implemented in the kernels, which normalise each row");
  if (o.hard())
    reasons.emplace_back("hard attention takes each row's top score, with the softmax's gradients");
  if (o.cog_signed()) reasons.emplace_back("cog attention puts the scores' signs back on the weights");
  if (o.gumbel_softmax()) reasons.emplace_back("gumbel-softmax adds noise to each score before the weights");
  if (o.selective())
    reasons.emplace_back("selective attention subtracts the first head's scores, summed down the queries");
  if (o.inverted_attention())
    reasons.emplace_back("inverted attention weighs each key's scores over the queries");
  if (o.use_cope())
    reasons.emplace_back(
        "CoPE counts each row's gated keys from its scores, a position no kernel knows ahead");
  if (o.head_learned_sink())
    reasons.emplace_back("a learned sink is a per-head logit column beside the keys");
  if (c.causal && (o.orthog_projected_values() || o.orthog_projected_values_per_head()))
    reasons.emplace_back(
        "orthog_projected_values reads the outputs at padded queries too, where the softmax over keys all "
        "hidden averages every value (the kernel gives 0)");
  if (c.residual_scores) reasons.emplace_back("residual attention hands the scores on to the next layer");
  if (c.shards != nullptr && !c.causal && memory_keys(o) > 0 &&
      (o.max_attend_past().has_value() || o.window_size().has_value()))
    reasons.emplace_back(
        "context parallelism: memory key/values in front of a bidirectional window, which the sharded "
        "kernel calls place by position");
  if (training && c.options.dropout() > 0)
    reasons.emplace_back("attention dropout in training needs the probabilities");
  if (memory_keys(c.options) > 0 && c.alibi_slopes.defined())
    reasons.emplace_back(
        "ALiBi gives memory key/values no bias, which is not a position the kernel can express");
  if (memory_keys(c.options) > 0 && c.options.max_attend_past().has_value())
    reasons.emplace_back("max_attend_past keeps memory key/values visible, outside the kernel's window");
  return reasons;
}

namespace {

// One layer's call, as attention() receives it; the steps below read it.
struct LayerCall {
  const at::Tensor& x;
  const std::optional<at::Tensor>& context;
  const AttentionWeights& w;
  const AttentionConfig& c;
  const AttentionOptions& o;
  bool training;
  const std::optional<at::Tensor>& attn_mask;
  at::Tensor* scores;
  AttentionMaps* maps;
  const ExtraKeyValues& extra;
  bool cross;
  bool cached_step;                             // a cache with earlier keys
  const std::optional<at::Tensor>& query_mask;  // (b, n) bool: the layer's own tokens, when masked
  // The first query's position among the keys (sharded sequences); unset: the queries end with the keys.
  std::optional<int64_t> query_start = std::nullopt;
};

// The kernel's rules for the layer: scale, soft-cap, window, ALiBi slopes.
struct KernelRule {
  double scale = 1.0, softcap = 0.0;
  int64_t window_left = -1, window_right = -1;
  std::optional<at::Tensor> slopes;
};

KernelRule kernel_rule(const AttentionConfig& c) {
  const auto& o = c.options;
  KernelRule r;
  r.scale = logit_scale(c);
  r.softcap = o.softclamp_logits() ? o.logit_softclamp_value() : 0.0;
  r.window_left = o.max_attend_past().value_or(-1);
  if (o.window_size().has_value()) {
    r.window_left = *o.window_size();
    r.window_right = c.causal ? -1 : *o.window_size();
  }
  if (c.alibi_slopes.defined()) r.slopes = c.alibi_slopes;
  return r;
}

void check_extra_key_values(const LayerCall& l, const PackedAttention* packed) {
  if (!l.extra.k.defined()) return;
  // x-transformers' biases, windows and attn_mask span the sequence's keys and its memory key/values only.
  TORCH_CHECK_VALUE(
      !l.c.alibi_slopes.defined() && !l.c.position_bias.defined() && !l.attn_mask.has_value() &&
          !l.c.polar_angles.defined() && !l.o.max_attend_past().has_value() && !l.o.window_size().has_value(),
      "AttentionLayers: self_attn_additional_kv cannot be combined with alibi_pos_bias, rel_pos_bias, "
      "dynamic_pos_bias, polar_pos_emb, attn_bias, attn_mask, max_attend_past or window_size: those cover "
      "the layer's own keys, not the additional ones (x-transformers' do not either)");
  TORCH_CHECK_VALUE(packed == nullptr,
                    "AttentionLayers: self_attn_additional_kv cannot be used with packed sequences");
}

struct QKV {
  at::Tensor q, k, v;
  at::Tensor own_v;  // this call's values as projected, before any mix or norm (orthog_projected_values)
};

// LASER's values: soft-clamped, then exponentiated (the output takes the log back).
at::Tensor laser_values(const AttentionOptions& o, const at::Tensor& v) {
  if (!o.laser()) return v;
  return at::exp(at::tanh(v / o.laser_softclamp_value()) * o.laser_softclamp_value());
}

// Multi-latent attention's keys and values: one latent of the keys' input, which the cache holds (with the
// decoupled rope heads) in their place, projected by to_k and to_v at every cached position.
void latent_keys(const LayerCall& l, const at::Tensor& kv_input, KVCache* cache, QKV& t) {
  const auto& [w, c, o] = std::tie(l.w, l.c, l.o);
  const c10::SymInt kv_b = kv_input.sym_size(0), m = kv_input.sym_size(1);
  auto latent = at::linear(kv_input, w.to_latent_kv).unsqueeze(2);  // (b, m, 1, L): the cache's layout
  const int64_t rope = o.latent_rope_subheads().value_or(0);
  auto rope_keys = rope > 0 ? at::linear(kv_input, w.to_rotateable_k).view_symint({kv_b, m, rope, c.dim_head})
                            : at::zeros_symint({kv_b, m, 0, c.dim_head}, kv_input.options());
  if (cache != nullptr) {
    if (cache->k.defined()) {
      latent = at::cat({cache->k, latent}, 1);
      rope_keys = at::cat({cache->v, rope_keys}, 1);
    }
    cache->k = latent;
    cache->v = rope_keys;
  }
  const c10::SymInt keys = latent.sym_size(1);
  const auto flat = latent.squeeze(2);
  t.k = at::cat(
      {at::linear(flat, w.to_k).view_symint({kv_b, keys, c.kv_heads - rope, c.dim_head}), rope_keys}, 2);
  t.v = at::linear(flat, w.to_v).view_symint({kv_b, keys, c.kv_heads, c.value_dim_head});
}

// q from x (through its latent under MLA); k and v from the context, or from x behind its Transformer-XL
// memory. On a cached step a cross-attention layer's keys are all in the cache: x-transformers cuts the
// context to length 0, and the cached keys already carry the input residual. Then the value residual and the
// query / key / value norms. Under MLA the cache is read and written here.
// The keys' input (`own` the layer's: x, its own view of it, or the context): plus the input residual, behind
// the Transformer-XL memory.
at::Tensor key_value_input(const LayerCall& l, const XLMemory& xl, const at::Tensor& own) {
  at::Tensor source = l.cross ? (l.cached_step ? l.context->narrow(1, 0, 0) : *l.context) : own;
  if (l.extra.input_residual.defined() && !(l.cross && l.cached_step))
    source = source + l.extra.input_residual;
  return !l.cross && xl.mem.defined() ? at::cat({xl.mem, source}, 1) : source;
}

QKV project(const LayerCall& l, const XLMemory& xl, const ValueResidual& value_residual, KVCache* cache) {
  const auto& [x, w, c, o] = std::tie(l.x, l.w, l.c, l.o);
  const auto& [own_keys, own_values] = std::tie(l.extra.key_input, l.extra.value_input);
  const at::Tensor kv_input = key_value_input(l, xl, own_keys.defined() ? own_keys : x);
  const at::Tensor value_input = own_values.defined() ? key_value_input(l, xl, own_values) : kv_input;
  // Batch and lengths as SymInts: torch.export and torch.compile keep them symbolic (dynamic shapes). The
  // keys' batch is x's, except for packed queries over a dense context (unpad's cross-attention).
  const c10::SymInt b = x.sym_size(0), n = x.sym_size(1), m = kv_input.sym_size(1),
                    kv_b = kv_input.sym_size(0);
  const at::Tensor q_input = w.to_latent_q.defined() ? at::linear(x, w.to_latent_q) : x;
  QKV t;
  t.q = at::linear(q_input, w.to_q).view_symint({b, n, c.heads, c.dim_head});
  if (w.to_latent_kv.defined()) {
    TORCH_CHECK_VALUE(
        l.cross || !xl.mem.defined(),
        "AttentionLayers: use_latent_kv cannot be combined with mems (the latent cache would sit "
        "behind the memory)");
    latent_keys(l, kv_input, cache, t);
  } else {
    t.k = at::linear(kv_input, w.to_k).view_symint({kv_b, m, c.kv_heads, c.dim_head});
    t.v = at::linear(value_input, w.to_v).view_symint({kv_b, m, c.kv_heads, c.value_dim_head});
  }
  t.own_v = t.v;
  if (value_residual.values_out != nullptr) *value_residual.values_out = t.v;
  if (value_residual.first.defined()) {
    // v = first + mix * (v - first): a per-token, per-head learned mix, or one half.
    if (w.value_mix_weight.defined()) {
      const auto mix = at::sigmoid(at::linear(q_input, w.value_mix_weight, w.value_mix_bias))
                           .unsqueeze(-1);  // (b, n, h, 1)
      t.v = at::lerp(value_residual.first, t.v, mix);
    } else {
      t.v = at::lerp(value_residual.first, t.v, 0.5);
    }
  }
  if (o.qk_norm()) {
    t.q = l2norm(t.q, o.qk_norm_groups());
    t.k = l2norm(t.k, o.qk_norm_groups());
    // Learned scales are (heads, 1, dh); our layout is (b, n, heads, dh).
    if (w.qk_q_scale.defined()) t.q = t.q * w.qk_q_scale.transpose(0, 1);
    if (w.qk_k_scale.defined()) t.k = t.k * w.qk_k_scale.transpose(0, 1);
  }
  if (w.q_rmsnorm.defined()) t.q = multihead_rms_norm(t.q, w.q_rmsnorm);
  if (w.k_rmsnorm.defined()) t.k = multihead_rms_norm(t.k, w.k_rmsnorm);
  if (w.value_rmsnorm.defined()) t.v = multihead_rms_norm(t.v, w.value_rmsnorm);
  return t;
}

// Transformer-XL memory rows lead the keys; the cache holds the sequence's own keys only, as x-transformers'
// cached_kv (memory, cached, new).
void through_cache(QKV& t, KVCache& cache, const c10::SymInt& xl_len) {
  auto own_k = t.k.narrow_symint(1, xl_len, t.k.sym_size(1) - xl_len);
  auto own_v = t.v.narrow_symint(1, xl_len, t.v.sym_size(1) - xl_len);
  if (cache.k.defined()) {
    own_k = at::cat({cache.k, own_k}, 1);
    own_v = at::cat({cache.v, own_v}, 1);
  }
  cache.k = own_k;
  cache.v = own_v;
  t.k = xl_len > 0 ? at::cat({t.k.narrow_symint(1, 0, xl_len), own_k}, 1) : own_k;
  t.v = xl_len > 0 ? at::cat({t.v.narrow_symint(1, 0, xl_len), own_v}, 1) : own_v;
}

// rotate_num_heads: only the last heads rotate (x-transformers' q[:, -R:]); the rest pass through.
at::Tensor rotate_heads(const at::Tensor& t, int64_t rotary_heads, const at::Tensor& angles,
                        const at::Tensor& scale, bool inverse) {
  const int64_t heads = xtc::detail::static_size(t, 2), rotated = rotary_heads < 0 ? heads : rotary_heads;
  if (rotated == heads) return apply_rotary(t, angles, scale, inverse);
  const auto rotated_part = apply_rotary(t.narrow(2, heads - rotated, rotated), angles, scale, inverse);
  return at::cat({t.narrow(2, 0, heads - rotated), rotated_part}, 2);
}

// PoPE: q and k as magnitudes at their positions' angles, 2 dh features; a single kv head becomes one per
// head (the keys' shift is per head), so the values follow.
void polar(QKV& t, const AttentionConfig& c) {
  t.q = apply_polar(t.q, c.polar_angles);
  t.k = apply_polar(t.k, c.polar_angles, c.polar_bias);
  if (xtc::detail::static_size(t.v, 2) != xtc::detail::static_size(t.k, 2))
    t.v = t.v.expand_symint({t.v.sym_size(0), t.v.sym_size(1), t.k.sym_size(2), t.v.sym_size(3)});
}

void rotate(QKV& t, const AttentionConfig& c) {
  if (c.polar_angles.defined()) polar(t, c);
  if (!c.rotary_angles.defined()) return;
  // MLA's decoupled rope: the last latent_rope_subheads heads rotate.
  const int64_t heads = c.options.latent_rope_subheads().value_or(c.rotary_heads);
  t.q = rotate_heads(t.q, heads, c.rotary_angles, c.rotary_scale, false);
  const bool own_key_angles = c.key_rotary_angles.defined();
  t.k = rotate_heads(t.k, heads, own_key_angles ? c.key_rotary_angles : c.rotary_angles,
                     own_key_angles ? c.key_rotary_scale : c.rotary_scale, true);
}

// Key mask, as x-transformers: context_mask when given (self-attention's override too), else `mask` for
// self-attention and none for cross-attention; memory keys are kept unless their mask says otherwise.
std::optional<at::Tensor> key_mask_of(const LayerCall& l, const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& context_mask, const XLMemory& xl,
                                      const c10::SymInt& xl_len, const c10::SymInt& keys) {
  std::optional<at::Tensor> key_mask = context_mask.has_value() ? context_mask
                                       : l.cross                ? std::nullopt
                                                                : mask;
  if (xl_len > 0 && (key_mask.has_value() || xl.mask.has_value())) {
    const c10::SymInt b = l.x.sym_size(0);
    const auto bools = l.x.options().dtype(at::kBool);
    const auto mem_keep = xl.mask.has_value() ? *xl.mask : at::ones_symint({b, xl_len}, bools);
    // The sequence's keys: the cached ones too.
    const auto seq_keep = key_mask.has_value() ? *key_mask : at::ones_symint({b, keys - xl_len}, bools);
    key_mask = at::cat({mem_keep, seq_keep}, 1);
  }
  return key_mask;
}

// Keys every query sees unbiased, joined in front of the sequence's in x-transformers' order: the learned
// memory key/values, then the additional ones before them, then the zero one first of all.
void prepend_unbiased_keys(const LayerCall& l, QKV& t, std::optional<at::Tensor>& key_mask,
                           const c10::SymInt& b) {
  const auto& [w, o, extra] = std::tie(l.w, l.o, l.extra);
  if (o.num_mem_kv() > 0) {
    auto mem_k = w.mem_k.transpose(0, 1).unsqueeze(0).expand_symint({b, -1, -1, -1});  // (b, M, hk, dh)
    const auto mem_v = w.mem_v.transpose(0, 1).unsqueeze(0).expand_symint({b, -1, -1, -1});
    if (o.qk_norm()) {
      mem_k = l2norm(mem_k, o.qk_norm_groups());
      if (w.qk_k_scale.defined()) mem_k = mem_k * w.qk_k_scale.transpose(0, 1);
    }
    t.k = at::cat({mem_k, t.k}, 1);
    t.v = at::cat({mem_v, t.v}, 1);
    if (key_mask.has_value())
      key_mask = at::cat({at::ones_symint({b, o.num_mem_kv()}, key_mask->options()), *key_mask}, 1);
  }
  if (extra.k.defined()) {
    // With another head count than the layer's kv heads, both expand to the query heads (head i reads head
    // i % heads of each, as its repeat).
    auto added_k = extra.k.transpose(1, 2).to(t.k.scalar_type()),
         added_v = extra.v.transpose(1, 2).to(t.v.scalar_type());
    const int64_t added_heads = xtc::detail::static_size(added_k, 2);
    if (added_heads != l.c.kv_heads) {
      const auto to_query_heads = [&](const at::Tensor& x) {
        const int64_t x_heads = xtc::detail::static_size(x, 2);
        return x.index_select(2, at::arange(l.c.heads, x.options().dtype(at::kLong)).remainder(x_heads));
      };
      t.k = to_query_heads(t.k), t.v = to_query_heads(t.v);
      added_k = to_query_heads(added_k), added_v = to_query_heads(added_v);
    }
    const c10::SymInt keys_before = t.k.sym_size(1), added = added_k.sym_size(1);
    t.k = at::cat({added_k, t.k}, 1);
    t.v = at::cat({added_v, t.v}, 1);
    if (key_mask.has_value() || extra.mask.has_value()) {
      const auto keep = [&](const std::optional<at::Tensor>& m, const c10::SymInt& length) {
        return m.has_value() ? *m : at::ones_symint({b, length}, l.x.options().dtype(at::kBool));
      };
      key_mask = at::cat({keep(extra.mask, added), keep(key_mask, keys_before)}, 1);
    }
  }
  // LASER exponentiates every value the queries read, but the zero one, which x-transformers' Attend joins
  // after it.
  t.v = laser_values(o, t.v);
  if (o.add_zero_kv()) {
    // In front of the memory keys too, as x-transformers' Attend pads it last; always visible.
    const int64_t heads_now = xtc::detail::static_size(t.k, 2);  // q and k may be wider than dim_head (PoPE)
    t.k = at::cat({at::zeros_symint({b, 1, heads_now, t.k.sym_size(3)}, t.k.options()), t.k}, 1);
    t.v = at::cat({at::zeros_symint({b, 1, heads_now, l.c.value_dim_head}, t.v.options()), t.v}, 1);
    if (key_mask.has_value())
      key_mask = at::cat({at::ones_symint({b, 1}, key_mask->options()), *key_mask}, 1);
  }
}

// l2_distance: q -> [2q, |q|^2, -1] and k -> [k, -1, |k|^2], whose dot product is -|q - k|^2, so that any
// kernel scores by the distance (x-transformers' flash form; its own path takes torch.cdist).
void l2_distance_features(QKV& t) {
  const auto squared_norm = [](const at::Tensor& x) { return x.pow(2).sum(-1, true); };
  const auto minus_one = [](const at::Tensor& x) { return -at::ones_like(x.narrow(-1, 0, 1)); };
  t.q = at::cat({2 * t.q, squared_norm(t.q), minus_one(t.q)}, -1);
  t.k = at::cat({t.k, minus_one(t.k), squared_norm(t.k)}, -1);
}

// The materialising path: visibility and bias over (n, M + m) keys, memory keys (the first M) always visible
// and unbiased; then x-transformers' softmax attention on the scores.
// Inverted attention's query mask, (b, 1, n, 1); undefined without one.
at::Tensor inverted_query_keep(const LayerCall& l) {
  if (!l.o.inverted_attention() || !l.query_mask.has_value()) return {};
  return l.query_mask->unsqueeze(1).unsqueeze(-1);
}

at::Tensor math_attention(const LayerCall& l, const QKV& t, const std::optional<at::Tensor>& key_mask,
                          const KernelRule& r, const c10::SymInt& b, const c10::SymInt& n) {
  const auto& [x, c, o, extra] = std::tie(l.x, l.c, l.o, l.extra);
  const c10::SymInt keys = t.k.sym_size(1);
  // Additional key/values count as memory here: visible and unbiased (windows and biases are refused with
  // them).
  const c10::SymInt memory =
      extra.k.defined() ? extra.k.sym_size(2) + memory_keys(o) : c10::SymInt(memory_keys(o));
  const c10::SymInt query_start = l.query_start.has_value() ? c10::SymInt(*l.query_start) : keys - memory - n;
  const auto query_pos = at::arange(n, x.options().dtype(at::kLong)).unsqueeze(1) + query_start;
  const auto key_pos = at::arange(keys, x.options().dtype(at::kLong)).unsqueeze(0) - memory;
  const auto is_memory = key_pos < 0;
  at::Tensor keep = key_mask.has_value() ? key_mask->view_symint({b, 1, 1, keys}) : at::Tensor();
  if (l.attn_mask.has_value()) {
    // Memory keys stay visible: the pattern covers the sequence's own keys.
    auto pattern = *l.attn_mask;
    if (memory > 0) {
      auto sizes = pattern.sym_sizes().vec();
      sizes.back() = memory;
      pattern = at::cat({at::ones_symint(sizes, pattern.options()), pattern}, -1);
    }
    keep = keep.defined() ? keep.logical_and(pattern) : pattern;
  }
  if (r.window_left >= 0 || r.window_right >= 0) {
    auto in_window = is_memory.expand_symint({n, keys}).clone();
    const auto distance = query_pos - key_pos;  // > 0: the key is in the past
    auto inside = at::ones_symint({n, keys}, in_window.options());
    if (r.window_left >= 0) inside = inside.logical_and(distance <= r.window_left);
    if (r.window_right >= 0) inside = inside.logical_and(distance >= -r.window_right);
    in_window = in_window.logical_or(inside).view_symint({1, 1, n, keys});
    keep = keep.defined() ? keep.logical_and(in_window) : in_window;
  }
  at::Tensor bias;
  if (c.alibi_slopes.defined()) {
    const auto distance = (query_pos - key_pos).abs().to(x.scalar_type()).masked_fill(is_memory, 0);
    bias =
        -distance.view_symint({1, 1, n, keys}) * c.alibi_slopes.to(x.scalar_type()).view({1, c.heads, 1, 1});
  }
  if (c.position_bias.defined()) {
    // Memory keys get no bias (x-transformers pads the bias with zeros on their side).
    const auto& pb = c.position_bias;
    bias = memory > 0 ? at::cat({at::zeros_symint({pb.sym_size(0), c.heads, n, memory}, x.options()), pb}, -1)
                      : pb;
  }
  const auto& w = l.w;
  const ScoreTransforms transforms{w.pre_talking_heads,
                                   w.post_talking_heads,
                                   w.pre_scale_post_talking_heads,
                                   o.sparse_topk(),
                                   o.sparse_topk_straight_through(),
                                   w.head_attn_sink,
                                   o.sigmoid(),
                                   o.hard(),
                                   o.cog_signed(),
                                   o.gumbel_softmax(),
                                   o.gumbel_softmax_hard(),
                                   o.gumbel_softmax_temp(),
                                   o.selective(),
                                   w.cope_pos_emb,
                                   w.cope_talking_heads,
                                   o.cope_soft_onehot_pos(),
                                   o.inverted_attention(),
                                   inverted_query_keep(l)};
  return materialized_attention(t.q, t.k, t.v, r.scale, keep, bias, c.causal && n > 1, r.softcap, o.dropout(),
                                l.training, transforms, c.residual_scores ? l.scores : nullptr, l.maps);
}

// Attention of a padded batch, q (b, n, h, dh) and k, v (b, m, hk, dh|dv) with their key mask: (b, n, h, dv).
at::Tensor dense_attention(const LayerCall& l, QKV t, std::optional<at::Tensor> key_mask, const KernelRule& r,
                           const c10::SymInt& b, const c10::SymInt& n, Backend path) {
  prepend_unbiased_keys(l, t, key_mask, b);
  if (l.o.l2_distance()) l2_distance_features(t);  // the zero key too: x-transformers scores it by |q|^2
  if (l.o.linear()) return linear_attention(t.q, t.k, t.v, key_mask, l.c.causal && n > 1);
  if (path == Backend::Math) return math_attention(l, t, key_mask, r, b, n);
  if (l.query_start.has_value() && !l.c.causal && (r.slopes || r.window_left >= 0 || r.window_right >= 0)) {
    // A sharded run's queries sit inside the keys; ALiBi and windows need their positions.
    const detail::BidirectionalRule rule{r.scale, r.softcap, r.window_left, r.window_right, r.slopes};
    return detail::attention_at_offset(t.q, t.k, t.v, key_mask, *l.query_start, rule);
  }
  if (path == Backend::CudaSdpaFp32)
    return detail::sdpa_fp32(t.q, t.k, t.v, l.c.causal && n > 1, r.scale, ops::cuda_fp32_matmul_precision());
  return std::get<0>(ops::flash_attention(t.q, t.k, t.v, key_mask, l.c.causal, r.scale, r.slopes,
                                          r.window_left, r.window_right, r.softcap));
}

// Context parallelism: this rank's queries against the keys and values they reach, from whichever ranks hold
// them (only the kv heads travel). Each run of the shard's queries attends at its global positions to the
// keys it reaches: causal, those up to its end, which right-aligns it as the kernel does; bidirectional
// ALiBi and windows in two kernel calls (offset_attention.h) or the Math path, its queries placed by
// query_start. x-transformers' T5 and dynamic biases are dense, so Math.
at::Tensor sharded_attention(const LayerCall& l, QKV t, const std::optional<at::Tensor>& key_mask,
                             const KernelRule& r, Backend path) {
  const SequenceShards& shards = *l.c.shards;
  TORCH_CHECK_VALUE(
      l.maps == nullptr,
      "context_parallel: the attention maps (return_hiddens without attn_flash) span the keys a ",
      "shard reaches, not the sequence's, so they are not returned sharded; set attn_flash=True");
  // Only the keys this rank's queries reach travel to it (causal: none after them; windows: those inside).
  const KeyReach reach{l.c.causal, r.window_left, r.window_right};
  const KeySpan span = shards.span_of(shards.setting.rank, reach);
  // Keys and values (the same heads, as the kernel takes them) travel in one exchange.
  const int64_t dim_head = t.k.size(-1);
  const at::Tensor kv = shards.gather_span(at::cat({t.k, t.v}, -1), reach);
  const at::Tensor k = kv.narrow(-1, 0, dim_head), v = kv.narrow(-1, dim_head, kv.size(-1) - dim_head);
  std::vector<at::Tensor> outputs;
  for (const auto& chunk : shards.chunks) {
    const KeySpan keys = shards.reach_of(chunk, reach);
    const int64_t count = keys.end - keys.begin;
    const QKV run{t.q.narrow(1, chunk.local_start, chunk.length), k.narrow(1, keys.begin - span.begin, count),
                  v.narrow(1, keys.begin - span.begin, count), at::Tensor()};
    const std::optional<at::Tensor> run_mask =
        key_mask.has_value() ? std::optional<at::Tensor>(key_mask->narrow(1, keys.begin, count))
                             : std::nullopt;
    // A dense position bias (T5, dynamic) covers the shard's queries and every key: the run's block of it.
    AttentionConfig run_config = l.c;
    if (l.c.position_bias.defined())
      run_config.position_bias =
          l.c.position_bias.narrow(-2, chunk.local_start, chunk.length).narrow(-1, keys.begin, count);
    const LayerCall at_run{l.x,
                           l.context,
                           l.w,
                           run_config,
                           run_config.options,
                           l.training,
                           l.attn_mask,
                           l.scores,
                           l.maps,
                           l.extra,
                           l.cross,
                           l.cached_step,
                           l.query_mask,
                           chunk.global_start - keys.begin};
    outputs.push_back(dense_attention(at_run, run, run_mask, r, l.x.sym_size(0), chunk.length, path));
  }
  return outputs.size() == 1 ? outputs.front() : at::cat(outputs, 1);
}

// Packed sequences: q holds the packed queries, k and v the packed keys (or the dense context's, see
// PackedAttention). In the varlen op, or in the padded frame exactly as an unpacked batch.
at::Tensor packed_attention(const LayerCall& l, const QKV& t, const PackedAttention& packed,
                            const KernelRule& r, Backend path) {
  const auto& queries = *packed.queries;
  const auto& keys = *packed.keys;
  if (path == Backend::Varlen) {
    QKV varlen = t;
    if (l.o.l2_distance()) l2_distance_features(varlen);
    const auto k = packed.packed_keys ? varlen.k : pack(varlen.k, keys);
    const auto v = laser_values(l.o, packed.packed_keys ? t.v : pack(t.v, keys));
    return std::get<0>(ops::flash_attention_varlen(varlen.q.squeeze(0), k.squeeze(0), v.squeeze(0),
                                                   queries.cu_seqlens, keys.cu_seqlens, queries.max_seqlen,
                                                   keys.max_seqlen, l.c.causal, r.scale, r.slopes,
                                                   r.window_left, r.window_right, r.softcap))
        .unsqueeze(0);
  }
  // No own values: orthog_projected_values, their one reader, is refused with unpad.
  const QKV frame{unpack(t.q, queries), packed.packed_keys ? unpack(t.k, keys) : t.k,
                  packed.packed_keys ? unpack(t.v, keys) : t.v, at::Tensor()};
  return pack(dense_attention(l, frame, keys.frame_mask, r, queries.batch(), queries.frame_length(), path),
              queries);
}

// The path: the flash kernel of the device unless a rule needs the scores (Math); packed sequences in the
// varlen op where it can express the call, else in the padded frame (then flash or Math). attn_linear has its
// own.
// fp32 on CUDA: torch's SDPA first, where the call needs none of our rules (off by default, sdpa_route.h).
BackendCandidate sdpa_candidate(const LayerCall& l, const QKV& t, const KernelRule& r, bool key_mask,
                                std::vector<std::string> reasons) {
  const int64_t n = l.x.size(1), extra_keys = l.extra.k.defined() ? l.extra.k.size(2) : 0;
  detail::SdpaCall call;
  call.device = l.x.device();
  call.dtype = t.q.scalar_type();
  call.queries = n;
  call.keys = t.k.size(1) + memory_keys(l.o) + extra_keys;
  call.heads = t.q.size(2), call.kv_heads = t.k.size(2);
  call.dim_head = t.q.size(3), call.value_dim_head = t.v.size(3);
  call.causal = l.c.causal && n > 1;
  call.key_mask = key_mask || extra_keys > 0;
  call.alibi = r.slopes.has_value(), call.softcap = r.softcap > 0;
  call.window = r.window_left >= 0 || r.window_right >= 0;
  call.sharded = l.c.shards != nullptr && !l.cross;
  for (auto& reason : detail::sdpa_fp32_reasons(call)) reasons.push_back(std::move(reason));
  return {Backend::CudaSdpaFp32, std::move(reasons)};
}

Backend choose_path(const LayerCall& l, const QKV& t, const KernelRule& r, bool key_mask,
                    const PackedAttention* packed) {
  if (l.o.linear()) return Backend::Math;
  const auto flash_no = flash_reasons(l.c, l.training, l.attn_mask.has_value(), l.maps != nullptr);
  std::vector<BackendCandidate> paths = {flash_candidate(l.x.device(), flash_no), {Backend::Math, {}}};
  // Listed only when enabled: it reads static sizes, which dynamic-shape tracing has not.
  if (l.x.is_cuda() && packed == nullptr && backend_enabled(Backend::CudaSdpaFp32))
    paths.insert(paths.begin(), sdpa_candidate(l, t, r, key_mask, flash_no));
  if (packed != nullptr) {
    const bool positional = r.slopes.has_value() || r.window_left >= 0 || r.window_right >= 0;
    paths.insert(paths.begin(),
                 {Backend::Varlen, varlen_reasons(l.x.device(), l.c, flash_no, positional, *packed)});
  }
  return choose_backend(l.cross ? "cross-attention layer" : "self-attention layer", paths);
}

// x-transformers' LoRALinear: up(act(down(x))), or one bias-less projection.
at::Tensor low_rank_linear(const at::Tensor& x, const LowRankLinearWeights& w, bool silu) {
  if (w.weight.defined()) return at::linear(x, w.weight);
  const auto hidden = at::linear(x, w.down);
  return at::linear(silu ? at::silu(hidden) : hidden, w.up);
}

// The value and output gates (HyGA): their logits added, per feature or per head (then broadcast over the
// head's features), through the sigmoid or, with swiglu_values, SiLU. out (b, n, h, dv).
at::Tensor gate(const LayerCall& l, const at::Tensor& out) {
  const auto& [x, w, o] = std::tie(l.x, l.w, l.o);
  if (!w.to_v_gate.defined() && !w.to_output_gate.defined()) return out;
  const auto head_space = [&](const at::Tensor& logits, bool headwise) {
    return headwise ? logits.unsqueeze(-1) : logits.view_as(out);
  };
  const bool silu = o.low_rank_silu_gates();
  at::Tensor logits;
  if (w.to_v_gate.defined())
    logits = head_space(low_rank_linear(x, w.to_v_gate, silu), o.gate_values_headwise());
  if (w.to_output_gate.defined()) {
    const auto output_logits =
        head_space(low_rank_linear(out.flatten(-2), w.to_output_gate, silu), o.output_gate_headwise());
    logits = logits.defined() ? logits + output_logits : output_logits;
  }
  return out * (o.swiglu_values() ? at::silu(logits) : at::sigmoid(logits));
}

// x-transformers' orthog_project: out (b, n, h dv) less its component along the query positions' own values
// (b, n, hk, dv), each sequence's whole block one vector, in float64.
at::Tensor orthogonal_to_values(const LayerCall& l, const at::Tensor& out, const at::Tensor& values) {
  TORCH_CHECK_VALUE(values.sym_size(1) == out.sym_size(1), "AttentionLayers: orthog_projected_values needs ",
                    "one value per query (self-attention without a memory), got ", values.sym_size(1),
                    " values for ", out.sym_size(1), " queries");
  const auto kv_index = at::arange(l.c.heads, out.options().dtype(at::kLong)).remainder(l.c.kv_heads);
  return orthogonal_projection(out, values.index_select(2, kv_index));
}

// LASER's log, the head scale and gates, the heads merged, the orthogonal projections, the output
// projection and its dropout, padded queries zeroed. out (b, n, h, dv); own_values as QKV's.
// x-transformers' hybrid module beside attention: its network over x, mixed into the heads; the GRU's state
// through the cache.
at::Tensor with_hybrid(const LayerCall& l, const at::Tensor& heads, KVCache* cache) {
  const auto spec = parse_recurrent_spec("hybrid_module", *l.o.hybrid_module());
  TORCH_CHECK_VALUE(
      !(spec.lstm && l.cached_step),
      "AttentionLayers: an nn.LSTM hybrid_module cannot decode with a cache (x-transformers keeps "
      "only its h state and fails too); use nn.GRU");
  return hybrid_heads(heads, l.x, l.w.hybrid, spec, l.o.hybrid_fold_axial_dim().value_or(1), l.training,
                      cache != nullptr ? &cache->hybrid_hidden : nullptr);
}

at::Tensor output(const LayerCall& l, at::Tensor out, const at::Tensor& own_values,
                  const std::optional<at::Tensor>& mask, KVCache* cache) {
  const auto& [x, w, c, o] = std::tie(l.x, l.w, l.c, l.o);
  if (o.laser()) out = out.clamp_min(1e-20).log();
  if (w.head_scale.defined()) out = out * w.head_scale.view({1, 1, c.heads, 1});
  if (w.v_head_gate_weight.defined())
    out = out * at::sigmoid(at::linear(x, w.v_head_gate_weight, w.v_head_gate_bias)).unsqueeze(-1);
  if (o.hybrid_module().has_value()) out = with_hybrid(l, out, cache);
  out = gate(l, out).reshape_symint({x.sym_size(0), x.sym_size(1), c.heads * c.value_dim_head});
  if (o.orthog_projected_values() || o.orthog_projected_values_per_head()) {
    // The per-head flag projects over the same block (x-transformers packs 'b *' either way): the same
    // output, joined once per flag.
    const auto projected = orthogonal_to_values(l, out, own_values);
    out = o.orthog_projected_values() && o.orthog_projected_values_per_head()
              ? at::cat({projected, projected}, -1)
              : projected;
  }
  if (w.to_out.defined()) out = at::linear(out, w.to_out);
  if (w.to_out_glu.defined()) out = at::glu(at::linear(out, w.to_out_glu), -1);
  if (l.training && o.sublayer_dropout() > 0) out = at::dropout(out, o.sublayer_dropout(), true);
  if (mask.has_value() && !l.cached_step) out = out.masked_fill(mask->logical_not().unsqueeze(-1), 0);
  return out;
}

// The block's own learned biases (data-dependent ALiBi, the relative projection bias) over its keys: the
// context's, or the sequence's behind its memory and cache. Returns `c`, or `biased` holding c with them.
const AttentionConfig& with_learned_biases(const at::Tensor& x, const std::optional<at::Tensor>& context,
                                           const AttentionWeights& w, const AttentionConfig& c,
                                           const XLMemory& xl, const KVCache* cache,
                                           AttentionConfig& biased) {
  const auto& o = c.options;
  if (!o.data_dependent_alibi() && !o.use_rel_proj_pos_bias()) return c;
  const bool cached = cache != nullptr && cache->k.defined();
  c10::SymInt keys = context.has_value() ? (cached ? cache->k.sym_size(1) : context->sym_size(1))
                                         : x.sym_size(1) + (cached ? cache->k.sym_size(1) : 0);
  if (!context.has_value() && xl.mem.defined()) keys = keys + xl.mem.sym_size(1);
  biased = c;
  if (o.data_dependent_alibi()) {
    TORCH_CHECK_VALUE(
        keys == x.sym_size(1) && !c.position_bias.defined(),
        "AttentionLayers: data_dependent_alibi biases the layer's own tokens alone: it cannot be ",
        "combined with a memory (mems), a cache or attn_bias (x-transformers fails or drops them)");
    biased.position_bias =
        w.forget_gate_bias.defined()
            ? data_dependent_alibi(x, w.forget_gate_weight, w.forget_gate_bias, c.heads,
                                   xtc::detail::static_size(w.forget_gate_weight, 0) == c.heads,
                                   o.data_dependent_alibi_post_log_scale())
            : per_row_data_dependent_alibi(x, w.forget_gate_weight, c.heads,
                                           o.data_dependent_alibi_per_row_dim_head(),
                                           o.data_dependent_alibi_post_log_scale());
  }
  if (o.use_rel_proj_pos_bias()) {
    const auto bias =
        relative_projection_bias(x, w.distance_weight, w.distance_bias, w.distance_bank, c.heads, keys);
    biased.position_bias = biased.position_bias.defined() ? biased.position_bias + bias : bias;
  }
  return biased;
}

}  // namespace

at::Tensor attention(const at::Tensor& x, const std::optional<at::Tensor>& context,
                     const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& context_mask,
                     const AttentionWeights& w, const AttentionConfig& c, bool training,
                     const std::optional<at::Tensor>& attn_mask, at::Tensor* scores,
                     const ValueResidual& value_residual, const XLMemory& xl, KVCache* cache,
                     AttentionMaps* maps, const PackedAttention* packed, const ExtraKeyValues& extra) {
  AttentionConfig biased;
  const AttentionConfig& config = with_learned_biases(x, context, w, c, xl, cache, biased);
  const LayerCall l{
      x,         context, w,    config, config.options,      training,
      attn_mask, scores,  maps, extra,  context.has_value(), cache != nullptr && cache->k.defined(),
      mask};
  check_extra_key_values(l, packed);
  TORCH_CHECK_VALUE(
      !(l.o.inverted_attention() && packed != nullptr),
      "AttentionLayers: cross_attn_inverted_attention weighs each key over its sequence's queries, "
      "so it cannot run packed (unpad or flash_pack_seq)");
  TORCH_CHECK_VALUE(!(l.o.linear() && attn_mask.has_value()),
                    "AttentionLayers: attn_linear has no score matrix for attn_mask to act on");
  QKV t = project(l, xl, value_residual, cache);
  const c10::SymInt xl_len = !l.cross && xl.mem.defined() ? xl.mem.sym_size(1) : c10::SymInt(0);
  if (cache != nullptr && !w.to_latent_kv.defined()) through_cache(t, *cache, xl_len);
  rotate(t, config);
  const auto key_mask = key_mask_of(l, mask, context_mask, xl, xl_len, t.k.sym_size(1));
  const KernelRule r = kernel_rule(config);
  const bool sharded = config.shards != nullptr && !l.cross;
  const Backend path = choose_path(l, t, r, key_mask.has_value(), sharded ? nullptr : packed);
  at::Tensor out;
  if (sharded && packed != nullptr) {
    // unpad inside the shard: attention in the shard's padded frame, the mask the whole sequence's.
    const QKV frame{unpack(t.q, *packed->queries), unpack(t.k, *packed->keys), unpack(t.v, *packed->keys),
                    at::Tensor()};
    out = pack(sharded_attention(l, frame, key_mask, r, path), *packed->queries);
  } else if (sharded) {
    out = sharded_attention(l, t, key_mask, r, path);
  } else if (packed != nullptr) {
    out = packed_attention(l, t, *packed, r, path);
  } else
    out = dense_attention(l, t, key_mask, r, x.sym_size(0), x.sym_size(1), path);
  return output(l, out, t.own_v, mask, cache);
}

namespace {

// The weights of the scores (b, h, n, m): x-transformers' attn_fn. `lowest` marks the masked scores.
at::Tensor attention_weights(const at::Tensor& sim, const ScoreTransforms& t, double lowest) {
  if (t.sigmoid) return at::sigmoid(sim);  // masked scores (lowest) weigh 0
  if (t.gumbel_softmax) {
    // torch's F.gumbel_softmax, draw for draw: -log(Exp(1)) noise, then the softmax at the temperature.
    const auto noise = -at::empty_symint(sim.sym_sizes(), sim.options()).exponential_().log();  // contiguous
    // Below a temperature of 1 the masked scores would overflow to -inf, and a row masked entirely would give
    // NaN gradients (x-transformers' do): clamped to the lowest value, the row stays finite.
    const auto soft = ((sim + noise) / t.gumbel_softmax_temp).clamp_min(lowest).softmax(-1);
    if (!t.gumbel_softmax_hard) return soft;
    const auto one_hot = at::zeros_like(sim).scatter_(-1, std::get<1>(soft.max(-1, true)), 1.0);
    return one_hot - soft.detach() + soft;
  }
  if (t.hard) {
    // A one-hot of each row's top score, with the softmax's gradients (straight-through).
    const auto soft = sim.softmax(-1);
    const auto one_hot = at::zeros_like(sim).scatter_(-1, sim.argmax(-1, /*keepdim=*/true), 1.0);
    return one_hot + soft - soft.detach();
  }
  if (t.sparse_topk.has_value()) {
    // x-transformers' sparse_topk_attn: logits below the row's k-th largest (or masked) are dropped.
    const auto kth =
        std::get<0>(sim.topk_symint(sim.sym_size(-1).min(*t.sparse_topk), -1)).select(-1, -1).unsqueeze(-1);
    const auto kept = sim.ge(kth).logical_and(sim.gt(lowest));
    auto attn = sim.masked_fill(kept.logical_not(), lowest).softmax(-1);
    if (!t.sparse_topk_straight_through) return attn;
    const auto soft = sim.softmax(-1);
    return attn.detach() + soft - soft.detach();
  }
  // Softmax in float32 as x-transformers, but float64 inputs keep their precision.
  return at::softmax(sim, -1, sim.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)
      .to(sim.scalar_type());
}

// Inverted attention's weights: each key's over the queries, the masked keys' zeroed, then each query's
// L1-normalised over the keys (eps 1e-8, as F.normalize).
at::Tensor inverted_weights(const at::Tensor& sim, const at::Tensor& keep, const ScoreTransforms& t,
                            double lowest) {
  auto attn = attention_weights(sim.transpose(-1, -2), t, lowest).transpose(-1, -2);
  if (keep.defined()) attn = attn.masked_fill(keep.logical_not(), 0);
  return attn / attn.abs().sum(-1, /*keepdim=*/true).clamp_min(1e-8);
}

// CoPE (x-transformers' CoPE.forward): a key's position for a query is the count of sigmoid gates of the
// (masked) scores from it to the query, clamped to max_pos - 1; the query's scores against the position
// embeddings, interpolated there (or softly one-hot over them), join its score. q (b, h, i, dh), sim (b, h,
// i, j).
at::Tensor cope_position_scores(const at::Tensor& q, at::Tensor logits, const ScoreTransforms& t,
                                double lowest) {
  const int64_t max_pos = xtc::detail::static_size(t.cope_pos_emb, 0);
  if (t.cope_talking_heads.defined()) {
    // The heads mixed, then the future hidden again.
    const int64_t i = xtc::detail::static_size(logits, -2), j = xtc::detail::static_size(logits, -1);
    logits = at::einsum("gh,bhij->bgij", {t.cope_talking_heads.flatten(1), logits});
    const auto future = at::ones({i, j}, logits.options().dtype(at::kBool)).triu(j - i + 1);
    logits = logits.masked_fill(future, lowest);
  }
  const auto pos = at::sigmoid(logits).flip(-1).cumsum(-1).flip(-1).clamp_max(max_pos - 1);
  const auto position_logits = at::matmul(q, t.cope_pos_emb.t());  // (b, h, i, max_pos)
  if (t.cope_soft_onehot) {
    const auto positions = at::arange(max_pos, pos.options());
    const auto soft = at::softmax(-(pos.unsqueeze(-1) - positions).abs() / 5e-2, -1);  // (b, h, i, j, p)
    return at::einsum("bhijp,bhip->bhij", {soft, position_logits});
  }
  const auto ceil = pos.ceil().to(at::kLong), floor = pos.floor().to(at::kLong);
  const auto w = pos - floor.to(pos.scalar_type());
  return position_logits.gather(-1, ceil) * w + position_logits.gather(-1, floor) * (1 - w);
}

// Selective attention (x-transformers' selective_attn): the first head's positive scores gate the keys for
// the queries after them; a token does not gate itself, nor anything the first key (the start) of the first
// query's. sim (b, h, i, j), j >= i, right-aligned.
at::Tensor selective_gate(const at::Tensor& sim) {
  const c10::SymInt i = sim.sym_size(-2), j = sim.sym_size(-1);  // symbolic under torch.export
  auto gate = at::relu(sim.select(1, 0));                        // (b, i, j); masked scores give 0
  const auto longs = sim.options().dtype(at::kLong);
  const auto query_pos = at::arange(i, longs).unsqueeze(1) + (j - i), key_pos = at::arange(j, longs);
  // Neither the key at the query's own position nor the keys before the queries' (a cache or memory) gate,
  // and the first query's own key never does.
  const auto ungated = (key_pos.unsqueeze(0) == query_pos)
                           .logical_or(key_pos.unsqueeze(0) < (j - i))
                           .logical_or(key_pos.unsqueeze(0) == (j - i));
  gate = gate.masked_fill(ungated, 0);
  // Only the future: row r takes the gates of the rows before it.
  gate = at::cat({at::zeros_like(gate.narrow(1, 0, 1)), gate.narrow_symint(1, 0, i - 1)}, 1).cumsum(1);
  return sim - gate.unsqueeze(1);
}

}  // namespace

at::Tensor materialized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                  const at::Tensor& keep, const at::Tensor& bias, bool causal, double softcap,
                                  double dropout, bool training, const ScoreTransforms& t, at::Tensor* scores,
                                  AttentionMaps* maps) {
  const int64_t heads = xtc::detail::static_size(q, 2), kv_heads = xtc::detail::static_size(k, 2);
  const c10::SymInt n = q.sym_size(1), m = k.sym_size(1);
  // Query head i reads kv head i % kv_heads.
  const auto kv_index = at::arange(heads, q.options().dtype(at::kLong)).remainder(kv_heads);
  const auto qh = q.transpose(1, 2);                            // (b, h, n, dh)
  const auto kh = k.index_select(2, kv_index).transpose(1, 2);  // (b, h, m, dh)
  const auto vh = v.index_select(2, kv_index).transpose(1, 2);  // (b, h, m, dv)
  auto sim = at::matmul(qh, kh.transpose(-1, -2)) * scale;
  if (scores != nullptr && scores->defined()) sim = sim + *scores;
  if (maps != nullptr) maps->qk_similarities = sim;
  // Talking heads are 1x1 convolutions over the head axis: a (h, h) mix of the (b, h, n, m) scores.
  const auto mix_heads = [](const at::Tensor& weight, const at::Tensor& s) {
    return at::einsum("gh,bhij->bgij", {weight.flatten(1), s});
  };
  at::Tensor pre_to_post_scale;
  if (t.pre_scale_post_talking_heads.defined())
    pre_to_post_scale = mix_heads(t.pre_scale_post_talking_heads, sim);
  if (t.pre_talking_heads.defined()) sim = sim + mix_heads(t.pre_talking_heads, sim);
  if (bias.defined()) sim = sim + bias;
  if (softcap > 0) sim = at::tanh(sim / softcap) * softcap;
  at::Tensor sign;  // cog attention: the softmax sees the magnitudes, the weights take the signs back
  if (t.cog_signed) {
    sign = sim.sign();
    sim = sim.abs();
  }
  double lowest = 0;
  // The mask value of the scores' own dtype (x-transformers' max_neg_value): under autocast they are bf16 /
  // fp16.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "materialized_attention", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  // Inverted attention masks the queries before its softmax over them, the keys after.
  const at::Tensor& pre_keep = t.inverted ? t.query_keep : keep;
  if (pre_keep.defined()) sim = sim.masked_fill(pre_keep.logical_not(), lowest);
  if (causal) {
    // Right-aligned: key j is in query i's future when j > i + (m - n) (x-transformers' triu(m - n + 1)).
    const auto query_pos = at::arange(n, q.options().dtype(at::kLong)).unsqueeze(1) + (m - n);
    const auto future = at::arange(m, q.options().dtype(at::kLong)).unsqueeze(0) > query_pos;
    sim = sim.masked_fill(future, lowest);
  }
  if (t.cope_pos_emb.defined()) sim = sim + cope_position_scores(qh, sim, t, lowest);
  if (t.selective) sim = selective_gate(sim);
  if (scores != nullptr) *scores = sim;  // x-transformers' pre_softmax_attn: masked, before the softmax
  if (t.sink.defined()) {
    // x-transformers' head_learned_sink: the sink logit in front of each row (the maps keep that column).
    auto sizes = sim.sym_sizes().vec();
    sizes.back() = 1;
    const auto sink = t.sink.to(sim.scalar_type()).view({1, heads, 1, 1}).expand_symint(sizes);
    sim = at::cat({t.cog_signed ? sink.abs() : sink, sim}, -1);
    if (t.cog_signed) sign = at::cat({sink.sign(), sign}, -1);
  }
  if (maps != nullptr) maps->pre_softmax_attn = sim;
  at::Tensor attn = t.inverted ? inverted_weights(sim, keep, t, lowest) : attention_weights(sim, t, lowest);
  if (t.cog_signed) attn = attn * sign;
  if (maps != nullptr) maps->post_softmax_attn = attn;
  if (t.sink.defined()) attn = attn.narrow_symint(-1, 1, m);  // the sink has no value
  if (training && dropout > 0) attn = at::dropout(attn, dropout, training);
  if (t.post_talking_heads.defined()) attn = mix_heads(t.post_talking_heads, attn);
  if (pre_to_post_scale.defined()) attn = attn * pre_to_post_scale;
  auto out = at::matmul(attn, vh);  // (b, h, n, dv)
  // x-transformers zeroes rows that the key/window masks hide entirely (causality not counted).
  if (keep.defined()) out = out.masked_fill(keep.logical_not().all(-1, /*keepdim=*/true), 0);
  return out.transpose(1, 2);
}

}  // namespace xtc::nn::functional
