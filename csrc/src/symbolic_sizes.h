// Reading sizes of tensors that may carry symbolic sizes (torch.export, torch.compile with dynamic shapes,
// fake tensors). Tensor::size(d) on such a tensor reads every size as an int and so specialises all of them;
// code on that path reads sym_size(d), and a size that must be concrete (a model width, a head count) through
// static_size, which specialises that one size only.
#pragma once

#include <ATen/core/Tensor.h>

namespace xtc::detail {

inline int64_t static_size(const at::Tensor& t, int64_t d) {
  return t.sym_size(d).guard_int(__FILE__, __LINE__);
}

}  // namespace xtc::detail
