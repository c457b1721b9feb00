#include <xtc/nn/options/continuous.h>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sstream>

namespace xtc::nn {

void ContinuousTransformerWrapperOptions::validate() const {
  for (auto [name, v] : {std::pair<const char*, std::optional<int64_t>>{"dim_in", dim_in_}, {"dim_out", dim_out_},
                         {"max_seq_len", max_seq_len_}})
    TORCH_CHECK_VALUE(!v.has_value() || *v >= 0, "ContinuousTransformerWrapper: expected ", name, " >= 0, got ", *v);
  TORCH_CHECK_VALUE(num_memory_tokens_ >= 0, "ContinuousTransformerWrapper: expected num_memory_tokens >= 0, got ",
                    num_memory_tokens_);
  TORCH_CHECK_VALUE(emb_dropout_ >= 0 && emb_dropout_ < 1,
                    "ContinuousTransformerWrapper: expected emb_dropout in [0, 1), got ", emb_dropout_);
}

namespace {

std::string text(const std::optional<int64_t>& v) { return v ? std::to_string(*v) : "none"; }

std::optional<int64_t> optional_int(const std::string& key, const std::string& t) {
  if (t == "none" || t == "None") return std::nullopt;
  try {
    size_t used = 0;
    const int64_t v = std::stoll(t, &used);
    if (used == t.size()) return v;
  } catch (const std::exception&) {
  }
  TORCH_CHECK_VALUE(false, "ContinuousTransformerWrapper: option ", key, " expects an integer, got '", t, "'");
}

bool boolean(const std::string& key, const std::string& t) {
  if (t == "1" || t == "true" || t == "True") return true;
  if (t == "0" || t == "false" || t == "False") return false;
  TORCH_CHECK_VALUE(false, "ContinuousTransformerWrapper: option ", key, " expects a bool, got '", t, "'");
}

}  // namespace

std::string ContinuousTransformerWrapperOptions::serialize() const {
  return fmt::format(
      "dim_in={};dim_out={};max_seq_len={};num_memory_tokens={};post_emb_norm={};emb_dropout={:.17g};"
      "use_abs_pos_emb={};scaled_sinu_pos_emb={};average_pool_embed={};use_identity_if_same_dim={}",
      text(dim_in_), text(dim_out_), text(max_seq_len_), num_memory_tokens_, int(post_emb_norm_), emb_dropout_,
      int(use_abs_pos_emb_), int(scaled_sinu_pos_emb_), int(average_pool_embed_), int(use_identity_if_same_dim_));
}

ContinuousTransformerWrapperOptions ContinuousTransformerWrapperOptions::parse(const std::string& line) {
  ContinuousTransformerWrapperOptions o;
  std::istringstream stream(line);
  std::string item;
  while (std::getline(stream, item, ';')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    TORCH_CHECK_VALUE(eq != std::string::npos, "ContinuousTransformerWrapper: expected 'key=value', got '", item, "'");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "dim_in") o.dim_in(optional_int(key, value));
    else if (key == "dim_out") o.dim_out(optional_int(key, value));
    else if (key == "max_seq_len") o.max_seq_len(optional_int(key, value));
    else if (key == "num_memory_tokens") o.num_memory_tokens(optional_int(key, value).value_or(0));
    else if (key == "post_emb_norm") o.post_emb_norm(boolean(key, value));
    else if (key == "emb_dropout") o.emb_dropout(std::stod(value));
    else if (key == "use_abs_pos_emb") o.use_abs_pos_emb(boolean(key, value));
    else if (key == "scaled_sinu_pos_emb") o.scaled_sinu_pos_emb(boolean(key, value));
    else if (key == "average_pool_embed") o.average_pool_embed(boolean(key, value));
    else if (key == "use_identity_if_same_dim") o.use_identity_if_same_dim(boolean(key, value));
    else
      TORCH_CHECK_VALUE(false, "ContinuousTransformerWrapper: unknown option '", key, "'; known options: ",
                        fmt::format("{}", fmt::join(keys(), ", ")));
  }
  o.validate();
  return o;
}

std::vector<std::string> ContinuousTransformerWrapperOptions::keys() {
  return {"dim_in",          "dim_out",           "max_seq_len",         "num_memory_tokens",
          "post_emb_norm",   "emb_dropout",       "use_abs_pos_emb",     "scaled_sinu_pos_emb",
          "average_pool_embed", "use_identity_if_same_dim"};
}

}  // namespace xtc::nn
