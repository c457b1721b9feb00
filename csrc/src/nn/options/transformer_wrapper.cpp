#include <xtc/nn/options/transformer_wrapper.h>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sstream>

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

namespace {

std::string text(const std::optional<int64_t>& v) { return v ? std::to_string(*v) : "none"; }
std::string text(const std::optional<double>& v) { return v ? fmt::format("{:.17g}", *v) : "none"; }

[[noreturn]] void bad(const std::string& key, const char* expected, const std::string& t) {
  TORCH_CHECK_VALUE(false, "TransformerWrapper: option ", key, " expects ", expected, ", got '", t, "'");
}

int64_t integer(const std::string& key, const std::string& t) {
  try {
    size_t used = 0;
    const int64_t v = std::stoll(t, &used);
    if (used == t.size()) return v;
  } catch (const std::exception&) {
  }
  bad(key, "an integer", t);
}

double number(const std::string& key, const std::string& t) {
  try {
    size_t used = 0;
    const double v = std::stod(t, &used);
    if (used == t.size()) return v;
  } catch (const std::exception&) {
  }
  bad(key, "a number", t);
}

bool boolean(const std::string& key, const std::string& t) {
  if (t == "1" || t == "true" || t == "True") return true;
  if (t == "0" || t == "false" || t == "False") return false;
  bad(key, "a bool", t);
}

bool none(const std::string& t) { return t == "none" || t == "None"; }

}  // namespace

std::string TransformerWrapperOptions::serialize() const {
  return fmt::format(
      "num_tokens={};max_seq_len={};emb_dim={};post_emb_norm={};emb_dropout={:.17g};num_memory_tokens={};"
      "tie_embedding={};tie_embedding_scale={};logits_dim={};return_only_embed={};use_abs_pos_emb={};"
      "scaled_sinu_pos_emb={};l2norm_embed={};average_pool_embed={}",
      num_tokens_, max_seq_len_, text(emb_dim_), int(post_emb_norm_), emb_dropout_, num_memory_tokens_,
      int(tie_embedding_), text(tie_embedding_scale_), text(logits_dim_), int(return_only_embed_),
      int(use_abs_pos_emb_), int(scaled_sinu_pos_emb_), int(l2norm_embed_), int(average_pool_embed_));
}

TransformerWrapperOptions TransformerWrapperOptions::parse(const std::string& line) {
  TransformerWrapperOptions o(0, 0);
  std::istringstream stream(line);
  std::string item;
  while (std::getline(stream, item, ';')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    TORCH_CHECK_VALUE(eq != std::string::npos, "TransformerWrapper: expected 'key=value', got '", item, "'");
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    if (k == "num_tokens") o.num_tokens(integer(k, v));
    else if (k == "max_seq_len") o.max_seq_len(integer(k, v));
    else if (k == "emb_dim") o.emb_dim(none(v) ? std::nullopt : std::optional<int64_t>(integer(k, v)));
    else if (k == "post_emb_norm") o.post_emb_norm(boolean(k, v));
    else if (k == "emb_dropout") o.emb_dropout(number(k, v));
    else if (k == "num_memory_tokens") o.num_memory_tokens(none(v) ? 0 : integer(k, v));
    else if (k == "tie_embedding") o.tie_embedding(boolean(k, v));
    else if (k == "tie_embedding_scale")
      o.tie_embedding_scale(none(v) ? std::nullopt : std::optional<double>(number(k, v)));
    else if (k == "logits_dim") o.logits_dim(none(v) ? std::nullopt : std::optional<int64_t>(integer(k, v)));
    else if (k == "return_only_embed") o.return_only_embed(boolean(k, v));
    else if (k == "use_abs_pos_emb") o.use_abs_pos_emb(boolean(k, v));
    else if (k == "scaled_sinu_pos_emb") o.scaled_sinu_pos_emb(boolean(k, v));
    else if (k == "l2norm_embed") o.l2norm_embed(boolean(k, v));
    else if (k == "average_pool_embed") o.average_pool_embed(boolean(k, v));
    else
      TORCH_CHECK_VALUE(false, "TransformerWrapper: unknown option '", k, "'; known options: ",
                        fmt::format("{}", fmt::join(keys(), ", ")));
  }
  o.validate();
  return o;
}

std::vector<std::string> TransformerWrapperOptions::keys() {
  return {"num_tokens",     "max_seq_len",       "emb_dim",           "post_emb_norm",   "emb_dropout",
          "num_memory_tokens", "tie_embedding",  "tie_embedding_scale", "logits_dim",    "return_only_embed",
          "use_abs_pos_emb", "scaled_sinu_pos_emb", "l2norm_embed",     "average_pool_embed"};
}

}  // namespace xtc::nn
