// How xtc's modules make their tensors: on the CPU, initialised as x-transformers does, or, under
// MetaConstruction, on the meta device (shapes, names and order only: nothing allocated, no random draw).
// LibTorch has no default device as Python's torch.device("meta") context is, so every module of this
// library, the torch.nn layers it builds on included (torch_layers.h), allocates through module_tensor().
// The parameter layout the functional layer reads is then the module tree's own (layout_of), never declared
// a second time beside it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/nn/module.h>
#include <xtc/nn/functional/attention_layers.h>

#include <cmath>
#include <string>
#include <vector>

namespace xtc::nn {

/// While alive, xtc modules constructed on this thread hold meta tensors. Nests. The tensor calls run below
/// every dispatch key above the backends (autograd, vmap, Python modes, autocast, tracing): a module tree on
/// meta is metadata, built the same inside any transform (the ops build their plans in their kernels, where
/// vmap would refuse the initialisers' random calls).
class MetaConstruction {
 public:
  MetaConstruction();
  ~MetaConstruction();
  MetaConstruction(const MetaConstruction&) = delete;
  MetaConstruction& operator=(const MetaConstruction&) = delete;

 private:
  bool previous_;
  c10::impl::ExcludeDispatchKeyGuard below_transforms_;
};

/// A module's new float tensor of `shape`, uninitialised: on the CPU, or on meta under MetaConstruction.
/// Initialise it in place (fill_, normal_, torch::nn::init::*): those run on meta tensors too, drawing
/// nothing.
at::Tensor module_tensor(at::IntArrayRef shape);

/// Every parameter and buffer of `module` in torch's state_dict order (a module's own parameters, its own
/// buffers, then its children's, recursively), under their dotted names.
std::vector<functional::ParameterSpec> layout_of(const torch::nn::Module& module);

/// x-transformers' init_depth_scaled_: the standard deviation 1 / sqrt(2 fan_in depth) of a residual branch's
/// output projection at `depth` (OLMo's "mitchell" init).
inline double depth_scaled_std(int64_t fan_in, int64_t depth) {
  return 1.0 / std::sqrt(2.0 * static_cast<double>(fan_in) * static_cast<double>(depth));
}

}  // namespace xtc::nn
