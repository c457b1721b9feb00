// What the *_with_hiddens ops (xtc::attention_layers_with_hiddens and the two wrappers') return: the output
// and the stack's intermediates, in the order of their schemas' (Tensor, Tensor[], Tensor[], Tensor[],
// Tensor[]).
#pragma once

#include <xtc/nn/functional/attention_layers.h>

#include <tuple>
#include <utility>
#include <vector>

namespace xtc::ops::detail {

using LayerHiddensResult = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                                      std::vector<at::Tensor>, std::vector<at::Tensor>>;

/// out, hiddens, layer_hiddens, cached_kv, attention maps.
inline LayerHiddensResult layer_hiddens_result(at::Tensor out,
                                               nn::functional::AttentionLayersHiddens record) {
  return {std::move(out), std::move(record.hiddens), std::move(record.layer_hiddens),
          std::move(record.cached_kv), std::move(record.attn_maps)};
}

}  // namespace xtc::ops::detail
