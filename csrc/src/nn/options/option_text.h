// Reading and writing option values in the "key=value;..." lines that the layer-stack ops receive. Shared by every
// options struct; internal to the library.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
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

}  // namespace xtc::nn::detail
