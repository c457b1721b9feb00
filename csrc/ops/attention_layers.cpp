// The layer-stack op. Its kernel is CompositeImplicitAutograd: it runs xtc::nn::functional::attention_layers, whose
// aten and xtc::flash_attention calls carry autograd, while tracers record the stack as a single node.
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/ops/attention_layers.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mutex>
#include <unordered_map>

namespace xtc::ops {
namespace {

// Parsing the options string is cheap, but a forward pass should not pay it every call.
const nn::AttentionLayersOptions& parsed_options(const std::string& text) {
  static std::mutex lock;
  static std::unordered_map<std::string, std::unique_ptr<nn::AttentionLayersOptions>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& slot = cache[text];
  if (!slot) slot = std::make_unique<nn::AttentionLayersOptions>(nn::AttentionLayersOptions::parse(text));
  return *slot;
}

at::Tensor attention_layers_kernel(const at::Tensor& x, const std::optional<at::Tensor>& mask, at::TensorList params,
                                   c10::string_view options, bool training) {
  return nn::functional::attention_layers(x, mask, params, parsed_options(std::string(options)), training);
}

}  // namespace

at::Tensor attention_layers(const at::Tensor& x, const std::optional<at::Tensor>& mask, at::TensorList params,
                            const std::string& options, bool training) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("xtc::attention_layers", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, at::TensorList,
                                         c10::string_view, bool)>();
  return op.call(x, mask, params, options, training);
}

}  // namespace xtc::ops

TORCH_LIBRARY_FRAGMENT(xtc, m) {
  m.def("attention_layers(Tensor x, Tensor? mask, Tensor[] params, str options, bool training=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(xtc, CompositeImplicitAutograd, m) {
  m.impl("attention_layers", &xtc::ops::attention_layers_kernel);
}
