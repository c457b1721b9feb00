// Checkpoint directories that Python saved (save_pretrained: config.json + model.safetensors), loaded in C++
// without Python: an Encoder and a TransformerWrapper, each checked against the outputs Python saved.
//
// Usage: pretrained_app <dir with encoder/, lm/ and tensors.pt>
#include <torch/script.h>
#include <xtc/xtc.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <dir with encoder/, lm/ and tensors.pt>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  torch::NoGradGuard no_grad;
  auto tensors = torch::jit::load(dir + "/tensors.pt");
  const auto get = [&](const char* name) { return tensors.attr(name).toTensor(); };

  auto encoder = xtc::nn::stack_from_pretrained<xtc::nn::Encoder>(dir + "/encoder");
  encoder->eval();
  const auto encoded = encoder->forward(get("embed"), get("mask"));
  const double encoder_diff = (encoded - get("encoded")).abs().max().item<double>();

  auto lm = xtc::nn::transformer_wrapper_from_pretrained(dir + "/lm");
  lm->eval();
  const auto logits = lm->forward(get("tokens"));
  const double lm_diff = (logits - get("logits")).abs().max().item<double>();

  std::printf("encoder %s vs python %.3g | lm %s vs python %.3g\n", c10::str(encoded.sizes()).c_str(),
              encoder_diff, c10::str(logits.sizes()).c_str(), lm_diff);
  const bool ok = encoded.sizes() == get("encoded").sizes() && logits.sizes() == get("logits").sizes() &&
                  encoder_diff < 1e-5 && lm_diff < 1e-5;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
