#include <ATen/ops/empty.h>
#include <xtc/nn/modules/construction.h>

namespace xtc::nn {
namespace {

thread_local bool on_meta = false;

// Every functionality above BackendSelect (PythonDispatcher included, which FULL_AFTER keeps).
c10::DispatchKeySet above_backends() {
  const auto backends = c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::BackendSelect)
                            .remove(c10::DispatchKey::PythonDispatcher)
                            .add(c10::DispatchKey::BackendSelect);
  return c10::DispatchKeySet(c10::DispatchKeySet::FULL) - backends;
}

void append_layout(const torch::nn::Module& module, const std::string& prefix,
                   std::vector<functional::ParameterSpec>& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/false))
    out.push_back({prefix + p.key(), p.value().sizes().vec(), /*buffer=*/false});
  for (const auto& b : module.named_buffers(/*recurse=*/false))
    out.push_back({prefix + b.key(), b.value().sizes().vec(), /*buffer=*/true});
  for (const auto& child : module.named_children())
    append_layout(*child.value(), prefix + child.key() + ".", out);
}

}  // namespace

MetaConstruction::MetaConstruction() : previous_(on_meta), below_transforms_(above_backends()) {
  on_meta = true;
}

MetaConstruction::~MetaConstruction() { on_meta = previous_; }

at::Tensor module_tensor(at::IntArrayRef shape) {
  return on_meta ? at::empty(shape, at::TensorOptions().device(at::kMeta)) : at::empty(shape);
}

std::vector<functional::ParameterSpec> layout_of(const torch::nn::Module& module) {
  std::vector<functional::ParameterSpec> out;
  append_layout(module, "", out);
  return out;
}

}  // namespace xtc::nn
