// Reading and writing options as JSON objects of keyword arguments: what config.json holds, what the ops
// receive and what serialize() writes. Shared by every options struct; internal to the library.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace xtc::nn::detail {

using Json = nlohmann::ordered_json;  // keeps the keys' order: a dict argument's order can matter

/// (name, count) pairs in a dict's order: TransformerWrapper's embed_num_tokens.
using NamedCounts = std::vector<std::pair<std::string, int64_t>>;

/// `text` as a JSON object; anything else throws c10::ValueError naming `owner`.
Json parse_object(const char* owner, const std::string& text);

/// Readers: throw c10::ValueError naming the owner, the key, what was expected and what was given. null reads
/// as an empty optional (an empty list); a float option also takes "inf", "-inf" and "nan" (JSON has no
/// literal for them); a bool takes 0 and 1; a list takes one value for a list of one.
template <typename T>
T read_value(const char* owner, const std::string& key, const Json& value);

Json write_value(int64_t value);
Json write_value(double value);  // non-finite values by name
Json write_value(bool value);
Json write_value(const std::string& value);
Json write_value(const NamedCounts& value);
template <typename T>
Json write_value(const std::optional<T>& value) {
  return value ? write_value(*value) : Json();
}
template <typename T>
Json write_value(const std::vector<T>& values) {
  Json list = Json::array();
  for (const auto& v : values) list.push_back(write_value(v));
  return list;
}

/// One option of an options struct with TORCH_ARG accessors: its key, the nested options it reaches ("attn_",
/// "cross_attn_", "ff_"; empty for the struct's own), and how it is written and read.
template <typename Options>
struct OptionField {
  std::string key;
  std::string part;
  std::function<Json(const Options&)> write;
  std::function<void(Options&, const Json&)> read;
};

/// The options themselves, as the part of them a field is reached through (see option_field).
template <typename Options>
Options& whole(Options& o) {
  return o;
}

/// The field of the TORCH_ARG accessor pair (get, ref) of `part` (the options themselves, or options nested
/// in them, as AttentionLayersOptions' attn()), e.g. option_field<O, bool>(owner, "post_emb_norm",
/// &O::post_emb_norm, &O::post_emb_norm). A count (int64_t) reads null as 0, as x-transformers' None there.
template <typename Options, typename Value, typename Part = Options>
OptionField<Options> option_field(const char* owner, std::string key,
                                  const Value& (Part::*get)() const noexcept, Value& (Part::*ref)() noexcept,
                                  Part& (*part)(Options&) = &whole<Options>, std::string part_name = "") {
  return {key, std::move(part_name),
          // The getter is const; the part accessor is shared with the setter, hence the cast.
          [get, part](const Options& o) { return write_value((part(const_cast<Options&>(o)).*get)()); },
          [owner, key, ref, part](Options& o, const Json& value) {
            if constexpr (std::is_same_v<Value, int64_t>) {
              (part(o).*ref)() = read_value<std::optional<int64_t>>(owner, key, value).value_or(0);
            } else {
              (part(o).*ref)() = read_value<Value>(owner, key, value);
            }
          }};
}

/// option_field of the TORCH_ARG `NAME` (of type TYPE) of OPTIONS, its key the name: one row of an options
/// table.
#define XTC_OPTION_FIELD(OPTIONS, OWNER, NAME, TYPE) \
  XTC_OPTION_FIELD_OF(OPTIONS, OPTIONS, ::xtc::nn::detail::whole<OPTIONS>, OWNER, "", #NAME, NAME, TYPE)
/// The same for the TORCH_ARG `NAME` of the options PART nested in OPTIONS (reached by PART_OF), its key
/// PREFIX + its name.
#define XTC_OPTION_FIELD_OF(OPTIONS, PART, PART_OF, OWNER, PREFIX, KEY, NAME, TYPE)                       \
  ::xtc::nn::detail::option_field<OPTIONS, TYPE, PART>(                                                   \
      OWNER, std::string(PREFIX) + KEY, static_cast<const TYPE& (PART::*)() const noexcept>(&PART::NAME), \
      static_cast<TYPE& (PART::*)() noexcept>(&PART::NAME), PART_OF, std::string(PREFIX))

/// Every field's key and value, in the table's order.
template <typename Options>
Json write_fields(const std::vector<OptionField<Options>>& fields, const Options& o) {
  Json object = Json::object();
  for (const auto& f : fields) object[f.key] = f.write(o);
  return object;
}

/// The table's keys, in order.
template <typename Options>
std::vector<std::string> field_keys(const std::vector<OptionField<Options>>& fields) {
  std::vector<std::string> keys;
  for (const auto& f : fields) keys.push_back(f.key);
  return keys;
}

/// Throws c10::TypeError (TypeError in Python, as for an unknown keyword argument) naming `unknown`.
void refuse_unknown(const char* owner, const std::vector<std::string>& unknown);

/// The field of `key`, or nullptr.
template <typename Options>
const OptionField<Options>* find_field(const std::vector<OptionField<Options>>& fields,
                                       const std::string& key) {
  for (const auto& f : fields)
    if (f.key == key) return &f;
  return nullptr;
}

/// Throws naming every key of `object` that no field has, in sorted order.
template <typename Options>
void check_known_keys(const char* owner, const std::vector<OptionField<Options>>& fields,
                      const Json& object) {
  std::vector<std::string> unknown;
  for (const auto& [key, value] : object.items())
    if (find_field(fields, key) == nullptr) unknown.push_back(key);
  std::sort(unknown.begin(), unknown.end());
  refuse_unknown(owner, unknown);
}

/// Sets each key of `object` on `o`; unknown keys throw, naming them all.
template <typename Options>
void read_fields(const char* owner, const std::vector<OptionField<Options>>& fields, const Json& object,
                 Options& o) {
  check_known_keys(owner, fields, object);
  for (const auto& [key, value] : object.items()) find_field(fields, key)->read(o, value);
}

}  // namespace xtc::nn::detail
