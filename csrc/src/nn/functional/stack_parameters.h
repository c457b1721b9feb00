// The parameters of one call of the layer stack, fetched by their x-transformers state_dict names, and the
// weight structs of each block read from them. Internal to the library.
#pragma once

#include <xtc/nn/functional/attention.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/feedforward.h>
#include <xtc/nn/functional/layer_integrators.h>
#include <xtc/nn/functional/norm.h>
#include <xtc/nn/functional/positional.h>
#include <xtc/nn/functional/residual.h>

#include <string>

namespace xtc::nn::functional::detail {

/// The parameters of one call, checked against the plan (count, shapes, x's dtype and device) and fetched by
/// state_dict name (undefined where the options leave one out).
class StackParameters {
 public:
  StackParameters(const AttentionLayersPlan& plan, at::TensorList params, const at::Tensor& x);
  at::Tensor get(const std::string& name) const;

 private:
  const AttentionLayersPlan& plan_;
  at::TensorList params_;
};

/// The tensors of the attention block, feed-forward block, residual and norm under `prefix`.
/// `a`: the block's options, for the hybrid module's weight names.
AttentionWeights attention_weights(const StackParameters& p, const std::string& prefix,
                                   const AttentionOptions& a);
FeedForwardWeights feed_forward_weights(const StackParameters& p, const std::string& prefix,
                                        const FeedForwardOptions& f);
ResidualWeights residual_weights(const StackParameters& p, const std::string& prefix);
HyperConnectionWeights hyper_connection_weights(const StackParameters& p, const std::string& prefix);
GatedMultiResidualWeights gated_multi_residual_weights(const StackParameters& p, const std::string& prefix);
DynamicLIMeWeights dynamic_lime_weights(const StackParameters& p, const std::string& prefix);
AttentionResidualWeights attention_residual_weights(const StackParameters& p, const std::string& prefix);
NormWeights norm_weights(const StackParameters& p, const std::string& prefix, NormKind kind);
/// rel_pos.mlp.* of dynamic_pos_bias.
DynamicPositionBiasWeights dynamic_position_bias_weights(const StackParameters& p,
                                                         const AttentionLayersOptions& o);

}  // namespace xtc::nn::functional::detail
