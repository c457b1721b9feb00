// The layer stack under context parallelism (xtc/nn/functional/context_parallel.h): the call's shards, agreed
// by every rank, and the inputs and options that cannot run sharded, refused by name. Internal to the
// library.
#pragma once

#include <ATen/core/Tensor.h>
#include <xtc/nn/functional/attention_layers.h>
#include <xtc/nn/functional/context_parallel.h>

#include <memory>

namespace xtc::nn::functional::detail {

/// A sharded call's layout, whether some rank passed a mask, and the shard's global positions ((n) int64 on
/// x's device: rotary, PoPE and the dense biases read them).
struct StackShards {
  std::shared_ptr<const SequenceShards> shards;
  bool any_mask = false;
  at::Tensor positions;
};

/// With the thread's context-parallel setting: the shards of x, exchanged and checked with every rank (the
/// stack's first collective); inputs and options that need the whole sequence in one place are refused on
/// every rank. Without it: none.
std::optional<StackShards> stack_shards(const at::Tensor& x, const AttentionLayersInputs& inputs,
                                        const AttentionLayersPlan& plan, bool training);

}  // namespace xtc::nn::functional::detail
