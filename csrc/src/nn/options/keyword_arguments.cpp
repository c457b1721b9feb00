#include <c10/util/Exception.h>
#include <xtc/nn/options/attention_layers.h>
#include <xtc/nn/options/keyword_arguments.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

namespace xtc::nn {
namespace {

using Json = nlohmann::ordered_json;  // the keyword arguments' order is the options line's

using KeyMap = std::vector<std::pair<std::string, std::string>>;

// x-transformers' dict arguments (the keyword arguments of a module it builds): our option for each key.
const KeyMap kResidualFnKwargs = {{"learned", "mv_split_residual_learned"},
                                  {"init_alpha", "mv_split_residual_init_alpha"},
                                  {"init_beta", "mv_split_residual_init_beta"},
                                  {"read_gate_rank", "gated_multi_residual_read_gate_rank"}};
const KeyMap kAggregatedResidualKwargs = {{"lora_rank", "aggregated_residual_lora_rank"},
                                          {"lora_activation", "aggregated_residual_lora_activation"}};
const KeyMap kRelPosKwargs = {
    {"slopes", "alibi_slopes"}};  // AlibiPositionalBias' (T5's and dynamic take none)
const KeyMap kDataDependentAlibiKwargs = {{"bias_init", "data_dependent_alibi_bias_init"},
                                          {"post_log_scale", "data_dependent_alibi_post_log_scale"}};

// The stack's own options that carry a block's prefix.
const std::set<std::string> kStackOptionsWithPrefix = {"attn_aggregated_residuals",
                                                       "cross_attn_tokens_dropout"};
// Options whose value is a string (a spec or a list of names).
const std::set<std::string> kStringOptions = {"ff.custom_activation", "aggregated_residual_lora_activation",
                                              "attn.hybrid_module", "cross_attn.hybrid_module",
                                              "embed_num_tokens"};

std::string quoted_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "'" : ", '") + k + "'";
  return out;
}

// kwargs with the dict argument `name` replaced by our options for its keys (prefixed).
void expand_dict_argument(Json& kwargs, const std::string& name, const KeyMap& keys, const char* owner,
                          const std::string& prefix = "") {
  if (!kwargs.contains(name)) return;
  const Json given = kwargs[name];
  kwargs.erase(name);
  if (given.is_null()) return;
  TORCH_CHECK_TYPE(given.is_object(), name, ": expected a dict, got ", given.type_name());
  std::vector<std::string> unknown, supported;
  for (const auto& [key, option] : keys) supported.push_back(key);
  for (const auto& [key, value] : given.items())
    if (std::find(supported.begin(), supported.end(), key) == supported.end()) unknown.push_back(key);
  std::sort(unknown.begin(), unknown.end());
  TORCH_CHECK_TYPE(unknown.empty(), name, ": unsupported keys ", quoted_keys(unknown),
                   "; supported: ", quoted_keys(supported), " (", owner, "'s)");
  for (const auto& [key, option] : keys)
    if (given.contains(key)) kwargs[prefix + option] = given[key];
}

// x-transformers' arguments whose type picks their meaning, and its dict arguments, as our options.
void argument_forms(Json& kwargs) {
  const Json depth = kwargs.value("depth_scale_residual", Json()),
             scale = kwargs.value("scale_residual", Json());
  if (depth.is_number()) {
    kwargs["branch_output_scale"] = depth.get<double>();
    kwargs["depth_scale_residual"] = false;
  } else if (scale.is_number()) {
    kwargs["branch_output_scale"] = scale.get<double>();
  }
  if (scale.is_number()) kwargs["scale_residual"] = scale.get<double>() != 0;
  expand_dict_argument(kwargs, "residual_fn_kwargs", kResidualFnKwargs,
                       "mv_split_residual or gated_multi_residual");
  expand_dict_argument(kwargs, "attn_aggregated_residual_kwargs", kAggregatedResidualKwargs,
                       "attn_aggregated_residuals");
  expand_dict_argument(kwargs, "rel_pos_kwargs", kRelPosKwargs, "alibi_pos_bias");
  for (const std::string prefix : {"attn_", "cross_attn_"}) {
    TORCH_CHECK_TYPE(
        kwargs.value(prefix + "hybrid_mask_kwarg", Json()).is_null(), prefix,
        "hybrid_mask_kwarg: nn.GRU and nn.LSTM take no mask keyword (x-transformers would pass one to "
        "the module and fail, or ignore it when causal); leave it None");
    kwargs.erase(prefix + "hybrid_mask_kwarg");
    const std::string name = prefix + "data_dependent_alibi_kwargs";
    const bool per_row = kwargs.value(prefix + "data_dependent_alibi_per_row", Json(false)) == Json(true);
    TORCH_CHECK_TYPE(
        !(per_row && kwargs.contains(name) && kwargs[name].is_object() && kwargs[name].contains("bias_init")),
        name, ": 'bias_init' is not an option of the per-row form (PerRowDataDependentAlibi)");
    expand_dict_argument(kwargs, name, kDataDependentAlibiKwargs, "data_dependent_alibi", prefix);
  }
}

