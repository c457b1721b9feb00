// The seed's use case from C++, by the three deployment routes: (a) a native xtc::nn::Encoder over
// precomputed embeddings, (b) the same encoder traced in Python and loaded with torch::jit::load, (c)
// optionally, the encoder exported with a dynamic batch and length and compiled by AOTInductor, loaded with
// AOTIModelPackageLoader (its xtc ops resolve through libxtc, which xtc::xtc links whole). Each is checked
// against the outputs Python saved.
//
// Usage: encoder_app <traced_encoder.pt> <tensors.pt> [encoder.pt2]
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <xtc/xtc.h>

#include <algorithm>
#include <cstdio>

namespace {

// (c): the package at the saved shape and at a second one; returns the larger difference from Python's
// outputs.
double run_package(const char* path, const torch::jit::Module& tensors) {
  torch::inductor::AOTIModelPackageLoader loader(path);
  double worst = 0;
  for (const char* prefix : {"", "other_"}) {
    const std::string p(prefix);
    const auto embed = tensors.attr(p + "embed").toTensor();
    const auto outputs = loader.run({embed, tensors.attr(p + "mask").toTensor()});
    const auto expected = tensors.attr(p + "expected").toTensor();
    const double diff = outputs.size() == 1 && outputs[0].sizes() == expected.sizes()
                            ? (outputs[0] - expected).abs().max().item<double>()
                            : 1e9;
    std::printf("package at %s vs python %.3g\n", c10::str(embed.sizes()).c_str(), diff);
    worst = std::max(worst, diff);
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: %s <traced_encoder.pt> <tensors.pt> [encoder.pt2]\n", argv[0]);
    return 2;
  }
  torch::NoGradGuard no_grad;
  auto traced = torch::jit::load(argv[1]);
  traced.eval();
  auto tensors = torch::jit::load(argv[2]);
  const auto embed = tensors.attr("embed").toTensor();
  const auto mask = tensors.attr("mask").toTensor();
  const auto expected = tensors.attr("expected").toTensor();
  const auto dims = tensors.attr("dims").toTensor();  // dim, depth, heads

  // (a) Native module with the traced model's weights: parameter names are x-transformers' in both.
  xtc::nn::Encoder encoder(xtc::nn::AttentionLayersOptions(dims[0].item<int64_t>(), dims[1].item<int64_t>(),
                                                           dims[2].item<int64_t>()));
  encoder->eval();
  auto native_params = encoder->named_parameters();
  int64_t copied = 0;
  for (const auto& item : traced.named_parameters()) {
    native_params[item.name].copy_(item.value);
    ++copied;
  }
  if (copied != static_cast<int64_t>(native_params.size())) {
    std::fprintf(stderr, "parameter count differs: traced %lld, native %zu\n", static_cast<long long>(copied),
                 native_params.size());
    return 1;
  }
  const auto native_out = encoder->forward(embed, mask);
  const double native_diff = (native_out - expected).abs().max().item<double>();

  // (b) The traced file, at the saved shape and at another batch size and length.
  const auto traced_out = traced.forward({embed, mask}).toTensor();
  const double traced_diff = (traced_out - expected).abs().max().item<double>();
  const auto other = torch::randn({embed.size(0) + 1, embed.size(1) + 5, embed.size(2)});
  const auto other_mask = torch::rand({other.size(0), other.size(1)}) > 0.3;
  const double other_diff =
      (traced.forward({other, other_mask}).toTensor() - encoder->forward(other, other_mask))
          .abs()
          .max()
          .item<double>();

  std::printf("shape %s | native vs python %.3g | traced vs python %.3g | traced vs native at %s %.3g\n",
              c10::str(native_out.sizes()).c_str(), native_diff, traced_diff, c10::str(other.sizes()).c_str(),
              other_diff);
  const double package_diff = argc == 4 ? run_package(argv[3], tensors) : 0.0;
  const bool ok = native_out.sizes() == embed.sizes() && native_diff < 1e-5 && traced_diff < 1e-5 &&
                  other_diff < 1e-5 && package_diff < 1e-5;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
