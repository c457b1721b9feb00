// Checkpoint directories from C++ (xtc::nn::stack_from_pretrained, ..._from_pretrained): a directory written
// here in the format save_pretrained writes loads with the same outputs, and each bad directory throws naming
// the file and the key, before any tensor is written. (Python writing and C++ reading: the
// example_save_pretrained and pretrained_run ctest entries.)
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <xtc/xtc.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace {

namespace fs = std::filesystem;

// A float32 safetensors file of `module`'s tensors under their layout names.
void write_safetensors(const std::string& path, const std::vector<xtc::nn::functional::ParameterSpec>& specs,
                       const std::vector<at::Tensor>& tensors) {
  nlohmann::ordered_json header;
  std::string data;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto t = tensors[i].contiguous();
    const size_t bytes = t.numel() * t.element_size();
    header[specs[i].name] = {
        {"dtype", "F32"}, {"shape", t.sizes().vec()}, {"data_offsets", {data.size(), data.size() + bytes}}};
    data.append(static_cast<const char*>(t.data_ptr()), bytes);
  }
  const std::string text = header.dump();
  const uint64_t length = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << text << data;
}

fs::path fresh_directory(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("xtc_pretrained_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace

TEST(Pretrained, StackRoundTripsAndBadDirectoriesNameTheFileAndKey) {
  torch::manual_seed(0);
  const auto dir = fresh_directory("stack");
  const std::string config = R"({"dim": 16, "depth": 2, "heads": 2, "ff_mult": [4, 2], "attn_kv_heads": 1})";
  write_text(dir / "config.json", config);
  // A model of those keyword arguments, its weights written as save_pretrained writes them.
  xtc::nn::Decoder original(xtc::nn::AttentionLayersOptions::parse(config));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : original->parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  const std::string weights = (dir / "model.safetensors").string();
  write_safetensors(weights, original->plan->parameters(), original->tensors());
  const auto load = [&] { return xtc::nn::stack_from_pretrained<xtc::nn::Decoder>(dir.string()); };
  auto loaded = load();
  original->eval();
  loaded->eval();
  const auto x = torch::randn({2, 7, 16});
  EXPECT_TRUE(torch::equal(loaded->forward(x), original->forward(x)));

  const auto fails_with = [&](const std::string& needle) {
    const auto message = message_of([&] { load(); });
    EXPECT_NE(message.find(needle), std::string::npos) << message;
  };
  fs::resize_file(weights, fs::file_size(weights) - 100);  // truncated data
  fails_with("model.safetensors: 'layers.3.1.ff.2.bias' data lies outside the file");
  write_text(weights, std::string("\x10\0\0\0\0\0\0\0", 8) + "not json at all!");  // corrupt header
  fails_with("model.safetensors: not a readable safetensors file");
  write_safetensors(weights, original->plan->parameters(), original->tensors());
  write_text(dir / "config.json", R"({"dim": 16, "depth": 2, "heads": 2, "ff_mlt": 4})");  // misspelt
  fails_with("config.json: unrecognized or unsupported keyword arguments: ff_mlt");
  write_text(dir / "config.json",
             R"({"dim": 24, "depth": 2, "heads": 2, "ff_mult": [4, 2], "attn_kv_heads": 1})");
  fails_with("model.safetensors: 'layers.0.0.0.gamma' expected shape [24]");
  write_text(dir / "config.json", R"({"dim": 16, "depth": 1, "heads": 2, "attn_kv_heads": 1})");
  fails_with("tensors the model does not have: layers.2");
  fs::remove(weights);
  fails_with("model.safetensors: cannot open the file");
  fs::remove(dir / "config.json");
  fails_with("no config.json");
}
