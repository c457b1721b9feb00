#include "src/nn/functional/decoding_cache.h"

#include <algorithm>
#include <string>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional::detail {

// Incremental decoding: x-transformers allows it for causal stacks without attn_mask; we also refuse what
// would silently differ from a full forward (shift_tokens, attn_bias, layer dropout in training, selective
// attention, residual updates over the whole sequence).
// Transformer-XL memories stay in front of the cached keys (x-transformers' XL generation). The cache holds
// one (k, v) pair per executed attention layer, (b, hk, N, dh) and (b, hk, N, dv); returns the cached length
// of the self-attention keys.
int64_t check_cache(const std::vector<at::Tensor>& cache_kv, const at::Tensor& x,
                    const AttentionLayersInputs& in, const AttentionLayersPlan& plan, bool training) {
  const auto& o = plan.options();
  TORCH_CHECK_VALUE(x.dim() == 3, "AttentionLayers: expected x of shape (batch, seq, ", o.dim(), "), got ",
                    x.sym_sizes());
  TORCH_CHECK_VALUE(o.causal(),
                    "AttentionLayers: a cache (incremental decoding) needs a causal stack (Decoder)");
  TORCH_CHECK_VALUE(!in.attn_mask.has_value() && !in.attn_bias.has_value(),
                    "AttentionLayers: a cache cannot be combined with attn_mask or attn_bias");
  TORCH_CHECK_VALUE(!o.any_shift_tokens(),
                    "AttentionLayers: a cache cannot be combined with shift_tokens "
                    "(x-transformers would shift within the new tokens only)");
  TORCH_CHECK_VALUE(
      !(o.orthog_residual() || o.mv_split_residual()),
      "AttentionLayers: a cache cannot be combined with orthog_residual or mv_split_residual "
      "(they reduce over the whole sequence; x-transformers would reduce over the new tokens only)");
  TORCH_CHECK_VALUE(!(training && o.layer_dropout() > 0),
                    "AttentionLayers: a cache cannot be combined with layer_dropout in training");
  const std::string& types = plan.executed_attention_types();
  const auto& states = plan.executed_hybrid_states();
  const auto hybrid_states = static_cast<size_t>(std::count(states.begin(), states.end(), true));
  TORCH_CHECK_VALUE(cache_kv.size() == 2 * types.size() + hybrid_states,
                    "AttentionLayers: expected a cache of ", types.size(),
                    " (k, v) pairs, one per executed attention layer, and ", hybrid_states,
                    " hybrid GRU states, got ", cache_kv.size(), " tensors");
  for (size_t h = 2 * types.size(); h < cache_kv.size(); ++h)
    TORCH_CHECK_VALUE(
        cache_kv[h].dim() == 3 && cache_kv[h].is_floating_point() && cache_kv[h].device() == x.device(),
        "AttentionLayers: expected each cached hybrid GRU state of shape (layers x directions, "
        "batch, hidden), floating, on x's device, got ",
        cache_kv[h].sym_sizes(), " ", cache_kv[h].scalar_type(), " on ", cache_kv[h].device());
  std::vector<size_t> attention_layers;  // the executed attention layers' indices, in order
  for (const int64_t i : plan.execution_order())
    if (plan.layer_types()[i] != 'f') attention_layers.push_back(static_cast<size_t>(i));
  int64_t past = -1;
  for (size_t l = 0; l < types.size(); ++l) {
    const auto& a = plan.layer_attention(attention_layers[l]);
    TORCH_CHECK_VALUE(!a.selective(), "AttentionLayers: a cache cannot be combined with attn_selective ",
                      "(each token's gate reaches every later query; x-transformers' can_cache_kv is False)");
    // Multi-latent attention caches its latent, (b, 1, N, dim_latent_kv), and the decoupled rope heads.
    const bool latent = a.use_latent_kv();
    const int64_t hk = latent ? 1 : o.resolved_kv_heads(a),
                  dh = latent ? a.dim_latent_kv().value_or(0) : a.dim_head();
    const int64_t value_heads = latent ? a.latent_rope_subheads().value_or(0) : hk;
    const int64_t dv = latent ? a.dim_head() : a.value_dim_head().value_or(dh);
    const auto &k = cache_kv[2 * l], &v = cache_kv[2 * l + 1];
    const int64_t len = k.dim() == 4 ? xtc::detail::static_size(k, 2) : -1;
    // Any one floating dtype: under autocast the cached keys are bf16 beside a float32 x.
    TORCH_CHECK_VALUE(k.dim() == 4 && k.sym_size(0) == x.sym_size(0) && k.sym_size(1) == hk &&
                          k.sym_size(3) == dh && v.dim() == 4 && v.sym_size(0) == x.sym_size(0) &&
                          v.sym_size(1) == value_heads && v.sym_size(2) == len && v.sym_size(3) == dv &&
                          k.is_floating_point() && v.scalar_type() == k.scalar_type() &&
                          k.device() == x.device() && v.device() == x.device(),
                      "AttentionLayers: expected cached (k, v) of attention layer ", l, " of shapes (",
                      x.sym_size(0), ", ", hk, ", N, ", dh, ") and (", x.sym_size(0), ", ", value_heads,
                      ", N, ", dv, "), of one floating dtype, on x's device, got ", k.sym_sizes(), " ",
                      k.scalar_type(), " and ", v.sym_sizes(), " ", v.scalar_type(), " on ", k.device());
    if (types[l] == 'a') {
      TORCH_CHECK_VALUE(past < 0 || past == len, "AttentionLayers: cached keys of different lengths, ", past,
                        " and ", len);
      past = len;
    }
  }
  return std::max<int64_t>(past, 0);
}

}  // namespace xtc::nn::functional::detail
