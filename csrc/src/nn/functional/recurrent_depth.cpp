#include "src/nn/functional/recurrent_depth.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>

#include <optional>

namespace xtc::nn::functional::detail {
namespace {

// How many times the stack runs: the forward's steps, else the options' default.
int64_t step_count(const TransformerWrapperOptions& o, const WrapperRecurrence& r, bool training) {
  TORCH_CHECK_VALUE(r.steps >= 0, "TransformerWrapper: expected recycle_steps / looped_steps > 0, got ",
                    r.steps);
  if (!o.recycling() && !o.looped()) {
    TORCH_CHECK_VALUE(
        r.steps == 0 && !r.looped_inference,
        "TransformerWrapper: recycle_steps, looped_steps and looped_inference need a wrapper built "
        "with recycling or looped");
    return 1;
  }
  TORCH_CHECK_VALUE(o.looped() || !r.looped_inference,
                    "TransformerWrapper: looped_inference needs a wrapper built with looped");
  if (r.steps > 0) return r.steps;
  if (o.looped()) return o.max_looped_steps();
  TORCH_CHECK_VALUE(
      training,
      "TransformerWrapper: `recycle_steps` must be provided on forward if recycling is turned on "
      "and not training");
  return at::randint(1, o.train_max_recycle_steps() + 1, {1}, at::TensorOptions(at::kLong)).item<int64_t>();
}

// AlphaFold2's recycling: every run but the last without gradients, each later one on x plus the projected
// (detached) previous output.
at::Tensor recycled(const at::Tensor& x, const RunStack& run, const AttentionLayersInputs& inputs,
                    const at::Tensor& recycled_proj, int64_t steps, bool training,
                    AttentionLayersHiddens* record) {
  at::Tensor attended;
  for (int64_t i = 0; i < steps; ++i) {
    const bool last = i == steps - 1;
    std::optional<c10::AutoGradMode> no_grad;
    if (!last && training) no_grad.emplace(false);  // memory only: the detach already cuts the graph
    const at::Tensor input = i == 0 ? x : x + at::linear(attended.detach(), recycled_proj);
    attended = run(input, inputs, last ? record : nullptr);
  }
  return attended;
}

// Looped inference's cache for step `step`: the prompt's keys and values of that step in place of the cached
// ones, the positions after the prompt kept.
std::vector<at::Tensor> with_prompt_kv(const std::vector<at::Tensor>& cache_kv,
                                       const std::vector<at::Tensor>& prompt_kv, int64_t step, size_t pairs) {
  const size_t per_step = 2 * pairs;
  TORCH_CHECK_VALUE(
      prompt_kv.size() % per_step == 0 && (static_cast<size_t>(step) + 1) * per_step <= prompt_kv.size(),
      "TransformerWrapper: expected the looped prompt cache to hold ", per_step,
      " keys and values for each of at least ", step + 1, " steps, got ", prompt_kv.size());
  auto kv = cache_kv;
  for (size_t j = 0; j < per_step; ++j) {
    const auto& prompt = prompt_kv[step * per_step + j];
    const int64_t length = prompt.size(-2);
    kv[j] = at::cat({prompt, cache_kv[j].narrow(-2, length, cache_kv[j].size(-2) - length)}, -2);
  }
  return kv;
}

// The looped LM's early exit (batch 1, one token): adds this step's exit probability, the product of the
// earlier steps' continue probabilities times this one's exit probability, and says whether the sum reached
// the threshold.
bool exits_early(const at::Tensor& exit_logits, at::Tensor& cum_exit, at::Tensor& cum_continue_log,
                 double threshold) {
  TORCH_CHECK_VALUE(
      exit_logits.numel() == 1,
      "TransformerWrapper: looped inference decodes one token of one sequence, got exit logits of "
      "shape ",
      exit_logits.sizes());
  const auto step_exit = (cum_continue_log + at::log_sigmoid(exit_logits)).exp();
  cum_exit = cum_exit.defined() ? cum_exit + step_exit : step_exit;
  cum_continue_log = cum_continue_log + at::log_sigmoid(-exit_logits);
  return cum_exit.ge(threshold).item<bool>();
}

// Step i's stack inputs with a cache: looped inference's prompt keys of the step, and from the second step
// on, which runs on the last step's output (the new positions alone), positions after the cached ones.
void set_step_cache(AttentionLayersInputs& step, const AttentionLayersInputs& inputs,
                    const WrapperRecurrence& r, int64_t i, size_t pairs) {
  if (inputs.cache_kv.empty()) return;
  if (!r.prompt_kv.empty()) step.cache_kv = with_prompt_kv(inputs.cache_kv, r.prompt_kv, i, pairs);
  if (i > 0) step.cache_length = inputs.cache_kv.front().size(-2);
}

// A looped step's output, exit logits and (a prompt's) keys and values into the wrapper's record.
void record_step(TransformerWrapperRecord& out, const at::Tensor& x, const at::Tensor& exit_logits,
                 const AttentionLayersHiddens* step, size_t pairs) {
  out.step_outputs.push_back(x);
  if (exit_logits.defined()) out.exit_logits.push_back(exit_logits);
  if (step != nullptr)
    out.looped_prompt_kv.insert(out.looped_prompt_kv.end(), step->cached_kv.begin(),
                                step->cached_kv.begin() + static_cast<int64_t>(2 * pairs));
}

// The looped LM: each step runs on the previous one's output; exit_gate's logits for training, or for the
// early exit of a decoded token.
at::Tensor looped(at::Tensor x, const RunStack& run, const AttentionLayersInputs& inputs,
                  const TransformerWrapperPlan& plan, const at::Tensor& exit_gate, int64_t steps,
                  const WrapperRecurrence& r, bool prompt, AttentionLayersHiddens* record,
                  TransformerWrapperRecord* wrapper_record) {
  TORCH_CHECK_VALUE(!r.looped_inference || x.size(0) == 1,
                    "TransformerWrapper: looped inference decodes one sequence at a time, got a batch of ",
                    x.size(0));
  const size_t pairs = plan.layers().executed_attention_types().size();
  const bool keeps_prompt = r.looped_inference && prompt && wrapper_record != nullptr;
  at::Tensor cum_exit, cum_continue_log = at::zeros({}, x.options());
  AttentionLayersInputs step_inputs = inputs;
  for (int64_t i = 0; i < steps; ++i) {
    set_step_cache(step_inputs, inputs, r, i, pairs);
    AttentionLayersHiddens step_record;
    x = run(x, step_inputs, record != nullptr || keeps_prompt ? &step_record : nullptr);
    const bool decides = r.looped_inference && !prompt && r.exit_threshold.has_value() && i < steps - 1;
    const at::Tensor exit_logits = !r.looped_inference || decides ? at::linear(x, exit_gate) : at::Tensor();
    if (wrapper_record != nullptr)
      record_step(*wrapper_record, x, exit_logits, keeps_prompt ? &step_record : nullptr, pairs);
    if (record != nullptr) *record = std::move(step_record);
    if (decides && exits_early(exit_logits, cum_exit, cum_continue_log, *r.exit_threshold)) break;
  }
  return x;
}

}  // namespace

at::Tensor recurrent_depth(const at::Tensor& x, const RunStack& run, const AttentionLayersInputs& inputs,
                           const TransformerWrapperPlan& plan, const at::Tensor& weight, bool training,
                           const WrapperRecurrence& recurrence, bool prompt, AttentionLayersHiddens* record,
                           TransformerWrapperRecord* wrapper_record) {
  const auto& o = plan.options();
  const int64_t steps = step_count(o, recurrence, training);
  if (o.recycling()) return recycled(x, run, inputs, weight, steps, training, record);
  if (o.looped())
    return looped(x, run, inputs, plan, weight, steps, recurrence, prompt, record, wrapper_record);
  return run(x, inputs, record);
}

}  // namespace xtc::nn::functional::detail