std::string number_text(const Json& v) {
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  std::ostringstream out;
  out.precision(17);
  out << v.get<double>();
  std::string text = out.str();
  // A float stays a float (an int option refuses it, as from Python).
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

std::string join(const Json& list, const std::string& separator,
                 const std::function<std::string(const Json&)>& f) {
  std::string out;
  for (const auto& v : list) out += (out.empty() ? "" : separator) + f(v);
  return out;
}

std::string option_value(const std::string& name, const Json& v);

// A list option (layers, slopes, an execution order, a layer schedule) as its comma-separated line; nothing
// when `name` takes no list.
std::optional<std::string> list_value(const std::string& name, const Json& v) {
  if (name == "custom_layers") return join(v, "", [](const Json& c) { return c.get<std::string>(); });
  if (name == "alibi_slopes") return join(v, ",", number_text);
  if (name == "layers_execute_order" || name == "shift_tokens")
    return join(v, ",", [](const Json& i) { return std::to_string(i.get<int64_t>()); });
  const bool block =
      name.rfind("attn.", 0) == 0 || name.rfind("cross_attn.", 0) == 0 || name.rfind("ff.", 0) == 0;
  if (block)  // a layer schedule: one value per layer of that kind
    return join(v, ",", [&](const Json& e) { return option_value(name, e); });
  return std::nullopt;
}

// One option's value as the options line writes it.
std::string option_value(const std::string& name, const Json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  if (v.is_null()) return "none";
  if (v.is_number()) return number_text(v);
  // Non-finite floats come as their names (JSON has no literal for them).
  if (v.is_string() && (kStringOptions.count(name) > 0 || v == "inf" || v == "-inf" || v == "nan"))
    return v.get<std::string>();
  if (name == "custom_layers" && v.is_string()) return v.get<std::string>();
  if (v.is_array())
    if (auto text = list_value(name, v)) return *text;
  TORCH_CHECK_TYPE(false, name, ": expected a bool, int, float or None, got ", v.type_name(), ": ", v.dump());
}

// The keyword arguments by where x-transformers routes them: the stack's own, ff_*, attn_*, cross_attn_*.
struct Groups {
  Json own = Json::object(), ff = Json::object(), attn = Json::object(), cross = Json::object();
};

Groups group(const Json& kwargs) {
  Groups g;
  for (const auto& [name, value] : kwargs.items()) {
    if (kStackOptionsWithPrefix.count(name) > 0)
      g.own[name] = value;
    else if (name.rfind("cross_attn_", 0) == 0)
      g.cross[name.substr(11)] = value;
    else if (name.rfind("ff_", 0) == 0)
      g.ff[name.substr(3)] = value;
    else if (name.rfind("attn_", 0) == 0)
      g.attn[name.substr(5)] = value;
    else
      g.own[name] = value;
  }
  return g;
}

// Keyword arguments no option takes, as x-transformers names them; throws naming them all.
void check_known(const Groups& g) {
  const auto keys = AttentionLayersOptions::keys();
  const std::set<std::string> known(keys.begin(), keys.end());
  std::set<std::string> unknown;
  for (const auto& [k, v] : g.own.items())
    if (known.count(k) == 0) unknown.insert(k);
  for (const auto& [prefix, group, nested] :
       {std::tuple<std::string, const Json*, std::string>{"ff_", &g.ff, "ff."},
        {"attn_", &g.attn, "attn."},
        {"cross_attn_", &g.cross, "cross_attn."}})
    for (const auto& [k, v] : group->items())
      if (known.count(nested + k) == 0) unknown.insert(prefix + k);
  std::string names;
  for (const auto& k : unknown) names += (names.empty() ? "" : ", ") + k;
  TORCH_CHECK_TYPE(unknown.empty(), "unrecognized or unsupported keyword arguments: ", names,
                   ". The README lists every x-transformers keyword argument and whether x_transformers_cpp "
                   "supports it.");
}

}  // namespace

std::string attention_layers_options_line(const std::string& keyword_arguments_json) {
  Json kwargs = Json::parse(keyword_arguments_json);
  TORCH_CHECK_TYPE(kwargs.is_object(), "AttentionLayers: expected the keyword arguments as a JSON object");
  argument_forms(kwargs);
  const Groups g = group(kwargs);
  check_known(g);
  // attn_* reaches cross-attention too, under cross_attn_*, except an attn_* schedule (one value per layer).
  Json cross = Json::object();
  for (const auto& [k, v] : g.attn.items())
    if (!v.is_array()) cross[k] = v;
  for (const auto& [k, v] : g.cross.items()) cross[k] = v;
  std::string line;
  const auto add = [&](const std::string& key, const Json& value) {
    line += (line.empty() ? "" : ";") + key + "=" + option_value(key, value);
  };
  for (const auto& [k, v] : g.own.items()) add(k, v);
  for (const auto& [k, v] : g.ff.items()) add("ff." + k, v);
  for (const auto& [k, v] : g.attn.items()) add("attn." + k, v);
  for (const auto& [k, v] : cross.items()) add("cross_attn." + k, v);
  return line;
}

std::string wrapper_options_line(const std::string& keyword_arguments_json) {
  const Json kwargs = Json::parse(keyword_arguments_json);
  TORCH_CHECK_TYPE(kwargs.is_object(), "wrapper: expected the keyword arguments as a JSON object");
  static const std::set<std::string> python_side = {"max_mem_len", "shift_mem_down",
                                                    "input_not_include_cache"};
  std::string line;
  for (const auto& [name, value] : kwargs.items()) {
    if (python_side.count(name) > 0) continue;
    std::string text;
    if (name == "embed_num_tokens" && value.is_object()) {
      for (const auto& [embed, count] : value.items())
        text += (text.empty() ? "" : "|") + embed + ":" + std::to_string(count.get<int64_t>());
    } else {
      text = option_value(name, value);
    }
    line += (line.empty() ? "" : ";") + name + "=" + text;
  }
  return line;
}

}  // namespace xtc::nn
