#include "src/nn/options/option_text.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sstream>

namespace xtc::nn::detail {
namespace {

[[noreturn]] void bad_value(const char* owner, const std::string& key, const char* expected,
                            const std::string& text) {
  TORCH_CHECK_VALUE(false, owner, ": option ", key, " expects ", expected, ", got '", text, "'");
}

bool is_none(const std::string& text) { return text == "none" || text == "None"; }

}  // namespace

void unknown_option(const char* owner, const std::string& key, const std::vector<std::string>& known) {
  TORCH_CHECK_VALUE(false, owner, ": unknown option '", key,
                    "'; known options: ", fmt::format("{}", fmt::join(known, ", ")));
}

void for_each_option(const char* owner, const std::string& line,
                     const std::function<void(const std::string&, const std::string&)>& set) {
  std::istringstream stream(line);
  std::string item;
  while (std::getline(stream, item, ';')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    TORCH_CHECK_VALUE(eq != std::string::npos, owner, ": expected 'key=value' in options, got '", item, "'");
    set(item.substr(0, eq), item.substr(eq + 1));
  }
}

// "none" as an empty optional, anything else as a T.
template <typename T>
std::optional<T> parse_optional(const char* owner, const std::string& key, const std::string& text) {
  if (is_none(text)) return std::nullopt;
  return parse_value<T>(owner, key, text);
}

template <>
int64_t parse_value<int64_t>(const char* owner, const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    const int64_t value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  bad_value(owner, key, "an integer", text);
}

template <>
double parse_value<double>(const char* owner, const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  bad_value(owner, key, "a number", text);
}

template <>
bool parse_value<bool>(const char* owner, const std::string& key, const std::string& text) {
  if (text == "1" || text == "true" || text == "True") return true;
  if (text == "0" || text == "false" || text == "False") return false;
  bad_value(owner, key, "a bool", text);
}

template <>
std::optional<int64_t> parse_value<std::optional<int64_t>>(const char* owner, const std::string& key,
                                                           const std::string& text) {
  return parse_optional<int64_t>(owner, key, text);
}

template <>
std::optional<bool> parse_value<std::optional<bool>>(const char* owner, const std::string& key,
                                                     const std::string& text) {
  return parse_optional<bool>(owner, key, text);
}

template <>
std::optional<double> parse_value<std::optional<double>>(const char* owner, const std::string& key,
                                                         const std::string& text) {
  return parse_optional<double>(owner, key, text);
}

template <>
std::optional<std::string> parse_value<std::optional<std::string>>(const char* owner, const std::string& key,
                                                                   const std::string& text) {
  if (is_none(text)) return std::nullopt;
  for (char c : text)
    if (c == ';' || c == '=' || c == ',') bad_value(owner, key, "letters", text);
  return text;
}

namespace {

// A comma-separated list, each item read as one T.
template <typename T>
std::vector<T> parse_list(const char* owner, const std::string& key, const std::string& text) {
  std::vector<T> values;
  std::istringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ','))
    if (!item.empty()) values.push_back(parse_value<T>(owner, key, item));
  return values;
}

}  // namespace

template <>
std::vector<int64_t> parse_value<std::vector<int64_t>>(const char* owner, const std::string& key,
                                                       const std::string& text) {
  return parse_list<int64_t>(owner, key, text);
}

template <>
std::vector<double> parse_value<std::vector<double>>(const char* owner, const std::string& key,
                                                     const std::string& text) {
  return parse_list<double>(owner, key, text);
}

std::string format_value(int64_t value) { return std::to_string(value); }
std::string format_value(double value) { return fmt::format("{:.17g}", value); }
std::string format_value(bool value) { return value ? "1" : "0"; }
std::string format_value(const std::optional<int64_t>& value) {
  return value ? format_value(*value) : "none";
}
std::string format_value(const std::optional<bool>& value) { return value ? format_value(*value) : "none"; }
std::string format_value(const std::optional<double>& value) { return value ? format_value(*value) : "none"; }
std::string format_value(const std::optional<std::string>& value) { return value ? *value : "none"; }
std::string format_value(const std::vector<int64_t>& value) {
  return fmt::format("{}", fmt::join(value, ","));
}
std::string format_value(const std::vector<double>& value) {
  std::vector<std::string> items;
  for (const double v : value) items.push_back(format_value(v));
  return fmt::format("{}", fmt::join(items, ","));
}

}  // namespace xtc::nn::detail
