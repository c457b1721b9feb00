#include "src/nn/functional/wrapper_parts.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/pow.h>
#include <xtc/nn/functional/context_parallel.h>

#include <algorithm>
#include <cmath>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

int64_t WrapperCache::cached_length() const {
  return !kv.empty() && kv.front().dim() == 4 ? xtc::detail::static_size(kv.front(), 2) : 0;
}

}  // namespace xtc::nn::functional

namespace xtc::nn::functional::detail {

at::Tensor find_tensor(const char* owner, const std::vector<ParameterSpec>& specs, at::TensorList params,
                       const std::string& name) {
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name != name) continue;
    TORCH_CHECK_VALUE(params[i].sizes() == c10::IntArrayRef(specs[i].shape), owner, ": expected parameter ",
                      name, " of shape ", c10::IntArrayRef(specs[i].shape), ", got ", params[i].sizes());
    return params[i];
  }
  return at::Tensor();
}

int64_t layout_offset(const char* owner, const std::vector<ParameterSpec>& specs, const std::string& prefix) {
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].name.rfind(prefix, 0) == 0) return static_cast<int64_t>(i);
  TORCH_INTERNAL_ASSERT(false, owner, ": its layout has nothing under ", prefix);
}

std::vector<ParameterSpec> sublayout(const std::vector<ParameterSpec>& layout, const std::string& prefix) {
  std::vector<ParameterSpec> out;
  for (const auto& spec : layout)
    if (spec.name.rfind(prefix, 0) == 0)
      out.push_back({spec.name.substr(prefix.size()), spec.shape, spec.buffer});
  return out;
}

