// A process-wide cache of plans (parsed options and parameter layouts) keyed by the options string, so that the
// layer-stack ops do not re-parse their options on every call. Plans are immutable once built.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace xtc::ops::detail {

template <typename Plan, typename Make>
const Plan& cached_plan(const std::string& key, Make&& make) {
  static std::mutex lock;
  static std::unordered_map<std::string, std::unique_ptr<const Plan>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& slot = cache[key];
  if (!slot) slot = std::make_unique<const Plan>(make());
  return *slot;
}

}  // namespace xtc::ops::detail
