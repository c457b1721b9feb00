#include <xtc/nn/options/transformer_wrapper.h>

#include "src/nn/options/option_text.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>


namespace xtc::nn {

TransformerWrapperOptions::TransformerWrapperOptions(int64_t num_tokens, int64_t max_seq_len)
    : num_tokens_(num_tokens), max_seq_len_(max_seq_len) {}

void TransformerWrapperOptions::validate() const {
  TORCH_CHECK_VALUE(num_tokens_ > 0, "TransformerWrapper: expected num_tokens > 0, got ", num_tokens_);
  TORCH_CHECK_VALUE(max_seq_len_ >= 0, "TransformerWrapper: expected max_seq_len >= 0, got ", max_seq_len_);
  TORCH_CHECK_VALUE(!emb_dim_.has_value() || *emb_dim_ > 0, "TransformerWrapper: expected emb_dim > 0");
  TORCH_CHECK_VALUE(num_memory_tokens_ >= 0, "TransformerWrapper: expected num_memory_tokens >= 0");
  TORCH_CHECK_VALUE(emb_dropout_ >= 0 && emb_dropout_ < 1, "TransformerWrapper: expected emb_dropout in [0, 1)");
  TORCH_CHECK_VALUE(!logits_dim_.has_value() || *logits_dim_ > 0, "TransformerWrapper: expected logits_dim > 0");
  TORCH_CHECK_VALUE(!(tie_embedding_ && logits_dim_.has_value() && *logits_dim_ != num_tokens_),
                    "TransformerWrapper: tie_embedding gives num_tokens logits, so logits_dim must be unset");
}

std::string TransformerWrapperOptions::serialize() const {
  using detail::format_value;
  return fmt::format(
      "num_tokens={};max_seq_len={};emb_dim={};post_emb_norm={};emb_dropout={};num_memory_tokens={};"
      "tie_embedding={};tie_embedding_scale={};logits_dim={};return_only_embed={};use_abs_pos_emb={};"
      "scaled_sinu_pos_emb={};l2norm_embed={};average_pool_embed={}",
      format_value(num_tokens_), format_value(max_seq_len_), format_value(emb_dim_), format_value(post_emb_norm_),
      format_value(emb_dropout_), format_value(num_memory_tokens_), format_value(tie_embedding_),
      format_value(tie_embedding_scale_), format_value(logits_dim_), format_value(return_only_embed_),
      format_value(use_abs_pos_emb_), format_value(scaled_sinu_pos_emb_), format_value(l2norm_embed_),
      format_value(average_pool_embed_));
}

TransformerWrapperOptions TransformerWrapperOptions::parse(const std::string& line) {
  constexpr const char* owner = "TransformerWrapper";
  TransformerWrapperOptions o(0, 0);
  detail::for_each_option(owner, line, [&](const std::string& k, const std::string& v) {
    using detail::parse_value;
    if (k == "num_tokens") o.num_tokens(parse_value<int64_t>(owner, k, v));
    else if (k == "max_seq_len") o.max_seq_len(parse_value<int64_t>(owner, k, v));
    else if (k == "emb_dim") o.emb_dim(parse_value<std::optional<int64_t>>(owner, k, v));
    else if (k == "post_emb_norm") o.post_emb_norm(parse_value<bool>(owner, k, v));
    else if (k == "emb_dropout") o.emb_dropout(parse_value<double>(owner, k, v));
    else if (k == "num_memory_tokens") o.num_memory_tokens(parse_value<std::optional<int64_t>>(owner, k, v).value_or(0));
    else if (k == "tie_embedding") o.tie_embedding(parse_value<bool>(owner, k, v));
    else if (k == "tie_embedding_scale") o.tie_embedding_scale(parse_value<std::optional<double>>(owner, k, v));
    else if (k == "logits_dim") o.logits_dim(parse_value<std::optional<int64_t>>(owner, k, v));
    else if (k == "return_only_embed") o.return_only_embed(parse_value<bool>(owner, k, v));
    else if (k == "use_abs_pos_emb") o.use_abs_pos_emb(parse_value<bool>(owner, k, v));
    else if (k == "scaled_sinu_pos_emb") o.scaled_sinu_pos_emb(parse_value<bool>(owner, k, v));
    else if (k == "l2norm_embed") o.l2norm_embed(parse_value<bool>(owner, k, v));
    else if (k == "average_pool_embed") o.average_pool_embed(parse_value<bool>(owner, k, v));
    else
      TORCH_CHECK_VALUE(false, owner, ": unknown option '", k, "'; known options: ",
                        fmt::format("{}", fmt::join(keys(), ", ")));
  });
  o.validate();
  return o;
}

std::vector<std::string> TransformerWrapperOptions::keys() {
  return {"num_tokens",     "max_seq_len",       "emb_dim",           "post_emb_norm",   "emb_dropout",
          "num_memory_tokens", "tie_embedding",  "tie_embedding_scale", "logits_dim",    "return_only_embed",
          "use_abs_pos_emb", "scaled_sinu_pos_emb", "l2norm_embed",     "average_pool_embed"};
}

}  // namespace xtc::nn
