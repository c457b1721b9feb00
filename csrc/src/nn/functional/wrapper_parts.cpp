#include "src/nn/functional/wrapper_parts.h"
#include "src/symbolic_sizes.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/pow.h>

#include <cmath>

namespace xtc::nn::functional::detail {

at::Tensor find_tensor(const char* owner, const std::vector<ParameterSpec>& specs, at::TensorList params,
                       const std::string& name) {
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name != name) continue;
    TORCH_CHECK_VALUE(params[i].sizes() == c10::IntArrayRef(specs[i].shape), owner, ": expected parameter ", name,
                      " of shape ", c10::IntArrayRef(specs[i].shape), ", got ", params[i].sizes());
    return params[i];
  }
  return at::Tensor();
}

at::Tensor l2norm(const at::Tensor& x) {
  return x / at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
}

at::Tensor absolute_positions(const at::Tensor& table, const c10::SymInt& n, bool normalise) {
  const auto rows = at::embedding(table, at::arange(n, table.options().dtype(at::kLong)));
  if (normalise) return l2norm(rows);
  return rows * (1.0 / std::sqrt(static_cast<double>(table.size(1))));
}

at::Tensor scaled_sinusoidal_positions(const at::Tensor& scale, const c10::SymInt& n, int64_t dim,
                                       const at::Tensor& like) {
  const int64_t half = dim / 2;
  const auto inv_freq = at::pow(10000.0, -(at::arange(half, like.options()) / static_cast<double>(half)));
  const auto angles = at::arange(n, like.options()).unsqueeze(1) * inv_freq.unsqueeze(0);
  return at::cat({angles.sin(), angles.cos()}, -1) * scale;
}

void prepend_memory(at::Tensor& x, std::optional<at::Tensor>& mask, const at::Tensor& memory_tokens) {
  const c10::SymInt b = x.sym_size(0);
  const int64_t memory = memory_tokens.size(0);
  x = at::cat({memory_tokens.unsqueeze(0).expand_symint({b, memory, x.sym_size(2)}), x}, 1);
  if (mask.has_value()) mask = at::cat({at::ones_symint({b, memory}, mask->options()), *mask}, 1);
}

at::Tensor masked_mean(const at::Tensor& x, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return x.mean(1);
  const auto keep = mask->unsqueeze(-1).to(x.scalar_type()).expand_as(x);
  return (x * keep).sum(1) / keep.sum(1).clamp_min(1e-5);
}

AttentionLayersInputs stack_inputs(const char* wrapper, const std::optional<at::Tensor>& mask,
                                   const std::vector<at::Tensor>& cache_kv, const c10::SymInt& n,
                                   bool memory_or_pooling) {
  AttentionLayersInputs inputs{mask};
  if (cache_kv.empty()) return inputs;
  // x-transformers' can_cache_kv: memory tokens would sit between the cached keys and the new ones.
  TORCH_CHECK_VALUE(!memory_or_pooling, wrapper,
                    ": a cache cannot be combined with num_memory_tokens or average_pool_embed");
  const int64_t cached = cache_kv.front().dim() == 4 ? xtc::detail::static_size(cache_kv.front(), 2) : 0;
  TORCH_CHECK_VALUE(n > cached, wrapper, ": with a cache, pass the whole sequence so far (the ", cached,
                    " cached positions and the new ones), got ", n);
  inputs.cache_kv = cache_kv;  // positions from 0: the input holds the cached ones (x-transformers' offset 0)
  return inputs;
}

}  // namespace xtc::nn::functional::detail
