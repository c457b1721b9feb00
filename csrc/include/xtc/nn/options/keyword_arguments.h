// x-transformers' keyword arguments, as a JSON object (how config.json holds them), translated to our
// options: the one translation, read by the Python modules and by C++ loading a saved directory.
#pragma once

#include <string>

namespace xtc::nn {

/// AttentionLayers' keyword arguments under x-transformers' names (a JSON object; module arguments given as
/// their spec strings) as the line AttentionLayersOptions::parse() reads, not yet validated. As
/// x-transformers routes them: ff_* to the feed-forwards, attn_* to self- and cross-attention (an attn_*
/// schedule, a list with one value per layer, stays with self-attention), cross_attn_* to cross-attention
/// over attn_*; the dict arguments (residual_fn_kwargs, attn_aggregated_residual_kwargs, rel_pos_kwargs,
/// *_data_dependent_alibi_kwargs) expanded into the options of their keys; a numeric scale_residual or
/// depth_scale_residual as branch_output_scale. Unknown keys throw c10::TypeError (TypeError in Python)
/// naming them.
std::string attention_layers_options_line(const std::string& keyword_arguments_json);

/// A wrapper's keyword arguments (TransformerWrapper's or ContinuousTransformerWrapper's, a JSON object
/// without attn_layers) as its options line: embed_num_tokens' dict as "name:num_tokens|..."; max_mem_len,
/// shift_mem_down and input_not_include_cache, which only set defaults of Python's forward arguments, left
/// out.
std::string wrapper_options_line(const std::string& keyword_arguments_json);

}  // namespace xtc::nn
