#include <ATen/core/grad_mode.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xtc/nn/modules/pretrained.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace xtc::nn {
namespace {

using Json = nlohmann::ordered_json;

// safetensors' dtype names of the dtypes a state_dict holds.
const std::map<at::ScalarType, std::string>& dtype_names() {
  static const std::map<at::ScalarType, std::string> names = {
      {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kDouble, "F64"},
      {at::kLong, "I64"},  {at::kInt, "I32"},  {at::kShort, "I16"},     {at::kChar, "I8"},
      {at::kByte, "U8"},   {at::kBool, "BOOL"}};
  return names;
}

}  // namespace

std::string safetensors_dtype_name(at::ScalarType dtype) {
  const auto found = dtype_names().find(dtype);
  return found != dtype_names().end() ? found->second : std::string(c10::toString(dtype));
}

namespace {

// A read-only map of a whole file, unmapped when done.
struct MappedFile {
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    TORCH_CHECK_VALUE(fd >= 0, path, ": cannot open the file (", std::strerror(errno), ")");
    struct stat st {};
    ::fstat(fd, &st);
    size = static_cast<size_t>(st.st_size);
    data = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
    ::close(fd);
    TORCH_CHECK_VALUE(size == 0 || data != MAP_FAILED, path, ": cannot map the file");
  }
  ~MappedFile() {
    if (data != nullptr && data != MAP_FAILED) ::munmap(data, size);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const char* bytes() const { return static_cast<const char*>(data); }
  void* data = nullptr;
  size_t size = 0;
};

// The header of a safetensors file: its JSON (name -> dtype, shape, data_offsets) and where the data begins.
std::pair<Json, size_t> read_header(const std::string& path, const MappedFile& file) {
  TORCH_CHECK_VALUE(file.size >= 8, path, ": not a readable safetensors file (", file.size, " bytes)");
  uint64_t length = 0;
  std::memcpy(&length, file.bytes(), 8);  // little-endian, as the format and x86 have it
  TORCH_CHECK_VALUE(length <= file.size - 8, path, ": not a readable safetensors file (a header of ", length,
                    " bytes in a file of ", file.size, ")");
  Json header;
  try {
    header = Json::parse(file.bytes() + 8, file.bytes() + 8 + length);
  } catch (const Json::exception& e) {
    TORCH_CHECK_VALUE(false, path, ": not a readable safetensors file (", e.what(), ")");
  }
  TORCH_CHECK_VALUE(header.is_object(), path,
                    ": not a readable safetensors file (the header is not an object)");
  header.erase("__metadata__");
  return {header, 8 + length};
}

// Checks one entry against the tensor it fills and returns its bytes.
const char* entry_data(const std::string& path, const MappedFile& file, size_t begin, const std::string& name,
                       const Json& entry, const at::Tensor& tensor) {
  const auto dtype = dtype_names().find(tensor.scalar_type());
  TORCH_CHECK_VALUE(dtype != dtype_names().end(), path, ": '", name, "' has an unsupported dtype");
  std::vector<int64_t> shape;
  try {
    shape = entry.at("shape").get<std::vector<int64_t>>();
  } catch (const Json::exception& e) {
    TORCH_CHECK_VALUE(false, path, ": '", name, "' has no readable shape (", e.what(), ")");
  }
  const std::string stored = entry.value("dtype", "");
  TORCH_CHECK_VALUE(shape == tensor.sizes().vec() && stored == dtype->second, path, ": '", name,
                    "' expected shape ", tensor.sizes(), " and dtype ", dtype->second, ", got ",
                    c10::IntArrayRef(shape), " and ", stored);
  const auto offsets = entry.value("data_offsets", std::vector<uint64_t>());
  const uint64_t bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
  TORCH_CHECK_VALUE(offsets.size() == 2 && offsets[1] >= offsets[0] && offsets[1] - offsets[0] == bytes &&
                        begin + offsets[1] <= file.size,
                    path, ": '", name, "' data lies outside the file or does not fit its shape (truncated?)");
  return file.bytes() + begin + offsets[0];
}

Json read_config(const std::string& directory) {
  const std::string path = directory + "/config.json";
  std::ifstream in(path);
  TORCH_CHECK_VALUE(in.good(), "from_pretrained: no config.json at ", path);
  Json config;
  try {
    config = Json::parse(in);
  } catch (const Json::exception& e) {
    TORCH_CHECK_VALUE(false, path, ": not valid JSON (", e.what(), ")");
  }
  TORCH_CHECK_VALUE(config.is_object(), path, ": expected a JSON object of keyword arguments");
  return config;
}

// A stack's options from its keyword arguments, with the defaults the Python constructors fill: heads 8, and
// a depth of custom_layers' (or layers_execute_order's) length when none is given.
AttentionLayersOptions stack_options(Json kwargs, const std::string& path) {
  if (!kwargs.contains("heads")) kwargs["heads"] = 8;
  if (kwargs.value("depth", Json()).is_null() && kwargs.contains("custom_layers")) {
    const auto& order = kwargs.value("layers_execute_order", Json());
    const auto& layers = order.is_array() ? order : kwargs["custom_layers"];
    kwargs["depth"] = layers.is_string() ? layers.get<std::string>().size() : layers.size();
  }
  try {
    return AttentionLayersOptions::parse(kwargs.dump());
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, path, ": ", e.what_without_backtrace());
  }
}

