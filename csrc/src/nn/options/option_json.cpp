#include "src/nn/options/option_json.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>

namespace xtc::nn::detail {
namespace {

// A value of the right kind out of range (2.5 for an int, 2 for a bool) is a ValueError; one of another kind
// (a string for a number, a list for a flag) a TypeError, as Python's own checks tell them apart.
[[noreturn]] void bad_value(const char* owner, const std::string& key, const char* expected,
                            const Json& value, bool right_kind = false) {
  TORCH_CHECK_VALUE(!right_kind, owner, ": option ", key, " expects ", expected, ", got ", value.dump());
  TORCH_CHECK_TYPE(false, owner, ": option ", key, " expects ", expected, ", got ", value.type_name(), " ",
                   value.dump());
}

// A list's items, or a lone value as a list of one (x-transformers' shift_tokens = 1).
template <typename T>
std::vector<T> read_list(const char* owner, const std::string& key, const Json& value) {
  if (value.is_null()) return {};
  if (!value.is_array()) return {read_value<T>(owner, key, value)};
  std::vector<T> values;
  for (const auto& item : value) values.push_back(read_value<T>(owner, key, item));
  return values;
}

template <typename T>
std::optional<T> read_optional(const char* owner, const std::string& key, const Json& value) {
  if (value.is_null()) return std::nullopt;
  return read_value<T>(owner, key, value);
}

}  // namespace

Json parse_object(const char* owner, const std::string& text) {
  Json object;
  try {
    object = Json::parse(text);
  } catch (const Json::exception& e) {
    TORCH_CHECK_VALUE(false, owner, ": expected the options as a JSON object of keyword arguments, got '",
                      text, "' (", e.what(), ")");
  }
  TORCH_CHECK_VALUE(object.is_object(), owner,
                    ": expected the options as a JSON object of keyword arguments, got ", object.type_name());
  return object;
}

void refuse_unknown(const char* owner, const std::vector<std::string>& unknown) {
  TORCH_CHECK_TYPE(unknown.empty(), "unrecognized or unsupported keyword arguments: ",
                   fmt::format("{}", fmt::join(unknown, ", ")), " (", owner,
                   "). The README lists every x-transformers keyword argument and whether x_transformers_cpp "
                   "supports it.");
}

template <>
int64_t read_value<int64_t>(const char* owner, const std::string& key, const Json& value) {
  if (!value.is_number_integer()) bad_value(owner, key, "an integer", value, value.is_number());
  return value.get<int64_t>();
}

template <>
double read_value<double>(const char* owner, const std::string& key, const Json& value) {
  if (value.is_number()) return value.get<double>();
  if (value == "inf") return std::numeric_limits<double>::infinity();
  if (value == "-inf") return -std::numeric_limits<double>::infinity();
  if (value == "nan") return std::numeric_limits<double>::quiet_NaN();
  bad_value(owner, key, "a number", value);
}

template <>
bool read_value<bool>(const char* owner, const std::string& key, const Json& value) {
  if (value.is_boolean()) return value.get<bool>();
  if (value == 0 || value == 1) return value == 1;  // Python's bool is an int
  bad_value(owner, key, "a bool", value, value.is_number());
}

template <>
std::string read_value<std::string>(const char* owner, const std::string& key, const Json& value) {
  if (!value.is_string()) bad_value(owner, key, "a string", value);
  return value.get<std::string>();
}

template <>
std::optional<int64_t> read_value<std::optional<int64_t>>(const char* owner, const std::string& key,
                                                          const Json& value) {
  return read_optional<int64_t>(owner, key, value);
}

template <>
std::optional<bool> read_value<std::optional<bool>>(const char* owner, const std::string& key,
                                                    const Json& value) {
  return read_optional<bool>(owner, key, value);
}

template <>
std::optional<double> read_value<std::optional<double>>(const char* owner, const std::string& key,
                                                        const Json& value) {
  return read_optional<double>(owner, key, value);
}

template <>
std::optional<std::string> read_value<std::optional<std::string>>(const char* owner, const std::string& key,
                                                                  const Json& value) {
  return read_optional<std::string>(owner, key, value);
}

template <>
std::vector<int64_t> read_value<std::vector<int64_t>>(const char* owner, const std::string& key,
                                                      const Json& value) {
  return read_list<int64_t>(owner, key, value);
}

template <>
std::vector<double> read_value<std::vector<double>>(const char* owner, const std::string& key,
                                                    const Json& value) {
  return read_list<double>(owner, key, value);
}

template <>
NamedCounts read_value<NamedCounts>(const char* owner, const std::string& key, const Json& value) {
  if (value.is_null()) return {};
  if (!value.is_object()) bad_value(owner, key, "a dict of names to counts", value);
  NamedCounts counts;
  for (const auto& [name, count] : value.items()) {
    if (!count.is_number_integer() || count.get<int64_t>() <= 0)
      bad_value(owner, key + "['" + name + "']", "an integer > 0", count, count.is_number());
    counts.emplace_back(name, count.get<int64_t>());
  }
  return counts;
}

Json write_value(int64_t value) { return value; }
Json write_value(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}
Json write_value(bool value) { return value; }
Json write_value(const std::string& value) { return value; }
Json write_value(const NamedCounts& value) {
  if (value.empty()) return Json();
  Json object = Json::object();
  for (const auto& [name, count] : value) object[name] = count;
  return object;
}

}  // namespace xtc::nn::detail
