#include "src/nn/functional/additional_kv.h"

#include <algorithm>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional::detail {

// self_attn_additional_kv as pairs, one per executed self-attention layer in order (undefined pairs: none),
// x-transformers' routing: the given pairs go to the last layers (route_additional_kv_to_top, the surplus
// first ones dropped) or to the first.
std::vector<std::pair<at::Tensor, at::Tensor>> additional_kv_per_layer(const AttentionLayersInputs& in,
                                                                       const AttentionLayersPlan& plan,
                                                                       const at::Tensor& x) {
  const auto& flat = in.self_attn_additional_kv;
  if (flat.empty()) return {};
  const auto& o = plan.options();
  TORCH_CHECK_VALUE(flat.size() % 2 == 0,
                    "AttentionLayers: expected self_attn_additional_kv as (k, v) pairs "
                    "flattened [k0, v0, k1, v1, ...], got ",
                    flat.size(), " tensors");
  const auto& types = plan.executed_attention_types();
  const int64_t layers = std::count(types.begin(), types.end(), 'a');
  const int64_t pairs = static_cast<int64_t>(flat.size() / 2);
  const int64_t dim_head = o.attn().dim_head(), value_dim_head = o.attn().value_dim_head().value_or(dim_head);
  for (int64_t i = 0; i < pairs; ++i) {
    const auto &k = flat[2 * i], &v = flat[2 * i + 1];
    TORCH_CHECK_VALUE(k.dim() == 4 && v.dim() == 4 && k.sym_size(0) == x.sym_size(0) &&
                          v.sym_size(0) == x.sym_size(0) && k.sym_size(1) == v.sym_size(1) &&
                          k.sym_size(2) == v.sym_size(2) && k.sym_size(3) == dim_head &&
                          v.sym_size(3) == value_dim_head && xtc::detail::static_size(k, 1) > 0 &&
                          o.heads() % xtc::detail::static_size(k, 1) == 0 && k.is_floating_point() &&
                          v.is_floating_point() && k.device() == x.device() && v.device() == x.device(),
                      "AttentionLayers: expected self_attn_additional_kv pair ", i, " as k (", x.sym_size(0),
                      ", kv heads dividing ", o.heads(), ", length, ", dim_head, ") and v (", x.sym_size(0),
                      ", the same heads and length, ", value_dim_head, "), float on x's device, got ",
                      k.sym_sizes(), " and ", v.sym_sizes());
  }
  if (in.additional_kv_mask.has_value()) {
    const auto& m = *in.additional_kv_mask;
    TORCH_CHECK_VALUE(m.dim() == 2 && m.scalar_type() == at::kBool && m.sym_size(0) == x.sym_size(0) &&
                          m.sym_size(1) == flat.front().sym_size(2),
                      "AttentionLayers: expected additional_kv_mask of shape (", x.sym_size(0), ", ",
                      flat.front().sym_size(2), ") bool, got ", m.sym_sizes(), " ", m.scalar_type());
  }
  std::vector<std::pair<at::Tensor, at::Tensor>> per_layer(layers);
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t pair = in.route_additional_kv_to_top ? l - layers + pairs : l;
    if (pair >= 0 && pair < pairs) per_layer[l] = {flat[2 * pair], flat[2 * pair + 1]};
  }
  if (o.residual_attn()) {
    // Each layer adds the previous one's scores: every layer needs as many keys.
    bool same = true;
    for (const auto& [k, v] : per_layer)
      same = same && k.defined() && k.sym_size(2) == per_layer.front().first.sym_size(2);
    TORCH_CHECK_VALUE(
        same,
        "AttentionLayers: self_attn_additional_kv with residual_attn needs a pair of one length "
        "for every self-attention layer (",
        layers,
        "), since each layer adds the previous one's "
        "scores; got ",
        pairs, " pairs");
  }
  return per_layer;
}

}  // namespace xtc::nn::functional::detail
