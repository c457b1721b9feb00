// The ContinuousTransformerWrapper op: wrapper and layer stack as one CompositeImplicitAutograd node, like
// xtc::attention_layers.
#include <xtc/nn/functional/continuous.h>

#include <torch/library.h>

#include <mutex>
#include <unordered_map>

namespace xtc::ops {
namespace {

const nn::functional::ContinuousTransformerPlan& plan_for(const std::string& wrapper, const std::string& layers) {
  static std::mutex lock;
  static std::unordered_map<std::string, std::unique_ptr<const nn::functional::ContinuousTransformerPlan>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& slot = cache[wrapper + "|" + layers];
  if (!slot)
    slot = std::make_unique<const nn::functional::ContinuousTransformerPlan>(
        nn::ContinuousTransformerWrapperOptions::parse(wrapper), nn::AttentionLayersOptions::parse(layers));
  return *slot;
}

at::Tensor continuous_transformer_kernel(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                         const std::optional<at::Tensor>& lens, at::TensorList params,
                                         c10::string_view options, c10::string_view layer_options, bool training,
                                         bool return_embeddings) {
  return nn::functional::continuous_transformer(
      x, mask, lens, params, plan_for(std::string(options), std::string(layer_options)), training, return_embeddings);
}

}  // namespace
}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def(
      "continuous_transformer(Tensor x, Tensor? mask, Tensor? lens, Tensor[] params, str options, str layer_options, "
      "bool training=False, bool return_embeddings=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("continuous_transformer", &xtc::ops::continuous_transformer_kernel);
}
