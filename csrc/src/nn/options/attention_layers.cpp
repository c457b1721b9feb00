#include <xtc/nn/options/attention_layers.h>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <sstream>

namespace xtc::nn {

AttentionLayersOptions::AttentionLayersOptions(int64_t dim, int64_t depth, int64_t heads)
    : dim_(dim), depth_(depth), heads_(heads) {}

int64_t AttentionLayersOptions::resolved_kv_heads() const {
  if (attn_.one_kv_head()) return 1;
  return attn_.kv_heads().value_or(heads_);
}

std::vector<char> AttentionLayersOptions::layer_types() const {
  std::vector<char> types;
  for (int64_t i = 0; i < depth_; ++i) {
    types.push_back('a');
    types.push_back('f');
  }
  return types;
}

void AttentionLayersOptions::validate() const {
  TORCH_CHECK_VALUE(dim_ > 0, "AttentionLayers: expected dim > 0, got ", dim_);
  TORCH_CHECK_VALUE(depth_ > 0, "AttentionLayers: expected depth > 0, got ", depth_);
  TORCH_CHECK_VALUE(heads_ > 0, "AttentionLayers: expected heads > 0, got ", heads_);
  TORCH_CHECK_VALUE(attn_.dim_head() > 0, "AttentionLayers: expected attn_dim_head > 0, got ", attn_.dim_head());
  TORCH_CHECK_VALUE(!(attn_.one_kv_head() && attn_.kv_heads().has_value()),
                    "AttentionLayers: attn_one_kv_head and attn_kv_heads clash; set at most one of them");
  const int64_t kv_heads = resolved_kv_heads();
  TORCH_CHECK_VALUE(kv_heads > 0 && heads_ % kv_heads == 0, "AttentionLayers: expected attn_kv_heads to divide heads (",
                    heads_, "), got ", kv_heads);
  TORCH_CHECK_VALUE(ff_.mult() > 0 && static_cast<int64_t>(dim_ * ff_.mult()) > 0,
                    "AttentionLayers: expected ff_mult > 0 giving an inner width >= 1, got ", ff_.mult());
  for (auto [name, p] : {std::pair<const char*, double>{"attn_dropout", attn_.dropout()},
                         {"ff_dropout", ff_.dropout()},
                         {"layer_dropout", layer_dropout_}}) {
    TORCH_CHECK_VALUE(p >= 0 && p < 1, "AttentionLayers: expected ", name, " in [0, 1), got ", p);
  }
  // x-transformers: with one head there is no output projection, so the head width must equal dim.
  TORCH_CHECK_VALUE(heads_ > 1 || attn_.dim_head() == dim_,
                    "AttentionLayers: with heads=1 there is no output projection, so attn_dim_head must equal dim (",
                    dim_, "), got ", attn_.dim_head());
}

namespace {

// One serialisable option: its key and how to read and write it as text.
struct Field {
  const char* key;
  std::function<std::string(const AttentionLayersOptions&)> get;
  std::function<void(AttentionLayersOptions&, const std::string&)> set;
};

int64_t to_int(const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    const int64_t value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  TORCH_CHECK_VALUE(false, "AttentionLayers: option ", key, " expects an integer, got '", text, "'");
}

double to_double(const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  TORCH_CHECK_VALUE(false, "AttentionLayers: option ", key, " expects a number, got '", text, "'");
}

bool to_bool(const std::string& key, const std::string& text) {
  if (text == "1" || text == "true" || text == "True") return true;
  if (text == "0" || text == "false" || text == "False") return false;
  TORCH_CHECK_VALUE(false, "AttentionLayers: option ", key, " expects a bool, got '", text, "'");
}

// Doubles are written with enough digits to read back the same value.
std::string from_double(double value) { return fmt::format("{:.17g}", value); }

#define XTC_INT_FIELD(KEY, EXPR)                                                                  \
  Field {                                                                                         \
    KEY, [](const AttentionLayersOptions& o) { return std::to_string(o.EXPR()); },                \
        [](AttentionLayersOptions& o, const std::string& t) { o.EXPR(to_int(KEY, t)); }           \
  }
#define XTC_DOUBLE_FIELD(KEY, EXPR)                                                               \
  Field {                                                                                         \
    KEY, [](const AttentionLayersOptions& o) { return from_double(o.EXPR()); },                   \
        [](AttentionLayersOptions& o, const std::string& t) { o.EXPR(to_double(KEY, t)); }        \
  }
#define XTC_BOOL_FIELD(KEY, EXPR)                                                                 \
  Field {                                                                                         \
    KEY, [](const AttentionLayersOptions& o) { return std::string(o.EXPR() ? "1" : "0"); },       \
        [](AttentionLayersOptions& o, const std::string& t) { o.EXPR(to_bool(KEY, t)); }          \
  }

const std::vector<Field>& fields() {
  static const std::vector<Field> all = {
      XTC_INT_FIELD("dim", dim),
      XTC_INT_FIELD("depth", depth),
      XTC_INT_FIELD("heads", heads),
      XTC_BOOL_FIELD("causal", causal),
      XTC_DOUBLE_FIELD("layer_dropout", layer_dropout),
      XTC_INT_FIELD("attn.dim_head", attn().dim_head),
      Field{"attn.kv_heads",
            [](const AttentionLayersOptions& o) {
              return o.attn().kv_heads().has_value() ? std::to_string(*o.attn().kv_heads()) : std::string("none");
            },
            [](AttentionLayersOptions& o, const std::string& t) {
              o.attn().kv_heads(t == "none" || t == "None" ? std::nullopt
                                                           : std::optional<int64_t>(to_int("attn.kv_heads", t)));
            }},
      XTC_BOOL_FIELD("attn.one_kv_head", attn().one_kv_head),
      XTC_DOUBLE_FIELD("attn.dropout", attn().dropout),
      XTC_BOOL_FIELD("attn.flash", attn().flash),
      XTC_DOUBLE_FIELD("ff.mult", ff().mult),
      XTC_DOUBLE_FIELD("ff.dropout", ff().dropout),
  };
  return all;
}

#undef XTC_INT_FIELD
#undef XTC_DOUBLE_FIELD
#undef XTC_BOOL_FIELD

}  // namespace

std::string AttentionLayersOptions::serialize() const {
  std::string text;
  for (const auto& field : fields()) {
    if (!text.empty()) text += ';';
    text += fmt::format("{}={}", field.key, field.get(*this));
  }
  return text;
}

AttentionLayersOptions AttentionLayersOptions::parse(const std::string& text) {
  AttentionLayersOptions options(0, 0, 0);
  std::istringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ';')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    TORCH_CHECK_VALUE(eq != std::string::npos, "AttentionLayers: expected 'key=value' in options, got '", item, "'");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    bool known = false;
    for (const auto& field : fields()) {
      if (key == field.key) {
        field.set(options, value);
        known = true;
        break;
      }
    }
    TORCH_CHECK_VALUE(known, "AttentionLayers: unknown option '", key, "'; known options: ",
                      fmt::format("{}", fmt::join(keys(), ", ")));
  }
  options.validate();
  return options;
}

std::vector<std::string> AttentionLayersOptions::keys() {
  std::vector<std::string> names;
  for (const auto& field : fields()) names.emplace_back(field.key);
  return names;
}

}  // namespace xtc::nn
