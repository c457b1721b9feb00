// The backend setting from C++ (xtc/backends.h): the guard restores, priority orders, a forced family that
// cannot run lists every reason, the recorder collects choices, and the attention op follows the setting.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <xtc/backends.h>
#include <xtc/ops/flash_attention.h>

namespace {

using xtc::Backend;

TEST(Backends, GuardRestoresTheDefaults) {
  const auto defaults = xtc::enabled_backends();
  EXPECT_FALSE(xtc::backend_enabled(Backend::CudaVarlen));
  {
    xtc::BackendGuard guard({Backend::Math, Backend::CpuFlash}, /*set_priority=*/true);
    EXPECT_EQ(xtc::enabled_backends(), (std::vector<Backend>{Backend::CpuFlash, Backend::Math}));
    EXPECT_EQ(xtc::backend_priority(), (std::vector<Backend>{Backend::Math, Backend::CpuFlash}));
  }
  EXPECT_EQ(xtc::enabled_backends(), defaults);
  EXPECT_TRUE(xtc::backend_priority().empty());
}

TEST(Backends, ChoosesTheFirstRunnableFamilyAndRecordsThoseItPassedOver) {
  xtc::BackendRecorder recorder;
  const auto chosen =
      xtc::choose_backend("site", {{Backend::CpuFlash, {"a rule the kernel lacks"}}, {Backend::Math, {}}});
  EXPECT_EQ(chosen, Backend::Math);
  ASSERT_EQ(recorder.choices().size(), 1u);
  const auto& choice = recorder.choices()[0];
  EXPECT_EQ(choice.site, "site");
  EXPECT_EQ(choice.chosen, Backend::Math);
  ASSERT_EQ(choice.rejected.size(), 1u);
  EXPECT_EQ(choice.rejected[0].backend, Backend::CpuFlash);
  EXPECT_EQ(choice.rejected[0].reasons, std::vector<std::string>{"a rule the kernel lacks"});
}

TEST(Backends, PriorityOrdersTheCandidates) {
  xtc::BackendGuard guard({Backend::Math, Backend::CpuFlash}, /*set_priority=*/true);
  EXPECT_EQ(xtc::choose_backend("site", {{Backend::CpuFlash, {}}, {Backend::Math, {}}}), Backend::Math);
}

TEST(Backends, AForcedFamilyThatCannotRunListsEveryReason) {
  xtc::BackendGuard guard({Backend::CpuFlash});
  try {
    xtc::choose_backend("layer", {{Backend::CpuFlash, {"talking heads"}}, {Backend::Math, {}}});
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find("layer: no enabled attention backend can run this call (enabled: cpu_flash)"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("cpu_flash: talking heads"), std::string::npos) << message;
    EXPECT_NE(message.find("math: disabled by the backend setting"), std::string::npos) << message;
  }
}

TEST(Backends, NamesRoundTripAndUnknownOnesAreRefused) {
  for (const auto b : xtc::all_backends()) EXPECT_EQ(xtc::backend_from_name(xtc::backend_name(b)), b);
  EXPECT_THROW(xtc::backend_from_name("flash"), c10::ValueError);
}

TEST(Backends, TheCpuOpWidensBf16WhenItsUnitsAreDisabled) {
  const auto q = at::randn({1, 7, 2, 16}).to(at::kBFloat16);
  xtc::BackendGuard guard({Backend::CpuFlash});
  xtc::BackendRecorder recorder;
  const auto out = std::get<0>(xtc::ops::flash_attention(q, q, q));
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  ASSERT_EQ(recorder.choices().size(), 1u);
  EXPECT_EQ(recorder.choices()[0].chosen, Backend::CpuFlash);
}

}  // namespace
