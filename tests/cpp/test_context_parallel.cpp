// Context parallelism's layout arithmetic (xtc/nn/functional/context_parallel.h), which every rank computes
// alike without asking the others: each rank's runs of the sequence, the keys a run of queries reaches, and
// the guard that sets the thread's setting. The collectives themselves run in
// tests/python/test_context_parallel.py (gloo, 2 and 4 processes).
#include <gtest/gtest.h>
#include <xtc/nn/functional/context_parallel.h>

namespace {

using xtc::nn::functional::ContextParallel;
using xtc::nn::functional::ContextParallelGuard;
using xtc::nn::functional::current_context_parallel;
using xtc::nn::functional::KeyReach;
using xtc::nn::functional::SequenceShards;
using xtc::nn::functional::shard_chunks;
using xtc::nn::functional::ShardLayout;

ContextParallel setting(int64_t rank, int64_t world, ShardLayout layout, std::vector<int64_t> lengths = {}) {
  return {"group", rank, world, layout, std::move(lengths)};
}

TEST(ContextParallel, ContiguousShardsFollowTheRanks) {
  const auto runs = shard_chunks(setting(2, 4, ShardLayout::Contiguous), 7);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].local_start, 0);
  EXPECT_EQ(runs[0].global_start, 14);
  EXPECT_EQ(runs[0].length, 7);
}

TEST(ContextParallel, UnevenShardsStartAfterTheEarlierRanksLengths) {
  const auto runs = shard_chunks(setting(2, 3, ShardLayout::Contiguous, {5, 3, 9}), 9);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].global_start, 8);
  EXPECT_THROW(shard_chunks(setting(2, 3, ShardLayout::Contiguous, {5, 3, 9}), 8), c10::ValueError);
}

TEST(ContextParallel, ZigzagHoldsChunksRankAnditsMirror) {
  // 3 ranks, 6 chunks of 4: rank 1 holds chunks 1 and 4.
  const auto runs = shard_chunks(setting(1, 3, ShardLayout::Zigzag), 8);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].local_start, 0);
  EXPECT_EQ(runs[0].global_start, 4);
  EXPECT_EQ(runs[1].local_start, 4);
  EXPECT_EQ(runs[1].global_start, 16);
  EXPECT_THROW(shard_chunks(setting(1, 3, ShardLayout::Zigzag), 7), c10::ValueError);
}

SequenceShards shards(int64_t rank, int64_t world, ShardLayout layout, int64_t length) {
  SequenceShards s;
  s.setting = setting(rank, world, layout);
  s.lengths.assign(static_cast<size_t>(world), length);
  s.chunks = shard_chunks(s.setting, length);
  s.total = world * length;
  return s;
}

TEST(ContextParallel, CausalQueriesReachTheKeysUpToTheirRunsEnd) {
  const auto s = shards(1, 4, ShardLayout::Contiguous, 10);  // rank 1 holds [10, 20) of 40
  const auto all = s.span_of(1, KeyReach{});
  EXPECT_EQ(all.begin, 0);
  EXPECT_EQ(all.end, 40);
  const auto causal = s.span_of(1, KeyReach{true, -1, -1});
  EXPECT_EQ(causal.begin, 0);
  EXPECT_EQ(causal.end, 20);
  const auto windowed = s.span_of(1, KeyReach{true, 3, -1});
  EXPECT_EQ(windowed.begin, 7);
  EXPECT_EQ(windowed.end, 20);
  const auto both_sides = s.span_of(3, KeyReach{false, 3, 5});  // rank 3: [30, 40)
  EXPECT_EQ(both_sides.begin, 27);
  EXPECT_EQ(both_sides.end, 40);
}

TEST(ContextParallel, ZigzagSpanCoversBothRuns) {
  const auto s = shards(0, 2, ShardLayout::Zigzag, 6);  // chunks of 3: rank 0 holds [0, 3) and [9, 12)
  const auto runs = s.chunks;
  const auto first = s.reach_of(runs[0], KeyReach{true, 2, -1});
  EXPECT_EQ(first.begin, 0);
  EXPECT_EQ(first.end, 3);
  const auto second = s.reach_of(runs[1], KeyReach{true, 2, -1});
  EXPECT_EQ(second.begin, 7);
  EXPECT_EQ(second.end, 12);
  const auto span = s.span_of(0, KeyReach{true, 2, -1});
  EXPECT_EQ(span.begin, 0);
  EXPECT_EQ(span.end, 12);
}

TEST(ContextParallel, GuardSetsAndRestoresTheThreadsSetting) {
  EXPECT_EQ(current_context_parallel(), nullptr);
  {
    ContextParallelGuard outer(setting(0, 2, ShardLayout::Contiguous));
    EXPECT_EQ(current_context_parallel()->world_size, 2);
    {
      ContextParallelGuard inner(setting(1, 4, ShardLayout::Zigzag));
      EXPECT_EQ(current_context_parallel()->rank, 1);
    }
    EXPECT_EQ(current_context_parallel()->rank, 0);
  }
  EXPECT_EQ(current_context_parallel(), nullptr);
  EXPECT_THROW(ContextParallelGuard(setting(2, 2, ShardLayout::Contiguous)), c10::ValueError);
  EXPECT_THROW(ContextParallelGuard(setting(0, 2, ShardLayout::Contiguous, {3})), c10::ValueError);
  EXPECT_EQ(current_context_parallel(), nullptr);
}

}  // namespace
