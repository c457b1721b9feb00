// x-transformers' keyword arguments whose form carries their meaning (a dict of a built module's arguments, a
// number where a flag is expected), as our options: read by AttentionLayersOptions::parse(). Internal.
#pragma once

#include "src/nn/options/option_json.h"

namespace xtc::nn {

/// Rewrites, in place, the keyword arguments that x-transformers reads by form: the dict arguments
/// (residual_fn_kwargs, attn_aggregated_residual_kwargs, rel_pos_kwargs, *_data_dependent_alibi_kwargs)
/// into the options of their keys; a numeric scale_residual or depth_scale_residual into
/// branch_output_scale; custom_layers given as a list of letters into one string. Throws c10::TypeError
/// (TypeError in Python) naming a dict's unknown keys.
void expand_keyword_forms(detail::Json& kwargs);

}  // namespace xtc::nn
