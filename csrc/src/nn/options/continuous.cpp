#include <xtc/nn/options/continuous.h>

#include "src/nn/options/option_text.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace xtc::nn {

void ContinuousTransformerWrapperOptions::validate() const {
  for (auto [name, v] : {std::pair<const char*, std::optional<int64_t>>{"dim_in", dim_in_}, {"dim_out", dim_out_}})
    TORCH_CHECK_VALUE(!v.has_value() || *v > 0, "ContinuousTransformerWrapper: expected ", name, " > 0, got ", *v);
  TORCH_CHECK_VALUE(!max_seq_len_.has_value() || *max_seq_len_ >= 0,
                    "ContinuousTransformerWrapper: expected max_seq_len >= 0, got ", max_seq_len_.value_or(0));
  TORCH_CHECK_VALUE(num_memory_tokens_ >= 0, "ContinuousTransformerWrapper: expected num_memory_tokens >= 0, got ",
                    num_memory_tokens_);
  TORCH_CHECK_VALUE(emb_dropout_ >= 0 && emb_dropout_ < 1,
                    "ContinuousTransformerWrapper: expected emb_dropout in [0, 1), got ", emb_dropout_);
}

std::string ContinuousTransformerWrapperOptions::serialize() const {
  using detail::format_value;
  return fmt::format(
      "dim_in={};dim_out={};max_seq_len={};num_memory_tokens={};post_emb_norm={};emb_dropout={};"
      "use_abs_pos_emb={};scaled_sinu_pos_emb={};average_pool_embed={};use_identity_if_same_dim={};probabilistic={}",
      format_value(dim_in_), format_value(dim_out_), format_value(max_seq_len_), format_value(num_memory_tokens_),
      format_value(post_emb_norm_), format_value(emb_dropout_), format_value(use_abs_pos_emb_),
      format_value(scaled_sinu_pos_emb_), format_value(average_pool_embed_), format_value(use_identity_if_same_dim_),
      format_value(probabilistic_));
}

ContinuousTransformerWrapperOptions ContinuousTransformerWrapperOptions::parse(const std::string& line) {
  constexpr const char* owner = "ContinuousTransformerWrapper";
  ContinuousTransformerWrapperOptions o;
  detail::for_each_option(owner, line, [&](const std::string& k, const std::string& v) {
    using detail::parse_value;
    if (k == "dim_in") o.dim_in(parse_value<std::optional<int64_t>>(owner, k, v));
    else if (k == "dim_out") o.dim_out(parse_value<std::optional<int64_t>>(owner, k, v));
    else if (k == "max_seq_len") o.max_seq_len(parse_value<std::optional<int64_t>>(owner, k, v));
    else if (k == "num_memory_tokens") o.num_memory_tokens(parse_value<std::optional<int64_t>>(owner, k, v).value_or(0));
    else if (k == "post_emb_norm") o.post_emb_norm(parse_value<bool>(owner, k, v));
    else if (k == "emb_dropout") o.emb_dropout(parse_value<double>(owner, k, v));
    else if (k == "use_abs_pos_emb") o.use_abs_pos_emb(parse_value<bool>(owner, k, v));
    else if (k == "scaled_sinu_pos_emb") o.scaled_sinu_pos_emb(parse_value<bool>(owner, k, v));
    else if (k == "average_pool_embed") o.average_pool_embed(parse_value<bool>(owner, k, v));
    else if (k == "use_identity_if_same_dim") o.use_identity_if_same_dim(parse_value<bool>(owner, k, v));
    else if (k == "probabilistic") o.probabilistic(parse_value<bool>(owner, k, v));
    else
      TORCH_CHECK_VALUE(false, owner, ": unknown option '", k, "'; known options: ",
                        fmt::format("{}", fmt::join(keys(), ", ")));
  });
  o.validate();
  return o;
}

std::vector<std::string> ContinuousTransformerWrapperOptions::keys() {
  return {"dim_in",        "dim_out",         "max_seq_len",         "num_memory_tokens",  "post_emb_norm",
          "emb_dropout",   "use_abs_pos_emb", "scaled_sinu_pos_emb", "average_pool_embed", "use_identity_if_same_dim",
          "probabilistic"};
}

}  // namespace xtc::nn