at::Tensor l2norm(const at::Tensor& x) {
  return x / at::linalg_vector_norm(x, 2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
}

c10::SymInt positions_end(const c10::SymInt& n, int64_t offset, c10::Device device) {
  const ContextParallel* sharded = current_context_parallel();
  if (sharded == nullptr) return n + offset;
  // Sharded, the whole sequence's end, agreed by every rank (no cache, so no offset): all raise alike.
  return agreed_sequence_length(*sharded, n.guard_int(__FILE__, __LINE__), device);
}

void refuse_when_sharded(const char* wrapper, std::initializer_list<std::pair<const char*, bool>> used) {
  if (current_context_parallel() == nullptr) return;
  for (const auto& [name, is_used] : used)
    TORCH_CHECK_VALUE(!is_used, "context_parallel: ", wrapper, "'s ", name,
                      " needs the whole sequence in one place, so it cannot run sharded");
}

at::Tensor wrapper_positions(const char* wrapper, const c10::SymInt& n, const AttentionLayersInputs& inputs,
                             const at::Tensor& like, bool clamp, int64_t offset) {
  const auto options = like.options().dtype(at::kLong);
  const ContextParallel* sharded = current_context_parallel();
  at::Tensor positions = sharded != nullptr
                             ? positions_of(shard_chunks(*sharded, n.guard_int(__FILE__, __LINE__)), options)
                             : at::arange(n, options) + offset;
  if (inputs.pos.has_value()) {
    const auto& pos = *inputs.pos;
    TORCH_CHECK_VALUE(!pos.is_floating_point() && pos.scalar_type() != at::kBool && pos.sym_size(-1) == n &&
                          (pos.dim() == 1 || (pos.dim() == 2 && pos.sym_size(0) == like.sym_size(0))),
                      wrapper, ": expected pos of shape (", n, ") or (", like.sym_size(0), ", ", n,
                      ") and an integer dtype, got ", pos.sym_sizes(), " ", pos.scalar_type());
    positions = pos.to(at::kLong);
  }
  if (inputs.seq_start_pos.has_value()) {
    const auto& start = *inputs.seq_start_pos;
    TORCH_CHECK_VALUE(start.dim() == 1 && start.sym_size(0) == like.sym_size(0) && !start.is_floating_point(),
                      wrapper, ": expected seq_start_pos of shape (", like.sym_size(0),
                      ") and an integer dtype, got ", start.sym_sizes(), " ", start.scalar_type());
    positions = positions - start.to(at::kLong).unsqueeze(1);
    if (clamp) positions = positions.clamp_min(0);
  }
  return positions;
}

at::Tensor absolute_positions(const at::Tensor& table, const at::Tensor& positions, bool normalise) {
  const auto rows = at::embedding(table, positions);
  if (normalise) return l2norm(rows);
  return rows * (1.0 / std::sqrt(static_cast<double>(table.size(1))));
}

at::Tensor scaled_sinusoidal_positions(const at::Tensor& scale, const at::Tensor& positions, int64_t dim,
                                       const at::Tensor& like) {
  const int64_t half = dim / 2;
  const auto inv_freq = at::pow(10000.0, -(at::arange(half, like.options()) / static_cast<double>(half)));
  const auto angles = positions.to(like.scalar_type()).unsqueeze(-1) * inv_freq;
  return at::cat({angles.sin(), angles.cos()}, -1) * scale;
}

void prepend_memory(at::Tensor& x, std::optional<at::Tensor>& mask, const at::Tensor& memory_tokens) {
  const c10::SymInt b = x.sym_size(0);
  const int64_t memory = memory_tokens.size(0);
  x = at::cat({memory_tokens.unsqueeze(0).expand_symint({b, memory, x.sym_size(2)}), x}, 1);
  if (mask.has_value()) mask = at::cat({at::ones_symint({b, memory}, mask->options()), *mask}, 1);
}

at::Tensor add_sum_embeds(const char* wrapper, const at::Tensor& x,
                          const std::optional<at::Tensor>& sum_embeds) {
  if (!sum_embeds.has_value()) return x;
  const auto& sum = *sum_embeds;
  const c10::SymInt n = x.sym_size(1), width = x.sym_size(2);
  TORCH_CHECK_VALUE(
      sum.dim() >= 1 && sum.dim() <= 3 && sum.sym_size(-1) == width && sum.scalar_type() == x.scalar_type() &&
          sum.device() == x.device() && (sum.dim() < 2 || sum.sym_size(-2) == n || sum.sym_size(-2) == 1) &&
          (sum.dim() < 3 || sum.sym_size(0) == x.sym_size(0) || sum.sym_size(0) == 1),
      wrapper, ": expected sum_embeds broadcastable to (", x.sym_size(0), ", ", n, ", ", width,
      ") like the embeddings (", x.scalar_type(), "), got ", sum.sym_sizes(), " ", sum.scalar_type());
  return x + sum;
}

void check_prepend_embeds(const char* wrapper, const at::Tensor& front, const at::Tensor& x) {
  TORCH_CHECK_VALUE(
      front.dim() == 3 && front.sym_size(0) == x.sym_size(0) && front.sym_size(2) == x.sym_size(2) &&
          front.scalar_type() == x.scalar_type() && front.device() == x.device(),
      wrapper, ": expected prepend_embeds of shape (", x.sym_size(0), ", prefix, ", x.sym_size(2),
      ") like the embeddings (", x.scalar_type(), "), got ", front.sym_sizes(), " ", front.scalar_type());
}

std::optional<at::Tensor> mask_with_prepend(const char* wrapper, const std::optional<at::Tensor>& mask,
                                            const std::optional<at::Tensor>& prepend_embeds,
                                            const std::optional<at::Tensor>& prepend_mask,
                                            const c10::SymInt& b, const c10::SymInt& n,
                                            const at::Tensor& like) {
  TORCH_CHECK_VALUE(prepend_embeds.has_value() || !prepend_mask.has_value(), wrapper,
                    ": prepend_mask was passed in without prepend_embeds");
  if (!prepend_embeds.has_value() || !(mask.has_value() || prepend_mask.has_value())) return mask;
  const c10::SymInt prepended = prepend_embeds->sym_size(1);
  const auto ones = [&](const c10::SymInt& len) {
    return at::ones_symint({b, len}, like.options().dtype(at::kBool));
  };
  const auto& pm = prepend_mask;
  TORCH_CHECK_VALUE(!pm.has_value() || (pm->scalar_type() == at::kBool && pm->dim() == 2 &&
                                        pm->sym_size(0) == b && pm->sym_size(1) == prepended),
                    wrapper, ": expected prepend_mask of shape (", b, ", ", prepended, ") and dtype bool");
  return at::cat({pm.has_value() ? *pm : ones(prepended), mask.has_value() ? *mask : ones(n)}, 1);
}

at::Tensor masked_mean(const at::Tensor& x, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return x.mean(1);
  const auto keep = mask->unsqueeze(-1).to(x.scalar_type()).expand_as(x);
  return (x * keep).sum(1) / keep.sum(1).clamp_min(1e-5);
}

AttentionLayersInputs stack_inputs(const char* wrapper, const AttentionLayersInputs& given,
                                   const std::optional<at::Tensor>& mask, const WrapperCache& cache,
                                   const c10::SymInt& n, bool memory, bool pooling) {
  AttentionLayersInputs inputs = given;
  inputs.mask = mask;
  // The stack's per-token inputs would not cover the memory tokens in front (x-transformers pads only the
  // mask).
  TORCH_CHECK_VALUE(!memory || !(given.attn_mask || given.self_attn_kv_mask || given.seq_start_pos ||
                                 given.attn_bias || given.pos || !given.mems.empty()),
                    wrapper,
                    ": attn_mask, self_attn_kv_mask, seq_start_pos, attn_bias, pos and mems cannot be "
                    "combined with num_memory_tokens or use_cls_token (tokens in front of the sequence)");
  if (cache.kv.empty()) return inputs;
  // x-transformers' can_cache_kv: memory tokens would sit between the cached keys and the new ones.
  TORCH_CHECK_VALUE(
      !memory && !pooling, wrapper,
      ": a cache cannot be combined with num_memory_tokens, use_cls_token or average_pool_embed");
  const int64_t cached = cache.cached_length();
  inputs.cache_kv = cache.kv;
  if (cache.input_not_include_cache) {
    // Only new tokens: their positions follow the cached ones (x-transformers' seq_pos_offset =
    // cache_length).
    TORCH_CHECK_VALUE(n > 0, wrapper, ": with input_not_include_cache, pass at least one new position");
    inputs.cache_length = cached;
    return inputs;
  }
  TORCH_CHECK_VALUE(n > cached, wrapper, ": with a cache, pass the whole sequence so far (the ", cached,
                    " cached positions and the new ones), got ", n,
                    " (or set input_not_include_cache to pass the new ones alone)");
  return inputs;  // positions from 0: the input holds the cached ones (x-transformers' offset 0)
}

}  // namespace xtc::nn::functional::detail
