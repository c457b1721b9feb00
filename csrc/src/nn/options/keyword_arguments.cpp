#include "src/nn/options/keyword_arguments.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace xtc::nn {
namespace {

using Json = detail::Json;

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

}  // namespace

void expand_keyword_forms(Json& kwargs) {
  argument_forms(kwargs);
  // x-transformers takes custom_layers as a string or a tuple of letters.
  if (kwargs.contains("custom_layers") && kwargs["custom_layers"].is_array()) {
    std::string letters;
    for (const auto& letter : kwargs["custom_layers"]) {
      TORCH_CHECK_TYPE(letter.is_string(), "custom_layers: expected letters ('a', 'c', 'f'), got ",
                       letter.dump());
      letters += letter.get<std::string>();
    }
    kwargs["custom_layers"] = letters;
  }
}

}  // namespace xtc::nn
