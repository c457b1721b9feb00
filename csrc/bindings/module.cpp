// pybind11 bindings: construction helpers only. The math is reached from Python through torch.ops.xtc.*,
// never through these functions, so that tracing, export and torch.compile see dispatcher ops.
#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>
#include <xtc/backends.h>
#include <xtc/nn/functional/context_parallel.h>
#include <xtc/nn/modules/attention_layers.h>
#include <xtc/nn/modules/construction.h>
#include <xtc/nn/modules/continuous.h>
#include <xtc/nn/modules/pretrained.h>
#include <xtc/nn/modules/transformer_wrapper.h>
#include <xtc/nn/options/attention_layers.h>
#include <xtc/ops/attention_layers.h>

namespace py = pybind11;

namespace {

// Runs f with torch's translation of c10::Error into Python exceptions (ValueError for TORCH_CHECK_VALUE,
// ...).
template <typename F>
auto with_torch_errors(F&& f) {
  HANDLE_TH_ERRORS
  return f();
  END_HANDLE_TH_ERRORS_PYBIND
}

// One layout entry for Python: (name, shape, is_buffer, initial value or None).
using LayoutEntry = std::tuple<std::string, std::vector<int64_t>, bool, std::optional<at::Tensor>>;

// The entries of `specs`, with the module's freshly initialised tensors when `module` is given (else shapes
// only, for meta-device construction). Entries under `held_elsewhere` (a wrapper's stack) carry no value.
std::vector<LayoutEntry> layout_entries(const std::vector<xtc::nn::functional::ParameterSpec>& specs,
                                        const torch::nn::Module* module,
                                        const std::string& held_elsewhere = "") {
  const auto elsewhere = [&](const xtc::nn::functional::ParameterSpec& spec) {
    return !held_elsewhere.empty() && spec.name.rfind(held_elsewhere, 0) == 0;
  };
  std::vector<xtc::nn::functional::ParameterSpec> own;
  for (const auto& spec : specs)
    if (!elsewhere(spec)) own.push_back(spec);
  const auto values =
      module != nullptr ? xtc::nn::tensors_in_layout(*module, own) : std::vector<at::Tensor>();
  std::vector<LayoutEntry> entries;
  size_t next = 0;
  for (const auto& spec : specs) {
    std::optional<at::Tensor> value;
    if (module != nullptr && !elsewhere(spec)) value = values[next++];
    entries.emplace_back(spec.name, spec.shape, spec.buffer, value);
  }
  return entries;
}

// (canonical options, entries) of a wrapper, its own tensors initialised and the stack's (attn_layers.*)
// named only: the Python wrapper holds the user's stack. The stack is built on meta, so none of its tensors
// are allocated; without `initialize`, the wrapper's own neither.
template <typename Wrapper, typename WrapperOptions>
auto wrapper_layout(const std::string& options, const std::string& layer_options, bool initialize) {
  return with_torch_errors([&] {
    auto stack = [&] {
      xtc::nn::MetaConstruction meta;
      return xtc::nn::AttentionLayers(xtc::nn::AttentionLayersOptions::parse(layer_options));
    }();
    std::optional<xtc::nn::MetaConstruction> meta;
    if (!initialize) meta.emplace();
    Wrapper wrapper(WrapperOptions::parse(options), stack);
    return std::make_pair(
        wrapper->options.serialize(),
        layout_entries(wrapper->plan->parameters(), initialize ? wrapper.get() : nullptr, "attn_layers."));
  });
}

// Context parallelism (x_transformers_cpp.distributed): guards in a per-thread stack, entered and left by the
// Python context manager.
std::vector<std::unique_ptr<xtc::nn::functional::ContextParallelGuard>>& context_parallel_guards() {
  thread_local std::vector<std::unique_ptr<xtc::nn::functional::ContextParallelGuard>> stack;
  return stack;
}

xtc::nn::functional::ShardLayout shard_layout(const std::string& layout) {
  using xtc::nn::functional::ShardLayout;
  TORCH_CHECK_VALUE(layout == "contiguous" || layout == "zigzag",
                    "context_parallel: expected layout 'contiguous' or 'zigzag', got '", layout, "'");
  return layout == "zigzag" ? ShardLayout::Zigzag : ShardLayout::Contiguous;
}

void bind_context_parallel(py::module_& m) {
  m.def(
      "enter_context_parallel",
      [](const std::string& group_name, int64_t rank, int64_t world_size, const std::string& layout,
         const std::vector<int64_t>& shard_lengths) {
        with_torch_errors([&] {
          xtc::nn::functional::ContextParallel setting{group_name, rank, world_size, shard_layout(layout),
                                                       shard_lengths};
          context_parallel_guards().push_back(
              std::make_unique<xtc::nn::functional::ContextParallelGuard>(std::move(setting)));
        });
      },
      py::arg("group_name"), py::arg("rank"), py::arg("world_size"), py::arg("layout"),
      py::arg("shard_lengths"));
  // The (global start, length) runs a rank holds of equal shards of `shard_length` tokens: the stack's own
  // arithmetic, for shard_sequence.
  m.def(
      "shard_runs",
      [](int64_t rank, int64_t world_size, const std::string& layout, int64_t shard_length) {
        return with_torch_errors([&] {
          std::vector<std::pair<int64_t, int64_t>> runs;
          for (const auto& c : xtc::nn::functional::shard_chunks(
                   {"", rank, world_size, shard_layout(layout), {}}, shard_length))
            runs.emplace_back(c.global_start, c.length);
          return runs;
        });
      },
      py::arg("rank"), py::arg("world_size"), py::arg("layout"), py::arg("shard_length"));
  m.def("context_parallel_active", [] { return xtc::nn::functional::current_context_parallel() != nullptr; });
  m.def("exit_context_parallel", [] {
    TORCH_CHECK(!context_parallel_guards().empty(), "context_parallel: exit without enter on this thread");
    context_parallel_guards().pop_back();
  });
}

std::vector<std::string> backend_names(const std::vector<xtc::Backend>& backends) {
  std::vector<std::string> names;
  for (const auto b : backends) names.emplace_back(xtc::backend_name(b));
  return names;
}

std::vector<std::unique_ptr<xtc::BackendRecorder>>& recorders() {
  thread_local std::vector<std::unique_ptr<xtc::BackendRecorder>> stack;
  return stack;
}

// The backend setting and its recorder (x_transformers_cpp.backends): names in, names out.
void bind_backends(py::module_& m) {
  m.def(
      "safetensors_dtype_name",
      [](const at::Tensor& t) { return xtc::nn::safetensors_dtype_name(t.scalar_type()); },
      "safetensors' name of the tensor's dtype (F32, BF16, ...), as the C++ loader words it");
  m.def("backend_names", [] { return backend_names(xtc::all_backends()); });
  m.def("enabled_backends", [] { return backend_names(xtc::enabled_backends()); });
  m.def("backend_priority", [] { return backend_names(xtc::backend_priority()); });
  m.def(
      "set_enabled_backends",
      [](const std::vector<std::string>& names, bool set_priority) {
        with_torch_errors([&] {
          std::vector<xtc::Backend> backends;
          for (const auto& name : names) backends.push_back(xtc::backend_from_name(name));
          xtc::set_enabled_backends(backends, set_priority);
        });
      },
      py::arg("backends"), py::arg("set_priority") = false);
  m.def("reset_backends", &xtc::reset_backends);
  // Recorders in a per-thread stack, so that Python never holds a pointer the C++ side could outlive:
  // start_recording pushes one, stop_recording pops it and returns its choices as
  // [(site, chosen, [(passed-over family, [reasons])])].
  m.def("start_recording", [] { recorders().push_back(std::make_unique<xtc::BackendRecorder>()); });
  m.def("stop_recording", [] {
    TORCH_CHECK(!recorders().empty(), "backends: stop_recording without start_recording on this thread");
    std::vector<
        std::tuple<std::string, std::string, std::vector<std::pair<std::string, std::vector<std::string>>>>>
        out;
    for (const auto& c : recorders().back()->choices()) {
      std::vector<std::pair<std::string, std::vector<std::string>>> rejected;
      for (const auto& r : c.rejected) rejected.emplace_back(xtc::backend_name(r.backend), r.reasons);
      out.emplace_back(c.site, xtc::backend_name(c.chosen), std::move(rejected));
    }
    recorders().pop_back();
    return out;
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "x_transformers_cpp native bindings; the ops themselves live in torch.ops.xtc";
  bind_backends(m);
  bind_context_parallel(m);

  m.def("option_keys", &xtc::nn::AttentionLayersOptions::keys,
        "Keys of the serialised AttentionLayers options, e.g. 'heads', 'attn_dim_head'.");
  m.def(
      "normalize_options",
      [](const std::string& text) {
        return with_torch_errors([&] { return xtc::nn::AttentionLayersOptions::parse(text).serialize(); });
      },
      py::arg("options"),
      "Validates AttentionLayers keyword arguments (a JSON object) and returns every option, canonical, as "
      "JSON.");

  m.def(
      "repeat_blocks_order",
      [](const std::string& text, const std::vector<std::tuple<int64_t, int64_t, int64_t>>& groups) {
        return with_torch_errors([&] {
          std::vector<xtc::nn::RepeatBlocks> blocks;
          for (const auto& [first, last, repeats] : groups) blocks.push_back({first, last, repeats});
          return xtc::nn::AttentionLayersOptions::parse(text).repeat_blocks_order(blocks);
        });
      },
      py::arg("options"), py::arg("groups"),
      "x-transformers' repeat_blocks, as (first block, last block, repeats) groups, as a "
      "layers_execute_order.");

  // One parse of the options per construction: the plan holds them canonical, with everything Python reads
  // off them (the op later parses the canonical JSON once more, then caches its plan).
  using Plan = xtc::nn::functional::AttentionLayersPlan;
  py::class_<Plan, std::shared_ptr<Plan>>(
      m, "AttentionLayersPlan",
      "What AttentionLayers options imply: their canonical JSON, the parameter "
      "layout and the executed attention kinds.")
      .def(py::init([](const std::string& text) {
             return with_torch_errors([&] {
               return std::make_shared<Plan>(
                   *xtc::nn::meta_plan(xtc::nn::AttentionLayersOptions::parse(text)));
             });
           }),
           py::arg("options"))
      .def_property_readonly("options", [](const Plan& plan) { return plan.options().serialize(); })
      .def_property_readonly(
          "executed_attention_types", &Plan::executed_attention_types,
          "The kind ('a' self, 'c' cross) of each attention layer in execution order: the order of "
          "the cached_kv pairs.")
      .def_property_readonly("executed_hybrid_states", &Plan::executed_hybrid_states,
                             "Whether each executed attention layer keeps a hybrid GRU state in the cache "
                             "(after the (k, v) pairs).")
      .def_property_readonly(
          "layer_types",
          [](const Plan& plan) {
            const auto types = plan.options().layer_types();
            return std::string(types.begin(), types.end());
          },
          "The kind of each layer in construction order ('a', 'c', 'f'), as x-transformers' layer_types.")
      .def_property_readonly("disables_abs_pos_emb",
                             [](const Plan& plan) { return plan.options().disables_abs_pos_emb(); })
      .def(
          "layout",
          [](const Plan& plan, bool initialize) {
            return with_torch_errors([&] {
              if (!initialize) return layout_entries(plan.parameters(), nullptr);
              xtc::nn::AttentionLayers layers(plan.options());
              return layout_entries(layers->plan->parameters(), layers.get());
            });
          },
          py::arg("initialize") = true,
          "(name, shape, is_buffer, freshly initialised value) of every parameter and buffer of "
          "xtc::nn::AttentionLayers with these options, in the order the attention_layers op reads them; the "
          "value is "
          "None without initialize (nothing allocated, for meta-device construction).");

  m.def(
      "stack_inputs",
      [] {
        std::vector<std::tuple<std::string, std::string, std::string>> rows;
#define XTC_STACK_INPUT_ROW(name, schema, cpp, field, kind, default_value, doc) \
  rows.emplace_back(#name, schema, doc);
        XTC_STACK_INPUTS(XTC_STACK_INPUT_ROW)
#undef XTC_STACK_INPUT_ROW
        return rows;
      },
      "The layer stack's forward inputs, the one list XTC_STACK_INPUTS: (name, schema type, doc) per row.");

  m.def("cached_plans", &xtc::ops::cached_plans,
        "Plans the layer-stack and wrapper ops hold in their caches (at most 256 of each kind).");

  m.def("transformer_wrapper_option_keys", &xtc::nn::TransformerWrapperOptions::keys,
        "Keys of the serialised TransformerWrapper options.");

  m.def("transformer_wrapper_layout",
        &wrapper_layout<xtc::nn::TransformerWrapper, xtc::nn::TransformerWrapperOptions>, py::arg("options"),
        py::arg("layer_options"), py::arg("initialize") = true,
        "(canonical options, [(name, shape, is_buffer, initial value or None)]) of "
        "xtc::nn::TransformerWrapper, in the "
        "order the transformer_wrapper op reads them; attn_layers.* (the stack's) have no value.");

  m.def("continuous_option_keys", &xtc::nn::ContinuousTransformerWrapperOptions::keys,
        "Keys of the serialised ContinuousTransformerWrapper options.");

  m.def("continuous_layout",
        &wrapper_layout<xtc::nn::ContinuousTransformerWrapper, xtc::nn::ContinuousTransformerWrapperOptions>,
        py::arg("options"), py::arg("layer_options"), py::arg("initialize") = true,
        "(canonical options, [(name, shape, is_buffer, initial value or None)]) of "
        "xtc::nn::ContinuousTransformerWrapper, in the order the continuous_transformer op reads them; "
        "attn_layers.* "
        "(the stack's) have no value.");
}
