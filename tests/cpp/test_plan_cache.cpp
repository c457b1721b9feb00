// The ops' plan cache (ops/plan_cache.h): a key is built once while it stays cached, the least recently used
// one is evicted past kPlanCacheCapacity, and a use refreshes a key.
#include <gtest/gtest.h>

#include <string>

#include "ops/plan_cache.h"

namespace {

using xtc::ops::detail::kPlanCacheCapacity;
using xtc::ops::detail::PlanCache;

struct CountedPlan {
  std::string key;
};

// A cache of its own (not the process-wide one) and the keys it had to build.
struct Fixture {
  PlanCache<CountedPlan> cache;
  std::vector<std::string> built;
  std::shared_ptr<const CountedPlan> get(const std::string& key) {
    return cache.get(key, [&] {
      built.push_back(key);
      return CountedPlan{key};
    });
  }
};

TEST(PlanCache, BuildsAKeyOnceWhileItStaysCached) {
  Fixture f;
  const auto first = f.get("a");
  EXPECT_EQ(f.get("a"), first);
  EXPECT_EQ(f.built, std::vector<std::string>{"a"});
}

TEST(PlanCache, EvictsTheLeastRecentlyUsedPastItsCapacity) {
  Fixture f;
  for (size_t i = 0; i < kPlanCacheCapacity; ++i) f.get(std::to_string(i));
  EXPECT_EQ(f.cache.size(), kPlanCacheCapacity);
  f.get("0");  // a use: "1" is now the least recently used
  f.get("new");
  EXPECT_EQ(f.cache.size(), kPlanCacheCapacity);
  const size_t built = f.built.size();
  f.get("0");  // kept
  EXPECT_EQ(f.built.size(), built);
  f.get("1");  // evicted: built again
  ASSERT_EQ(f.built.size(), built + 1);
  EXPECT_EQ(f.built.back(), "1");
}

TEST(PlanCache, APlanInUseOutlivesItsEviction) {
  Fixture f;
  const auto held = f.get("held");
  for (size_t i = 0; i < kPlanCacheCapacity; ++i) f.get(std::to_string(i));
  EXPECT_EQ(held->key, "held");  // evicted from the cache, still alive for its holder
  f.get("held");
  EXPECT_EQ(f.built.back(), "held");
}

}  // namespace
