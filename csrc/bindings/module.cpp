// pybind11 bindings: construction helpers only. The math is reached from Python through torch.ops.xtc.*, never
// through these functions, so that tracing, export and torch.compile see dispatcher ops.
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/transformer_wrapper.h>
#include <xtc/nn/options/attention_layers.h>

#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>

namespace py = pybind11;

namespace {

// Runs f with torch's translation of c10::Error into Python exceptions (ValueError for TORCH_CHECK_VALUE, ...).
template <typename F>
auto with_torch_errors(F&& f) {
  HANDLE_TH_ERRORS
  return f();
  END_HANDLE_TH_ERRORS_PYBIND
}

// (canonical options, [(name, initial value, is_buffer)]) of a wrapper built around a fresh AttentionLayers: the
// layout its op reads, attn_layers.* included.
template <typename Wrapper, typename WrapperOptions>
auto wrapper_layout(const std::string& options, const std::string& layer_options) {
  return with_torch_errors([&] {
    Wrapper wrapper(WrapperOptions::parse(options),
                    xtc::nn::AttentionLayers(xtc::nn::AttentionLayersOptions::parse(layer_options)));
    std::vector<std::tuple<std::string, at::Tensor, bool>> named;
    const auto tensors = wrapper->tensors();
    const auto& specs = wrapper->plan->parameters();
    for (size_t i = 0; i < specs.size(); ++i) named.emplace_back(specs[i].name, tensors[i], specs[i].buffer);
    return std::make_pair(wrapper->options.serialize(), named);
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "x_transformers_cpp native bindings; the ops themselves live in torch.ops.xtc";

  m.def("option_keys", &xtc::nn::AttentionLayersOptions::keys,
        "Keys of the serialised AttentionLayers options, e.g. 'heads', 'attn.dim_head'.");

  m.def(
      "normalize_options",
      [](const std::string& text) {
        return with_torch_errors([&] { return xtc::nn::AttentionLayersOptions::parse(text).serialize(); });
      },
      py::arg("options"), "Validates 'key=value;...' options and returns them complete, in canonical form.");

  m.def(
      "disables_abs_pos_emb",
      [](const std::string& text) {
        return with_torch_errors(
            [&] { return xtc::nn::AttentionLayersOptions::parse(text).disables_abs_pos_emb(); });
      },
      py::arg("options"), "x-transformers' resolved disable_abs_pos_emb of these options (default: rotary or T5 bias).");

  m.def(
      "parameter_layout",
      [](const std::string& text) {
        return with_torch_errors([&] {
          xtc::nn::AttentionLayers layers(xtc::nn::AttentionLayersOptions::parse(text));
          std::vector<std::tuple<std::string, at::Tensor, bool>> named;
          const auto tensors = layers->tensors();
          const auto& specs = layers->plan->parameters();
          for (size_t i = 0; i < specs.size(); ++i) named.emplace_back(specs[i].name, tensors[i], specs[i].buffer);
          return named;
        });
      },
      py::arg("options"),
      "(name, freshly initialised value, is_buffer) of every parameter and buffer of xtc::nn::AttentionLayers with "
      "these options, in the order the attention_layers op reads them.");

  m.def(
      "executed_attention_types",
      [](const std::string& text) {
        return with_torch_errors([&] {
          return xtc::nn::functional::AttentionLayersPlan(xtc::nn::AttentionLayersOptions::parse(text))
              .executed_attention_types();
        });
      },
      py::arg("options"),
      "The kind ('a' self, 'c' cross) of each attention layer in execution order: the order of the cached_kv pairs.");

  m.def("transformer_wrapper_option_keys", &xtc::nn::TransformerWrapperOptions::keys,
        "Keys of the serialised TransformerWrapper options.");

  m.def("transformer_wrapper_layout",
        &wrapper_layout<xtc::nn::TransformerWrapper, xtc::nn::TransformerWrapperOptions>, py::arg("options"),
        py::arg("layer_options"),
        "(canonical options, [(name, initial value, is_buffer)]) of xtc::nn::TransformerWrapper, in the order the "
        "transformer_wrapper op reads them; attn_layers.* included.");

  m.def("continuous_option_keys", &xtc::nn::ContinuousTransformerWrapperOptions::keys,
        "Keys of the serialised ContinuousTransformerWrapper options.");

  m.def("continuous_layout",
        &wrapper_layout<xtc::nn::ContinuousTransformerWrapper, xtc::nn::ContinuousTransformerWrapperOptions>,
        py::arg("options"), py::arg("layer_options"),
        "(canonical options, [(name, initial value, is_buffer)]) of xtc::nn::ContinuousTransformerWrapper, in the "
        "order the continuous_transformer op reads them; attn_layers.* included.");
}
