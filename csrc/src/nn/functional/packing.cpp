#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <xtc/nn/functional/packing.h>

namespace xtc::nn::functional {

PackedSequences pack_by_mask(const at::Tensor& mask) {
  PackedSequences layout;
  layout.frame_mask = mask;
  const int64_t n = mask.size(1);
  layout.indices = mask.flatten().nonzero().squeeze(1);
  const auto lengths = mask.sum(1);  // (b) int64
  if (mask.numel() == 0) {
    layout.cu_seqlens = at::zeros({mask.size(0) + 1}, lengths.options().dtype(at::kInt).device(at::kCPU));
    return layout;  // nothing kept: max_seqlen 0, consecutive
  }
  // Consecutive when each row's kept positions span exactly its length (an empty row counts as consecutive).
  const auto position = at::arange(n, mask.options().dtype(at::kLong)).unsqueeze(0);
  const auto first = at::where(mask, position, n).amin(1), last = at::where(mask, position, -1).amax(1);
  const auto span = at::where(lengths > 0, last - first + 1, 0);
  // One copy to the host (beside nonzero's): the offsets, the longest length and the consecutive flag.
  const auto summary = at::cat({at::zeros({1}, lengths.options()), at::cumsum(lengths, 0),
                                lengths.amax(0, true), span.eq(lengths).all().to(at::kLong).unsqueeze(0)})
                           .cpu();
  const int64_t b = lengths.size(0);
  layout.cu_seqlens = summary.narrow(0, 0, b + 1).to(at::kInt);
  layout.max_seqlen = summary[b + 1].item<int64_t>();
  layout.consecutive = summary[b + 2].item<int64_t>() != 0;
  return layout;
}

PackedSequences pack_by_offsets(const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t total,
                                const char* name, const char* key) {
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 && !cu_seqlens.is_floating_point() &&
                        cu_seqlens.scalar_type() != at::kBool,
                    "AttentionLayers: expected ", name, "['", key,
                    "'] of shape (batch + 1,) and an integer dtype, got ", cu_seqlens.sizes(), " ",
                    cu_seqlens.scalar_type());
  const auto offsets = cu_seqlens.to(at::kLong).cpu();
  const auto lengths = offsets.narrow(0, 1, offsets.size(0) - 1) - offsets.narrow(0, 0, offsets.size(0) - 1);
  TORCH_CHECK_VALUE(offsets[0].item<int64_t>() == 0 && offsets[-1].item<int64_t>() == total,
                    "AttentionLayers: expected ", name, "['", key, "'] from 0 to the packed length ", total,
                    ", got ", offsets[0].item<int64_t>(), " to ", offsets[-1].item<int64_t>());
  TORCH_CHECK_VALUE(lengths.numel() == 0 || lengths.min().item<int64_t>() >= 0, "AttentionLayers: expected ",
                    name, "['", key, "'] non-decreasing");
  const int64_t longest = lengths.numel() == 0 ? 0 : lengths.max().item<int64_t>();
  TORCH_CHECK_VALUE(max_seqlen >= longest, "AttentionLayers: expected ", name, "'s max_seqlen (", max_seqlen,
                    ") to bound every sequence of ", key, ", got one of ", longest);
  PackedSequences layout;
  layout.max_seqlen = longest;
  layout.cu_seqlens = offsets.to(at::kInt);
  const auto device = cu_seqlens.device();
  // Row t of sequence s sits at frame row s * longest + (t - offsets[s]).
  const auto sequence = at::arange(lengths.size(0), offsets.options()).repeat_interleave(lengths, 0, total);
  const auto local = at::arange(total, offsets.options()) - offsets.index_select(0, sequence);
  layout.indices = (sequence * longest + local).to(device);
  layout.frame_mask = (at::arange(longest, offsets.options()).unsqueeze(0) < lengths.unsqueeze(1)).to(device);
  return layout;
}

at::Tensor pack(const at::Tensor& t, const PackedSequences& layout) {
  return t.flatten(0, 1).index_select(0, layout.indices).unsqueeze(0);
}

at::Tensor unpack(const at::Tensor& t, const PackedSequences& layout) {
  auto sizes = t.sizes().vec();
  sizes.erase(sizes.begin());
  sizes[0] = layout.batch() * layout.frame_length();
  auto frame = at::zeros(sizes, t.options()).index_copy(0, layout.indices, t.squeeze(0));
  sizes[0] = layout.frame_length();
  sizes.insert(sizes.begin(), layout.batch());
  return frame.view(sizes);
}

}  // namespace xtc::nn::functional
