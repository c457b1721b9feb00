// Which attention kernels may run, and why a call took the one it took.
//
// Every place that picks a kernel family lists its candidates, each with the reasons it cannot take this call
// (dtype, head dim, device, a rule the kernel cannot express, ...), and takes the first that is enabled and
// has none. The setting is process-wide (atomics), as torch.nn.attention.sdpa_kernel's flags are: backward
// passes run on autograd's threads and see the same setting. A user restricts or orders the families with
// BackendGuard here or x_transformers_cpp.backends.attention_backend in Python; a forced family that cannot
// run raises an error that lists every candidate's reasons; BackendRecorder (Python: record_choices) collects
// each choice with the reasons of the families passed over.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace xtc {

/// Attention kernel families, in the default order of preference within each choice.
enum class Backend : uint8_t {
  /// Our blocked online-softmax CPU kernel (bf16 / fp16 widened to float32 unless CpuBf16Matmul runs).
  CpuFlash,
  /// bf16 block products on the CPU's AVX512-BF16 units inside the CPU kernel.
  CpuBf16Matmul,
  /// sm_90a warpgroup-MMA forward kernel (fp16 / bf16, head dim 64 or 128).
  CudaHopperForward,
  /// sm_90a warpgroup-MMA backward kernel (fp16 / bf16, head dim 64 or 128).
  CudaHopperBackward,
  /// mma.sync tensor-core kernels (fp16 / bf16, head dim 32, 64 or 128).
  CudaMmaSync,
  /// The warp-per-row kernels (float32 / float64).
  CudaSimple,
  /// Packed sequences attend in the varlen op (else each layer runs them in the padded frame).
  Varlen,
  /// The varlen op for packed layers on CUDA: no GPU has run it yet, so it is off by default.
  CudaVarlen,
  /// fp32 calls on CUDA that need none of our rules, in torch's SDPA kernels by the matmul precision
  /// (memory-efficient at 'highest', cuBLAS TF32 at 'high' / 'medium'): no GPU has run it, off by default.
  CudaSdpaFp32,
  /// The CUDA varlen op in one launch over (query tiles of the longest sequence, heads, sequences), offsets
  /// read on the device (no host sync: CUDA-graph capturable); else one launch per sequence. No GPU has run
  /// it: off.
  CudaVarlenOneLaunch,
  /// float32 CUDA calls at torch's matmul precision 'medium' (which allows bfloat16 products) in the bfloat16
  /// tensor-core kernels, inputs cast in and the output back: any rule of ours. No GPU has run it: off.
  CudaFp32AsBf16,
  /// The float32 forward on CUDA in tensor-core kernels (mma.sync TF32, 3xTF32 at matmul precision
  /// 'highest'), any rule of ours, head dims 32 / 64 / 128; the backward stays warp-per-row. No GPU has run
  /// it: off.
  CudaFp32TensorCores,
  /// The scores materialised by aten ops: any rule, any device, torch.func transforms.
  Math,
};
constexpr int kNumBackends = 13;

/// "cpu_flash", "cuda_hopper_forward", ... (the Python enum's values).
const char* backend_name(Backend backend);
/// The backend of a name, with an error listing the names for anything else.
Backend backend_from_name(const std::string& name);
/// Every family, in declaration order.
std::vector<Backend> all_backends();

/// The families enabled now (default: all but the five that no GPU has run: CudaVarlen, CudaSdpaFp32,
/// CudaVarlenOneLaunch, CudaFp32AsBf16, CudaFp32TensorCores).
std::vector<Backend> enabled_backends();
bool backend_enabled(Backend backend);
/// The order set with set_priority, empty when the built-in preferences apply.
std::vector<Backend> backend_priority();
/// Enables exactly `backends`; with `set_priority`, their order also overrides the built-in preferences (say,
/// Hopper's size rule): the first listed family that can run a call takes it.
void set_enabled_backends(const std::vector<Backend>& backends, bool set_priority = false);
/// Back to the defaults.
void reset_backends();

/// Restricts (and optionally orders) the families for its lifetime, then restores the previous setting.
class BackendGuard {
 public:
  explicit BackendGuard(const std::vector<Backend>& backends, bool set_priority = false);
  ~BackendGuard();
  BackendGuard(const BackendGuard&) = delete;
  BackendGuard& operator=(const BackendGuard&) = delete;

 private:
  uint32_t saved_enabled_;
  uint64_t saved_priority_;
};

/// One family and why it cannot take a call (empty: it can).
struct BackendCandidate {
  Backend backend;
  std::vector<std::string> reasons;
};

/// One choice: where it was made, the family taken, and each family passed over with its reasons.
struct BackendChoice {
  std::string site;
  Backend chosen;
  std::vector<BackendCandidate> rejected;
};

/// The first candidate (in priority order when one is set, else as given) that is enabled and has no reasons;
/// records the choice when a BackendRecorder is active on this thread. Throws, listing every candidate's
/// reasons, when none can run.
Backend choose_backend(const std::string& site, std::vector<BackendCandidate> candidates);

/// Collects the choices made on this thread during its lifetime (nested recorders: the innermost collects).
class BackendRecorder {
 public:
  BackendRecorder();
  ~BackendRecorder();
  BackendRecorder(const BackendRecorder&) = delete;
  BackendRecorder& operator=(const BackendRecorder&) = delete;
  const std::vector<BackendChoice>& choices() const { return choices_; }

 private:
  std::vector<BackendChoice> choices_;
  std::vector<BackendChoice>* previous_;
};

}  // namespace xtc
