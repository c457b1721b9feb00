#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <xtc/nn/functional/context_parallel.h>

#include <algorithm>
#include <numeric>
#include <sstream>

namespace xtc::nn::functional {
namespace {

thread_local const ContextParallel* current = nullptr;

// torch's functional collectives, through the dispatcher (boxed: their C++ signatures are not ours to fix).
at::Tensor call_collective(const char* name, std::vector<c10::IValue> arguments) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  torch::jit::Stack stack(std::make_move_iterator(arguments.begin()),
                          std::make_move_iterator(arguments.end()));
  op.callBoxed(&stack);
  const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional::wait_tensor", "");
  torch::jit::Stack waited{stack.front()};
  handle.callBoxed(&waited);
  return waited.front().toTensor();
}

// Every rank's t (rows, ...) stacked along dim 0 in rank order, (W rows, ...).
at::Tensor all_gather_rows(const at::Tensor& t, const ContextParallel& s) {
  return call_collective("_c10d_functional::all_gather_into_tensor",
                         {t.contiguous(), s.world_size, s.group_name});
}

// The sum over ranks of t (W rows, ...), this rank's block of rows.
at::Tensor reduce_scatter_rows(const at::Tensor& t, const ContextParallel& s) {
  return call_collective("_c10d_functional::reduce_scatter_tensor",
                         {t.contiguous(), std::string("sum"), s.world_size, s.group_name});
}

// All-gather along the sequence (dim 1) with its gradient: the sum over ranks of the gradient of each rank's
// copy, reduce-scattered back.
class GatherSequence : public torch::autograd::Function<GatherSequence> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& t,
                            const ContextParallel& setting) {
    ctx->saved_data["group"] = setting.group_name;
    ctx->saved_data["world"] = setting.world_size;
    at::AutoDispatchBelowADInplaceOrView guard;
    return all_gather_rows(t.transpose(0, 1), setting).transpose(0, 1);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    ContextParallel setting;
    setting.group_name = ctx->saved_data["group"].toStringRef();
    setting.world_size = ctx->saved_data["world"].toInt();
    return {reduce_scatter_rows(grads[0].transpose(0, 1), setting).transpose(0, 1), at::Tensor()};
  }
};

// The rows of dim 0 that each rank sends (input_splits, counts in rank order) to each, exchanged: what every
// rank sent this one, in rank order (output_splits).
at::Tensor all_to_all_rows(const at::Tensor& t, const std::vector<int64_t>& output_splits,
                           const std::vector<int64_t>& input_splits, const ContextParallel& s) {
  return call_collective("_c10d_functional::all_to_all_single",
                         {t.contiguous(), output_splits, input_splits, s.group_name});
}

