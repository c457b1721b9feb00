// x-transformers' recurrent depth around a TransformerWrapper's stack: AlphaFold2's recycling and the looped
// LM. Internal to the library.
#pragma once

#include <xtc/nn/functional/transformer_wrapper.h>

#include <functional>

namespace xtc::nn::functional::detail {

/// The stack on x with these inputs, recording into the given intermediates (or none).
using RunStack =
    std::function<at::Tensor(const at::Tensor&, const AttentionLayersInputs&, AttentionLayersHiddens*)>;

/// The stack's output for x as the wrapper's options ask: one run, recycling's runs on x plus the projected
/// previous output (`recycled_proj`), or looped runs each on the last one's output (`exit_gate`'s logits
/// beside). `inputs` are the stack's for the call; `prompt` whether looped inference runs a prompt. `record`
/// receives the last run's intermediates, `wrapper_record` the looped steps'.
at::Tensor recurrent_depth(const at::Tensor& x, const RunStack& run, const AttentionLayersInputs& inputs,
                           const TransformerWrapperPlan& plan, const at::Tensor& weight, bool training,
                           const WrapperRecurrence& recurrence, bool prompt, AttentionLayersHiddens* record,
                           TransformerWrapperRecord* wrapper_record);

}  // namespace xtc::nn::functional::detail
