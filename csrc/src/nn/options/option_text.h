// Reading and writing option values in the "key=value;..." lines that the layer-stack ops receive. Shared by
// every options struct; internal to the library.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace xtc::nn::detail {

/// Calls set(key, value) for each "key=value" of `line`; `owner` names the options in error messages.
void for_each_option(const char* owner, const std::string& line,
                     const std::function<void(const std::string& key, const std::string& value)>& set);

/// Parsers: throw c10::ValueError naming the owner, the key, what was expected and what was given.
/// "none" / "None" read as an empty optional.
template <typename T>
T parse_value(const char* owner, const std::string& key, const std::string& text);

std::string format_value(int64_t value);
std::string format_value(double value);  // enough digits to read back the same double
std::string format_value(bool value);
std::string format_value(const std::optional<int64_t>& value);
std::string format_value(const std::optional<bool>& value);
std::string format_value(const std::optional<double>& value);
std::string format_value(const std::optional<std::string>& value);
std::string format_value(const std::vector<int64_t>& value);
std::string format_value(const std::vector<double>& value);

/// One option of an options struct with TORCH_ARG accessors: its key, and how it is written and read back.
template <typename Options>
struct OptionField {
  std::string key;
  std::function<std::string(const Options&)> format;
  std::function<void(Options&, const std::string&)> parse;
};

/// The options themselves, as the part of them a field is reached through (see option_field).
template <typename Options>
Options& whole(Options& o) {
  return o;
}

/// The field of the TORCH_ARG accessor pair (get, ref) of `part` (the options themselves, or options nested
/// in them, as AttentionLayersOptions' attn()), e.g. option_field<O, bool>(owner, "post_emb_norm",
/// &O::post_emb_norm, &O::post_emb_norm). A count (int64_t) reads "none" as 0, as x-transformers' None there.
template <typename Options, typename Value, typename Part = Options>
OptionField<Options> option_field(const char* owner, std::string key,
                                  const Value& (Part::*get)() const noexcept, Value& (Part::*ref)() noexcept,
                                  Part& (*part)(Options&) = &whole<Options>) {
  return {key,
          // The getter is const; the part accessor is shared with the setter, hence the cast.
          [get, part](const Options& o) { return format_value((part(const_cast<Options&>(o)).*get)()); },
          [owner, key, ref, part](Options& o, const std::string& text) {
            if constexpr (std::is_same_v<Value, int64_t>) {
              (part(o).*ref)() = parse_value<std::optional<int64_t>>(owner, key, text).value_or(0);
            } else {
              (part(o).*ref)() = parse_value<Value>(owner, key, text);
            }
          }};
}

/// option_field of the TORCH_ARG `NAME` (of type TYPE) of OPTIONS, its key the name: one row of an options
/// table.
#define XTC_OPTION_FIELD(OPTIONS, OWNER, NAME, TYPE) \
  XTC_OPTION_FIELD_OF(OPTIONS, OPTIONS, ::xtc::nn::detail::whole<OPTIONS>, OWNER, #NAME, NAME, TYPE)
/// The same for the TORCH_ARG `NAME` of the options PART nested in OPTIONS (reached by PART_OF), under KEY.
#define XTC_OPTION_FIELD_OF(OPTIONS, PART, PART_OF, OWNER, KEY, NAME, TYPE)         \
  ::xtc::nn::detail::option_field<OPTIONS, TYPE, PART>(                             \
      OWNER, KEY, static_cast<const TYPE& (PART::*)() const noexcept>(&PART::NAME), \
      static_cast<TYPE& (PART::*)() noexcept>(&PART::NAME), PART_OF)

/// "key=value;..." of every field, in the table's order.
template <typename Options>
std::string format_fields(const std::vector<OptionField<Options>>& fields, const Options& o) {
  std::string line;
  for (const auto& f : fields) line += (line.empty() ? "" : ";") + f.key + "=" + f.format(o);
  return line;
}

/// The table's keys, in order.
template <typename Options>
std::vector<std::string> field_keys(const std::vector<OptionField<Options>>& fields) {
  std::vector<std::string> keys;
  for (const auto& f : fields) keys.push_back(f.key);
  return keys;
}

/// Sets each "key=value" of `line` on `o`; an unknown key throws, listing the known ones.
void unknown_option(const char* owner, const std::string& key, const std::vector<std::string>& known);
template <typename Options>
void parse_fields(const char* owner, const std::vector<OptionField<Options>>& fields, const std::string& line,
                  Options& o) {
  for_each_option(owner, line, [&](const std::string& key, const std::string& value) {
    for (const auto& f : fields) {
      if (f.key == key) return f.parse(o, value);
    }
    unknown_option(owner, key, field_keys(fields));
  });
}

}  // namespace xtc::nn::detail
