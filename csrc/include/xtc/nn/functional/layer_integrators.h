// x-transformers' layer integrators: a layer's input built from every earlier layer's input (DynamicLIMe,
// integrate_layers; AttentionResidual, attn_aggregated_residuals), on explicit parameters.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace xtc::nn::functional {

/// DynamicLIMe's tensors: its RMSNorm's gain `g` (d) and the Linear to the weights, (v L, d) and (v L).
struct DynamicLIMeWeights {
  at::Tensor norm_gain, weight, bias;
};

/// LIMe (arXiv 2502.09245): per token, `hiddens` (L of (b, n, d): the earlier layers' inputs, x's last)
/// mixed by weights from normed x, through a softmax over the layers (else a ReLU): (b, n, d), or (v, b, n,
/// d) for v > 1 views.
at::Tensor dynamic_lime(const at::Tensor& x, at::TensorList hiddens, const DynamicLIMeWeights& w,
                        int64_t views, bool softmax);

/// AttentionResidual's tensors: the torch RMSNorms' weights (d) of the keys, the query's input and the
/// query, and its query LoRA, (r, d) and (v d, r).
struct AttentionResidualWeights {
  at::Tensor key_norm, query_input_norm, query_norm, lora_down, lora_up;
};

/// Attention residuals (arXiv 2601.21582): per token, `hiddens` (L of (b, n, d), the latest last) pooled by a
/// softmax over the layers of query . key / sqrt(d); the keys the normed hiddens, the query the normed latest
/// plus a LoRA of it (`lora_activation` inside, a spec of functional/activation.h). (b, n, d), or (v, b, n,
/// d).
at::Tensor attention_residual(at::TensorList hiddens, const AttentionResidualWeights& w, int64_t views,
                              const std::optional<std::string>& lora_activation);

}  // namespace xtc::nn::functional