// All-to-all along the sequence (dim 1) with its gradient: the same exchange reversed.
class ExchangeSequence : public torch::autograd::Function<ExchangeSequence> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& t,
                            const ContextParallel& setting, const std::vector<int64_t>& sent,
                            const std::vector<int64_t>& received) {
    ctx->saved_data["group"] = setting.group_name;
    ctx->saved_data["sent"] = sent;
    ctx->saved_data["received"] = received;
    at::AutoDispatchBelowADInplaceOrView guard;
    return all_to_all_rows(t.transpose(0, 1), received, sent, setting).transpose(0, 1);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    ContextParallel setting;
    setting.group_name = ctx->saved_data["group"].toStringRef();
    const auto sent = ctx->saved_data["sent"].toIntVector();
    const auto received = ctx->saved_data["received"].toIntVector();
    return {all_to_all_rows(grads[0].transpose(0, 1), sent, received, setting).transpose(0, 1), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

// The part of a run of tokens inside a span of positions: its global start and length (0: none).
KeySpan overlap(const ShardChunk& run, const KeySpan& span) {
  return {std::max(run.global_start, span.begin), std::min(run.global_start + run.length, span.end)};
}

// `arrived` (b, rows, ...) holds `pieces` of the sequence end to end, in any order; they tile a span. The
// span in sequence order.
at::Tensor in_sequence_order(const at::Tensor& arrived, const std::vector<KeySpan>& pieces) {
  std::vector<std::pair<KeySpan, int64_t>> placed;  // (piece, its offset in `arrived`)
  int64_t offset = 0;
  for (const auto& piece : pieces) {
    placed.emplace_back(piece, offset);
    offset += piece.end - piece.begin;
  }
  std::sort(placed.begin(), placed.end(),
            [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
  std::vector<at::Tensor> runs;
  for (const auto& [piece, at] : placed) runs.push_back(arrived.narrow(1, at, piece.end - piece.begin));
  return runs.size() == 1 ? runs.front() : at::cat(runs, 1);
}

std::string join(const std::vector<int64_t>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << "]";
  return out.str();
}

// Each rank's row of the exchange: x's rank and sizes, the mask's, and which refused inputs it passed.
enum Slot : int64_t { XDim, Batch, Length, Width, MaskDim, MaskBatch, MaskLength, MaskBool, Slots };

std::vector<int64_t> local_row(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                               const std::vector<std::string>& unsupported) {
  std::vector<int64_t> row(Slots, -1);
  row[XDim] = x.dim();
  if (x.dim() == 3) row[Batch] = x.size(0), row[Length] = x.size(1), row[Width] = x.size(2);
  if (mask.has_value()) {
    row[MaskDim] = mask->dim();
    if (mask->dim() == 2) row[MaskBatch] = mask->size(0), row[MaskLength] = mask->size(1);
    row[MaskBool] = mask->scalar_type() == at::kBool;
  }
  row.push_back(static_cast<int64_t>(unsupported.size()));
  return row;
}

// The checks below run on every rank over every rank's row, so that all raise alike.
using Rows = std::vector<std::vector<int64_t>>;

std::vector<int64_t> column(const Rows& rows, int64_t slot) {
  std::vector<int64_t> values;
  for (const auto& row : rows) values.push_back(row[slot]);
  return values;
}

void check_refusals(const Rows& rows, const std::vector<std::string>& unsupported) {
  std::vector<int64_t> refusing;
  for (size_t r = 0; r < rows.size(); ++r)
    if (rows[r][Slots] > 0) refusing.push_back(static_cast<int64_t>(r));
  std::ostringstream names;
  for (size_t i = 0; i < unsupported.size(); ++i) names << (i ? ", " : "") << unsupported[i];
  TORCH_CHECK_VALUE(refusing.empty(), "context_parallel: ranks ", join(refusing), " passed inputs that ",
                    "cannot be sharded", unsupported.empty() ? "" : " (here: ", names.str(),
                    unsupported.empty() ? "" : ")");
}

void check_shapes(const Rows& rows) {
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    TORCH_CHECK_VALUE(row[XDim] == 3 && row[Batch] == rows[0][Batch] && row[Width] == rows[0][Width],
                      "context_parallel: expected every rank's x as (batch, shard, dim) with the same batch ",
                      "and dim, got rank ", r, " with ", row[XDim], " dims, batches ",
                      join(column(rows, Batch)));
    const bool mask_fits =
        row[MaskDim] == 2 && row[MaskBatch] == row[Batch] && row[MaskLength] == row[Length];
    TORCH_CHECK_VALUE(row[MaskDim] < 0 || (mask_fits && row[MaskBool] == 1),
                      "context_parallel: expected rank ", r, "'s mask as bool (", row[Batch], ", ",
                      row[Length], "), its shard of the sequence, got ", row[MaskDim], " dims of sizes (",
                      row[MaskBatch], ", ", row[MaskLength], ")", row[MaskBool] == 1 ? "" : ", not bool");
  }
}

void check_lengths(const ContextParallel& s, const std::vector<int64_t>& lengths) {
  if (!s.shard_lengths.empty()) {
    TORCH_CHECK_VALUE(s.layout == ShardLayout::Contiguous && lengths == s.shard_lengths,
                      "context_parallel: expected the ranks' shards as shard_lengths ", join(s.shard_lengths),
                      " (contiguous layout), got lengths ", join(lengths));
    return;
  }
  const bool equal = std::all_of(lengths.begin(), lengths.end(), [&](int64_t n) { return n == lengths[0]; });
  TORCH_CHECK_VALUE(equal, "context_parallel: uneven shards, lengths ", join(lengths),
                    ", need their lengths: pass shard_lengths (each rank's, in rank order)");
  TORCH_CHECK_VALUE(
      s.layout != ShardLayout::Zigzag || lengths[0] % 2 == 0,
      "context_parallel: the zigzag layout holds two equal chunks a rank, so an even shard, got ",
      lengths[0]);
}

}  // namespace

const ContextParallel* current_context_parallel() { return current; }

ContextParallelGuard::ContextParallelGuard(ContextParallel setting)
    : setting_(std::make_unique<ContextParallel>(std::move(setting))), previous_(current) {
  TORCH_CHECK_VALUE(setting_->world_size >= 1 && setting_->rank >= 0 && setting_->rank < setting_->world_size,
                    "context_parallel: expected 0 <= rank < world_size, got rank ", setting_->rank,
                    ", world_size ", setting_->world_size);
  TORCH_CHECK_VALUE(setting_->shard_lengths.empty() ||
                        static_cast<int64_t>(setting_->shard_lengths.size()) == setting_->world_size,
                    "context_parallel: expected shard_lengths to hold one length a rank (",
                    setting_->world_size, "), got ", setting_->shard_lengths.size());
  current = setting_.get();
}

ContextParallelGuard::~ContextParallelGuard() { current = previous_; }

std::vector<ShardChunk> shard_chunks(const ContextParallel& s, int64_t length) {
  if (s.layout == ShardLayout::Zigzag) {
    TORCH_CHECK_VALUE(length % 2 == 0, "context_parallel: the zigzag layout holds two equal chunks a rank, ",
                      "so an even shard, got ", length);
    const int64_t half = length / 2;
    return {{0, s.rank * half, half}, {half, (2 * s.world_size - 1 - s.rank) * half, half}};
  }
  if (s.shard_lengths.empty()) return {{0, s.rank * length, length}};
  TORCH_CHECK_VALUE(s.shard_lengths[s.rank] == length, "context_parallel: expected rank ", s.rank,
                    "'s shard of shard_lengths[", s.rank, "] = ", s.shard_lengths[s.rank], " tokens, got ",
                    length);
  const auto begin = s.shard_lengths.begin();
  return {{0, std::accumulate(begin, begin + s.rank, int64_t(0)), length}};
}

at::Tensor positions_of(const std::vector<ShardChunk>& runs, const at::TensorOptions& options) {
  std::vector<at::Tensor> ranges;
  for (const auto& c : runs) ranges.push_back(at::arange(c.global_start, c.global_start + c.length, options));
  return ranges.size() == 1 ? ranges.front() : at::cat(ranges);
}

at::Tensor SequenceShards::positions(const at::TensorOptions& options) const {
  return positions_of(chunks, options);
}

at::Tensor SequenceShards::gather(const at::Tensor& t) const {
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  const int64_t own = t.size(1);
  // all_gather_into_tensor takes one size: shorter shards are padded at their end, the padding dropped after.
  at::Tensor padded = t;
  if (own < longest) {
    std::vector<int64_t> pad(2 * (t.dim() - 1), 0);
    pad.back() = longest - own;
    padded = at::constant_pad_nd(t, pad);
  }
  const at::Tensor all = GatherSequence::apply(padded, setting);  // (b, W longest, ...), rank order
  std::vector<at::Tensor> runs;
  const int64_t world = setting.world_size;
  if (setting.layout == ShardLayout::Zigzag) {
    const int64_t half = longest / 2;
    for (int64_t r = 0; r < world; ++r) runs.push_back(all.narrow(1, r * longest, half));
    for (int64_t r = world - 1; r >= 0; --r) runs.push_back(all.narrow(1, r * longest + half, half));
  } else {
    if (std::all_of(lengths.begin(), lengths.end(), [&](int64_t n) { return n == longest; })) return all;
    for (int64_t r = 0; r < world; ++r) runs.push_back(all.narrow(1, r * longest, lengths[r]));
  }
  return at::cat(runs, 1);
}

KeySpan SequenceShards::reach_of(const ShardChunk& run, const KeyReach& reach) const {
  KeySpan span{0, total};
  if (reach.causal) span.end = run.global_start + run.length;
  if (reach.window_left >= 0) span.begin = std::max(int64_t(0), run.global_start - reach.window_left);
  if (!reach.causal && reach.window_right >= 0)
    span.end = std::min(total, run.global_start + run.length + reach.window_right);
  return span;
}

std::vector<ShardChunk> SequenceShards::runs_of(int64_t rank) const {
  ContextParallel other = setting;
  other.rank = rank;
  return shard_chunks(other, lengths[rank]);
}

KeySpan SequenceShards::span_of(int64_t rank, const KeyReach& reach) const {
  KeySpan span{total, 0};
  for (const auto& run : runs_of(rank)) {
    const KeySpan s = reach_of(run, reach);
    span = {std::min(span.begin, s.begin), std::max(span.end, s.end)};
  }
  return span;
}

at::Tensor SequenceShards::gather_span(const at::Tensor& t, const KeyReach& reach) const {
  const int64_t world = setting.world_size;
  std::vector<KeySpan> spans;
  for (int64_t r = 0; r < world; ++r) spans.push_back(span_of(r, reach));
  const auto whole = [&](const KeySpan& s) { return s.begin == 0 && s.end == total; };
  if (std::all_of(spans.begin(), spans.end(), whole)) return gather(t);
  // Sent: this rank's rows inside each rank's span, rank by rank, in sequence order.
  std::vector<at::Tensor> sent;
  std::vector<int64_t> sent_counts(world, 0), received_counts(world, 0);
  for (int64_t q = 0; q < world; ++q)
    for (const auto& run : chunks)
      if (const KeySpan part = overlap(run, spans[q]); part.end > part.begin) {
        sent.push_back(t.narrow(1, run.local_start + part.begin - run.global_start, part.end - part.begin));
        sent_counts[q] += part.end - part.begin;
      }
  // Received: every rank's rows inside this rank's span, in the order they arrive.
  std::vector<KeySpan> pieces;
  for (int64_t r = 0; r < world; ++r)
    for (const auto& run : runs_of(r))
      if (const KeySpan part = overlap(run, spans[setting.rank]); part.end > part.begin) {
        pieces.push_back(part);
        received_counts[r] += part.end - part.begin;
      }
  const at::Tensor out = sent.empty() ? t.narrow(1, 0, 0) : at::cat(sent, 1);
  return in_sequence_order(ExchangeSequence::apply(out, setting, sent_counts, received_counts), pieces);
}

std::optional<at::Tensor> SequenceShards::gather_mask(const std::optional<at::Tensor>& mask, bool any_mask,
                                                      const at::Tensor& like) const {
  if (!any_mask) return std::nullopt;
  const auto bools = like.options().dtype(at::kBool);
  const at::Tensor own = mask.has_value() ? *mask : at::ones({like.size(0), like.size(1)}, bools);
  // Collectives move bytes: the mask travels as uint8.
  return gather(own.to(at::kByte)).to(at::kBool);
}

int64_t agreed_sequence_length(const ContextParallel& setting, int64_t shard_length, c10::Device device) {
  const auto own = at::tensor({shard_length}, at::kLong).to(device).unsqueeze(0);
  const auto table = all_gather_rows(own, setting).cpu().flatten();
  const std::vector<int64_t> lengths(table.data_ptr<int64_t>(), table.data_ptr<int64_t>() + table.numel());
  check_lengths(setting, lengths);
  return std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
}

std::pair<SequenceShards, bool> exchange_shards(const ContextParallel& setting, const at::Tensor& x,
                                                const std::optional<at::Tensor>& mask,
                                                const std::vector<std::string>& unsupported) {
  const auto row = local_row(x, mask, unsupported);
  const auto table = all_gather_rows(at::tensor(row, at::kLong).to(x.device()).unsqueeze(0), setting).cpu();
  std::vector<std::vector<int64_t>> rows;
  bool any_mask = false;
  for (int64_t r = 0; r < setting.world_size; ++r) {
    const auto* values = table[r].data_ptr<int64_t>();
    rows.emplace_back(values, values + table.size(1));
    any_mask = any_mask || rows.back()[MaskDim] >= 0;
  }
  check_refusals(rows, unsupported);
  check_shapes(rows);
  check_lengths(setting, column(rows, Length));
  SequenceShards shards;
  shards.setting = setting;
  for (const auto& r : rows) shards.lengths.push_back(r[Length]);
  shards.chunks = shard_chunks(setting, x.size(1));
  shards.total = std::accumulate(shards.lengths.begin(), shards.lengths.end(), int64_t(0));
  return {std::move(shards), any_mask};
}

}  // namespace xtc::nn::functional
