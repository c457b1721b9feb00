// x-transformers' hybrid module (Hymba, arXiv 2411.13676): a recurrent network (torch.nn.GRU or LSTM) run
// over the attention block's input beside attention, its output normed and mixed into the attention heads.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace xtc::nn::functional {

/// A torch GRU or LSTM as an option: "gru|lstm:input:hidden:layers:bias:batch_first:dropout:bidirectional:
/// proj_size:init", the flags 0 or 1, init "torch" (torch's uniform draw) or "given" (the caller fills the
/// weights, as x-transformers copies one module into every layer).
struct RecurrentSpec {
  bool lstm = false;
  int64_t input_size = 0, hidden_size = 0, num_layers = 1, proj_size = 0;
  bool bias = true, batch_first = false, bidirectional = false, given_weights = false;
  double dropout = 0.0;

  /// Features of each output step: (proj_size or hidden_size) x directions.
  int64_t output_size() const { return (proj_size > 0 ? proj_size : hidden_size) * (bidirectional ? 2 : 1); }
  /// torch's flat weight names in its order (weight_ih_l0, weight_hh_l0, bias_ih_l0, ..., the _reverse
  /// direction after each layer's forward one), with their shapes.
  std::vector<std::pair<std::string, std::vector<int64_t>>> weights() const;
};

/// Parses and checks a spec; errors name `option`.
RecurrentSpec parse_recurrent_spec(const std::string& option, const std::string& spec);

/// The hybrid's tensors: the recurrent weights in RecurrentSpec::weights() order, the two MultiheadRMSNorm
/// gammas (h, 1, dh) of the attention heads and of the hybrid's, and hybrid_learned_mix's (h, dim) weight
/// (undefined: the mean of the two).
struct HybridWeights {
  std::vector<at::Tensor> recurrent;
  at::Tensor out_norm, hybrid_norm, mix;
};

/// x-transformers' hybrid step on the attention heads `heads` (b, n, h, dh) of input x (b, n, dim): the
/// recurrent network over x (the sequence folded into `fold` interleaved subsequences, x-transformers'
/// FoldAxially; x passed as is, so batch_first=False reads the batch as time), its output split into heads;
/// both norms, then their learned per-head mix (sigmoid) or mean. `hidden`: when given, the GRU's initial
/// state on entry (undefined = zeros) and its final one on return (x-transformers' hybrid_hidden, the
/// cache's).
at::Tensor hybrid_heads(const at::Tensor& heads, const at::Tensor& x, const HybridWeights& w,
                        const RecurrentSpec& spec, int64_t fold, bool training, at::Tensor* hidden = nullptr);

}  // namespace xtc::nn::functional
