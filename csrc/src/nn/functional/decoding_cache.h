// Incremental decoding: the checks of x-transformers' cached_kv as a call hands it in. Internal to the
// library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>

#include <optional>
#include <vector>

namespace xtc::nn::functional::detail {

/// Checks a cache (one (k, v) pair per executed attention layer, (b, hk, N, dh) and (b, hk, N, dv)) against
/// the stack and the call; returns the cached length of the self-attention keys.
int64_t check_cache(const std::vector<at::Tensor>& cache_kv, const at::Tensor& x,
                    const AttentionLayersInputs& in, const AttentionLayersPlan& plan, bool training);

}  // namespace xtc::nn::functional::detail
