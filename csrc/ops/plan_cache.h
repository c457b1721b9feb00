// A process-wide cache of plans (parsed options and parameter layouts) keyed by the options string, so that the
// layer-stack ops do not re-parse their options on every call. Plans are immutable once built.
#pragma once

#include <xtc/nn/options/attention_layers.h>

#include <c10/util/string_view.h>

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

/// The plan of a wrapper op: its own options and its stack's, parsed once per pair of option lines.
template <typename Plan, typename WrapperOptions>
const Plan& cached_wrapper_plan(c10::string_view options, c10::string_view layer_options) {
  const std::string wrapper(options), layers(layer_options);
  return cached_plan<Plan>(wrapper + "|" + layers, [&] {
    return Plan(WrapperOptions::parse(wrapper), nn::AttentionLayersOptions::parse(layers));
  });
}

}  // namespace xtc::ops::detail
