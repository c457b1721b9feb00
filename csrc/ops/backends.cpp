// The process-wide backend setting and the choice every kernel-picking site makes through it
// (xtc/backends.h).
#include <c10/util/Exception.h>
#include <xtc/backends.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <sstream>

namespace xtc {
namespace {

constexpr std::array<const char*, kNumBackends> kNames = {"cpu_flash",
                                                          "cpu_bf16_matmul",
                                                          "cuda_hopper_forward",
                                                          "cuda_hopper_backward",
                                                          "cuda_mma_sync",
                                                          "cuda_simple",
                                                          "varlen",
                                                          "cuda_varlen",
                                                          "cuda_sdpa_fp32",
                                                          "cuda_varlen_one_launch",
                                                          "cuda_fp32_as_bf16",
                                                          "cuda_fp32_tensor_cores",
                                                          "math"};

constexpr uint32_t bit(Backend b) { return uint32_t(1) << static_cast<uint32_t>(b); }
constexpr uint32_t kAll = (uint32_t(1) << kNumBackends) - 1;
// The families no GPU has run yet (CUDA's varlen path, the fp32 SDPA route, the one-launch varlen kernels,
// the fp32-as-bf16 route, the fp32 tensor-core forward): opt-in until one has.
constexpr uint32_t kNotYetRun = bit(Backend::CudaVarlen) | bit(Backend::CudaSdpaFp32) |
                                bit(Backend::CudaVarlenOneLaunch) | bit(Backend::CudaFp32AsBf16) |
                                bit(Backend::CudaFp32TensorCores);
constexpr uint32_t kDefaultEnabled = kAll & ~kNotYetRun;

// The priority order packed 4 bits a family, first in the lowest nibble, 0xF past the end; 0 = none set.
// One atomic word each keeps readers lock-free and a reader never sees half an update of either.
std::atomic<uint32_t> enabled_mask{kDefaultEnabled};
std::atomic<uint64_t> priority_word{0};

uint64_t pack_priority(const std::vector<Backend>& order) {
  uint64_t word = ~uint64_t(0);
  for (size_t i = 0; i < order.size(); ++i) {
    word &= ~(uint64_t(0xF) << (4 * i));
    word |= uint64_t(static_cast<uint8_t>(order[i])) << (4 * i);
  }
  return word;
}

std::vector<Backend> unpack_priority(uint64_t word) {
  std::vector<Backend> order;
  if (word == 0) return order;
  for (int i = 0; i < 16; ++i) {
    const auto value = static_cast<int>((word >> (4 * i)) & 0xF);
    if (value >= kNumBackends) break;
    order.push_back(static_cast<Backend>(value));
  }
  return order;
}

thread_local std::vector<BackendChoice>* active_recorder = nullptr;

std::string describe_failure(const std::string& site, const std::vector<BackendCandidate>& candidates) {
  std::ostringstream message;
  message << site << ": no enabled attention backend can run this call (enabled: ";
  const auto enabled = enabled_backends();
  for (size_t i = 0; i < enabled.size(); ++i) message << (i ? ", " : "") << backend_name(enabled[i]);
  message << ")";
  for (const auto& c : candidates) {
    message << "\n  " << backend_name(c.backend) << ": ";
    for (size_t i = 0; i < c.reasons.size(); ++i) message << (i ? "; " : "") << c.reasons[i];
  }
  return message.str();
}

}  // namespace

const char* backend_name(Backend backend) { return kNames.at(static_cast<size_t>(backend)); }

Backend backend_from_name(const std::string& name) {
  for (int i = 0; i < kNumBackends; ++i)
    if (name == kNames[i]) return static_cast<Backend>(i);
  std::ostringstream known;
  for (int i = 0; i < kNumBackends; ++i) known << (i ? ", " : "") << kNames[i];
  TORCH_CHECK_VALUE(false, "backends: unknown attention backend '", name, "'; expected one of ", known.str());
}

std::vector<Backend> all_backends() {
  std::vector<Backend> all;
  for (int i = 0; i < kNumBackends; ++i) all.push_back(static_cast<Backend>(i));
  return all;
}

std::vector<Backend> enabled_backends() {
  std::vector<Backend> enabled;
  for (const auto b : all_backends())
    if (backend_enabled(b)) enabled.push_back(b);
  return enabled;
}

bool backend_enabled(Backend backend) { return (enabled_mask.load() & bit(backend)) != 0; }

std::vector<Backend> backend_priority() { return unpack_priority(priority_word.load()); }

void set_enabled_backends(const std::vector<Backend>& backends, bool set_priority) {
  uint32_t mask = 0;
  for (const auto b : backends) {
    TORCH_CHECK_VALUE((mask & bit(b)) == 0, "backends: ", backend_name(b), " is listed twice");
    mask |= bit(b);
  }
  enabled_mask.store(mask);
  priority_word.store(set_priority ? pack_priority(backends) : 0);
}

void reset_backends() {
  enabled_mask.store(kDefaultEnabled);
  priority_word.store(0);
}

BackendGuard::BackendGuard(const std::vector<Backend>& backends, bool set_priority)
    : saved_enabled_(enabled_mask.load()), saved_priority_(priority_word.load()) {
  set_enabled_backends(backends, set_priority);
}

BackendGuard::~BackendGuard() {
  enabled_mask.store(saved_enabled_);
  priority_word.store(saved_priority_);
}

Backend choose_backend(const std::string& site, std::vector<BackendCandidate> candidates) {
  const auto priority = backend_priority();
  if (!priority.empty()) {
    const auto rank = [&](const BackendCandidate& c) {
      return std::find(priority.begin(), priority.end(), c.backend) - priority.begin();
    };
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
  }
  for (auto& c : candidates)
    if (!backend_enabled(c.backend))
      c.reasons.insert(c.reasons.begin(),
                       "disabled by the backend setting (attention_backend / BackendGuard)");
  const auto taken =
      std::find_if(candidates.begin(), candidates.end(), [](const auto& c) { return c.reasons.empty(); });
  TORCH_CHECK(taken != candidates.end(), describe_failure(site, candidates));
  if (active_recorder != nullptr) {
    BackendChoice choice{site, taken->backend, {}};
    choice.rejected.assign(candidates.begin(), taken);  // the families ahead of it in order
    active_recorder->push_back(std::move(choice));
  }
  return taken->backend;
}

BackendRecorder::BackendRecorder() : previous_(active_recorder) { active_recorder = &choices_; }

BackendRecorder::~BackendRecorder() { active_recorder = previous_; }

}  // namespace xtc