template <class Module>
void load_weights(const std::string& directory, const Module& module) {
  load_safetensors(directory + "/model.safetensors", module->plan->parameters(), module->tensors());
}

// A wrapper's stack, by the class saved beside it.
AttentionLayers nested_stack(const Json& config, const std::string& path) {
  TORCH_CHECK_VALUE(config.contains("attn_layers") && config["attn_layers"].is_object(), path,
                    ": expected the stack's keyword arguments under \"attn_layers\"");
  const std::string kind = config.value("attn_layers_class", "AttentionLayers");
  const auto options = stack_options(config["attn_layers"], path);
  if (kind == "Encoder")
    return AttentionLayers(std::static_pointer_cast<AttentionLayersImpl>(Encoder(options).ptr()));
  if (kind == "Decoder")
    return AttentionLayers(std::static_pointer_cast<AttentionLayersImpl>(Decoder(options).ptr()));
  if (kind == "CrossAttender")
    return AttentionLayers(std::static_pointer_cast<AttentionLayersImpl>(CrossAttender(options).ptr()));
  TORCH_CHECK_VALUE(kind == "AttentionLayers", path,
                    ": attn_layers_class: expected Encoder, Decoder, "
                    "CrossAttender or AttentionLayers, got '",
                    kind, "'");
  return AttentionLayers(options);
}

// The wrapper's own keyword arguments. max_mem_len, shift_mem_down and input_not_include_cache only set
// defaults of Python's forward arguments, which the C++ forward takes as arguments.
std::string wrapper_line(Json config) {
  for (const char* key :
       {"attn_layers", "attn_layers_class", "max_mem_len", "shift_mem_down", "input_not_include_cache"})
    config.erase(key);
  return config.dump();
}

// A wrapper of its options around its stack, its weights loaded.
template <class Wrapper, class Options>
Wrapper wrapper_from_pretrained(const std::string& directory) {
  const std::string path = directory + "/config.json";
  const auto config = read_config(directory);
  auto stack = nested_stack(config, path);
  std::optional<Options> options;
  try {
    options = Options::parse(wrapper_line(config));
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, path, ": ", e.what_without_backtrace());
  }
  Wrapper wrapper(*options, stack);
  load_weights(directory, wrapper);
  return wrapper;
}

}  // namespace

void load_safetensors(const std::string& path, const std::vector<functional::ParameterSpec>& specs,
                      const std::vector<at::Tensor>& tensors) {
  TORCH_INTERNAL_ASSERT(specs.size() == tensors.size());
  const MappedFile file(path);
  const auto [header, begin] = read_header(path, file);
  std::vector<const char*> sources;
  std::set<std::string> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& name = specs[i].name;
    TORCH_CHECK_VALUE(header.contains(name), path, ": missing the tensor '", name, "'");
    sources.push_back(entry_data(path, file, begin, name, header[name], tensors[i]));
    expected.insert(name);
  }
  std::string unexpected;
  for (const auto& [name, entry] : header.items())
    if (expected.count(name) == 0) unexpected += (unexpected.empty() ? "" : ", ") + name;
  TORCH_CHECK_VALUE(unexpected.empty(), path, ": tensors the model does not have: ", unexpected);
  // Every entry checked: only now is anything written.
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& t = tensors[i];
    t.copy_(at::from_blob(const_cast<char*>(sources[i]), t.sizes(), at::TensorOptions(t.scalar_type())));
  }
}

template <class Stack>
Stack stack_from_pretrained(const std::string& directory) {
  Stack stack(stack_options(read_config(directory), directory + "/config.json"));
  load_weights(directory, stack);
  return stack;
}

template Encoder stack_from_pretrained<Encoder>(const std::string&);
template Decoder stack_from_pretrained<Decoder>(const std::string&);
template CrossAttender stack_from_pretrained<CrossAttender>(const std::string&);
template AttentionLayers stack_from_pretrained<AttentionLayers>(const std::string&);

TransformerWrapper transformer_wrapper_from_pretrained(const std::string& directory) {
  return wrapper_from_pretrained<TransformerWrapper, TransformerWrapperOptions>(directory);
}

ContinuousTransformerWrapper continuous_wrapper_from_pretrained(const std::string& directory) {
  return wrapper_from_pretrained<ContinuousTransformerWrapper, ContinuousTransformerWrapperOptions>(
      directory);
}

}  // namespace xtc::nn
