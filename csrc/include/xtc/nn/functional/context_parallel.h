// Context parallelism: a sequence longer than one device holds, sharded across the ranks of a
// torch.distributed process group. Each rank runs the stack on its shard of the tokens; projections,
// feed-forwards and norms see the shard alone, and each self-attention layer gathers every rank's keys and
// values (only the kv heads travel) and attends its own queries to them at their global positions (Llama 3's
// all-gather form of context parallelism). The collectives are torch's functional ones
// (_c10d_functional::all_gather_into_tensor / reduce_scatter_tensor) called through the dispatcher by group
// name: gloo on the CPU, NCCL on CUDA.
//
// Set for a scope with ContextParallelGuard (Python: x_transformers_cpp.distributed.context_parallel); every
// stack (and wrapper) forward run inside it on this thread takes its input as this rank's shard.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace xtc::nn::functional {

/// How the sequence is split. Contiguous: rank r holds one run of tokens, the runs in rank order. Zigzag
/// (ring-flash-attention's load-balanced layout for causal attention): the sequence cut into 2 W chunks,
/// rank r holding chunks r and 2 W - 1 - r, each half of its shard.
enum class ShardLayout { Contiguous, Zigzag };

/// The process group and the layout of the shards.
struct ContextParallel {
  std::string group_name;  // torch.distributed's name of the group (ProcessGroup.group_name)
  int64_t rank = 0, world_size = 1;
  ShardLayout layout = ShardLayout::Contiguous;
  /// Contiguous shards of different lengths: each rank's length, in rank order. Empty: every rank holds the
  /// same length.
  std::vector<int64_t> shard_lengths;
};

/// The context-parallel setting of this thread, or nullptr.
const ContextParallel* current_context_parallel();

/// Sets the thread's context-parallel setting for its lifetime, restoring the previous one after.
class ContextParallelGuard {
 public:
  explicit ContextParallelGuard(ContextParallel setting);
  ~ContextParallelGuard();
  ContextParallelGuard(const ContextParallelGuard&) = delete;
  ContextParallelGuard& operator=(const ContextParallelGuard&) = delete;

 private:
  std::unique_ptr<ContextParallel> setting_;
  const ContextParallel* previous_;
};

/// One run of a rank's tokens: where it sits in the shard and in the whole sequence.
struct ShardChunk {
  int64_t local_start, global_start, length;
};

/// Which keys a layer's queries reach: causal (no key after the query), and how far back and ahead a window
/// reaches (-1: no limit), as the attention kernel's window_left / window_right.
struct KeyReach {
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
};

/// A run [begin, end) of the whole sequence's positions.
struct KeySpan {
  int64_t begin = 0, end = 0;
};

/// What one forward call knows of the sharded sequence, agreed by every rank (exchange_shards).
struct SequenceShards {
  ContextParallel setting;
  std::vector<int64_t> lengths;    // each rank's shard length, rank order
  std::vector<ShardChunk> chunks;  // this rank's runs of tokens, in shard order
  int64_t total = 0;               // the whole sequence's length

  /// The global positions of this rank's tokens, (n) int64.
  at::Tensor positions(const at::TensorOptions& options) const;
  /// Every rank's `t` (b, n_rank, ...) joined in sequence order, (b, total, ...); differentiable (the
  /// gradient returns by reduce-scatter).
  at::Tensor gather(const at::Tensor& t) const;
  /// The runs of tokens `rank` holds (any rank's, as every rank can work out).
  std::vector<ShardChunk> runs_of(int64_t rank) const;
  /// The keys a run of queries reaches under `reach`.
  KeySpan reach_of(const ShardChunk& run, const KeyReach& reach) const;
  /// The span of keys this rank's queries reach: every run's, and what lies between.
  KeySpan span_of(int64_t rank, const KeyReach& reach) const;
  /// The whole sequence's rows span_of(this rank) of every rank's `t` (b, n_rank, ...), (b, span, ...):
  /// each rank sends each other rank only the rows that rank's queries reach (one all-to-all; an
  /// all-gather when every rank reaches every key). Differentiable: the gradients return the same way.
  at::Tensor gather_span(const at::Tensor& t, const KeyReach& reach) const;
  /// The whole sequence's key mask (b, total) from this rank's (b, n) bool, or none when no rank has one
  /// (`any_mask`: whether some rank has one; ranks without one count as all kept).
  std::optional<at::Tensor> gather_mask(const std::optional<at::Tensor>& mask, bool any_mask,
                                        const at::Tensor& like) const;
};

/// This rank's runs of tokens (their places in its shard and in the whole sequence) for a shard of `length`
/// tokens under `setting`, without asking the other ranks (wrappers' absolute positions). Throws when the
/// layout cannot hold such a shard.
std::vector<ShardChunk> shard_chunks(const ContextParallel& setting, int64_t length);

/// The positions of `runs`, one after another, (total length) int64.
at::Tensor positions_of(const std::vector<ShardChunk>& runs, const at::TensorOptions& options);

/// The whole sequence's length, agreed by every rank from one small all-gather of the shards' lengths, which
/// are checked as exchange_shards checks them. A wrapper's max_seq_len check reads it before its stack's
/// exchange, so a shard that breaks the check raises on every rank, not on its own while the others wait for
/// it.
int64_t agreed_sequence_length(const ContextParallel& setting, int64_t shard_length, c10::Device device);

/// The first step of a sharded forward, taken by every rank: one small all-gather of each rank's input
/// shapes and of which per-call inputs it passed, checked alike on every rank so that a bad input raises the
/// same error everywhere (never one rank waiting in a collective for another that failed). `unsupported`:
/// the names of the passed inputs that cannot be sharded (refused on every rank). Returns the agreed shards
/// and whether some rank passed a mask.
std::pair<SequenceShards, bool> exchange_shards(const ContextParallel& setting, const at::Tensor& x,
                                                const std::optional<at::Tensor>& mask,
                                                const std::vector<std::string>& unsupported);

}  // namespace xtc::nn::functional
