// A process-wide cache of plans (parsed options and parameter layouts) keyed by the options string, so that
// the layer-stack ops do not re-parse their options on every call. Plans are immutable once built and shared:
// a call holds its plan while it runs, so an eviction never frees one in use. The cache keeps the most
// recently used kPlanCacheCapacity plans of each kind, so that many distinct models (or option strings)
// cannot grow it without bound.
#pragma once

#include <c10/util/string_view.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/options/attention_layers.h>

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace xtc::ops::detail {

inline constexpr size_t kPlanCacheCapacity = 256;

template <typename Plan>
class PlanCache {
 public:
  static PlanCache& instance() {
    static PlanCache cache;
    return cache;
  }

  template <typename Make>
  std::shared_ptr<const Plan> get(const std::string& key, Make&& make) {
    std::lock_guard<std::mutex> guard(lock_);
    if (const auto it = index_.find(key); it != index_.end()) {
      entries_.splice(entries_.begin(), entries_, it->second);  // now the most recently used
      return it->second->second;
    }
    auto plan = std::make_shared<const Plan>(make());  // a bad options string throws here, caching nothing
    entries_.emplace_front(key, plan);
    index_[key] = entries_.begin();
    if (entries_.size() > kPlanCacheCapacity) {
      index_.erase(entries_.back().first);
      entries_.pop_back();
    }
    return plan;
  }

  size_t size() {
    std::lock_guard<std::mutex> guard(lock_);
    return entries_.size();
  }

 private:
  using Entry = std::pair<std::string, std::shared_ptr<const Plan>>;
  std::mutex lock_;
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<std::string, typename std::list<Entry>::iterator> index_;
};

template <typename Plan, typename Make>
std::shared_ptr<const Plan> cached_plan(const std::string& key, Make&& make) {
  return PlanCache<Plan>::instance().get(key, std::forward<Make>(make));
}

/// The plan of the layer-stack ops: the options parsed once per JSON text, the layout that of the module tree
/// (built on meta: nothing allocated).
inline std::shared_ptr<const nn::functional::AttentionLayersPlan> cached_layers_plan(
    c10::string_view options) {
  const std::string text(options);
  return cached_plan<nn::functional::AttentionLayersPlan>(
      text, [&] { return *nn::meta_plan(nn::AttentionLayersOptions::parse(text)); });
}

/// The plan of a wrapper op: its own options and its stack's, parsed once per pair of options texts, the
/// layout that of the Wrapper module's tree (built on meta).
template <typename Plan, typename Wrapper, typename WrapperOptions>
std::shared_ptr<const Plan> cached_wrapper_plan(c10::string_view options, c10::string_view layer_options) {
  const std::string wrapper(options), layers(layer_options);
  return cached_plan<Plan>(wrapper + "|" + layers, [&] {
    nn::MetaConstruction meta;
    return *Wrapper(WrapperOptions::parse(wrapper),
                    nn::AttentionLayers(nn::AttentionLayersOptions::parse(layers)))
                ->plan;
  });
}

}  // namespace xtc::ops::detail
