#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <xtc/nn/functional/shift_tokens.h>

#include <vector>

#include "src/symbolic_sizes.h"

namespace xtc::nn::functional {

at::Tensor shift_tokens(const at::Tensor& x, int64_t s, bool causal, const std::optional<at::Tensor>& mask) {
  std::vector<int64_t> shifts;
  for (int64_t amount = causal ? 0 : -s; amount <= s; ++amount) shifts.push_back(amount);
  const int64_t per_shift = xtc::detail::static_size(x, -1) / static_cast<int64_t>(shifts.size());
  const c10::SymInt n = x.sym_size(1);
  const auto position = at::arange(n, x.options().dtype(at::kLong));
  auto pieces = x.split(per_shift, -1);
  for (size_t i = 0; i < shifts.size() && i < pieces.size(); ++i) {
    if (shifts[i] == 0) continue;
    auto piece = mask.has_value() ? pieces[i].masked_fill(mask->logical_not().unsqueeze(-1), 0) : pieces[i];
    // Position t takes t - shift, zero where that falls outside the sequence. A gather keeps every
    // intermediate at length n (slices of n - shift would make torch.compile guard on their sizes).
    const auto source = position - shifts[i];
    const auto outside = source.lt(0).logical_or(source.ge(n));
    pieces[i] = piece.index_select(1, source.clamp(0, n - 1)).masked_fill(outside.view({1, -1, 1}), 0);
  }
  return at::cat(pieces, -1);
}

}  // namespace xtc::nn::functional
