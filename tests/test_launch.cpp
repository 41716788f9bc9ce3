// Device and communicator choices, for every config value and what a machine can show.
#include <gtest/gtest.h>

#include "core/error.h"
#include "launch/device_plan.h"

namespace elbo {
namespace {

TEST(DevicePlan, AutoUsesAGpuOnlyWhenBuiltAndVisible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, false, 4, 0, "c").cuda);
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, true, 0, 0, "c").cuda);
  const DevicePlan p = plan_device(DeviceChoice::Auto, true, 2, 0, "c");
  EXPECT_TRUE(p.cuda);
  EXPECT_EQ(p.index, 0);
}

TEST(DevicePlan, LocalRankModuloVisibleDevices) {
  for (int local_rank = 0; local_rank < 9; ++local_rank)
    EXPECT_EQ(plan_device(DeviceChoice::Cuda, true, 4, local_rank, "c").index, local_rank % 4);
}

TEST(DevicePlan, CpuAlwaysAndCudaOnlyWhenPossible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Cpu, true, 8, 3, "c").cuda);
  for (auto [built, visible] : {std::pair{false, 1}, {true, 0}}) {
    try {
      plan_device(DeviceChoice::Cuda, built, visible, 0, "cfg.yaml");
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("(cfg.yaml)"), std::string::npos) << e.what();
    }
  }
}

TEST(DataPlane, AutoPicksByDeviceAndWorldSize) {
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, false, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, true, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, false, 4, "c"), DataPlane::Mpi);
  EXPECT_EQ(plan_data_plane(CommBackend::Auto, true, 4, "c"), DataPlane::Nccl);
  EXPECT_EQ(plan_data_plane(CommBackend::None, true, 1, "c"), DataPlane::Single);
  EXPECT_EQ(plan_data_plane(CommBackend::Nccl, true, 1, "c"), DataPlane::Nccl);
  EXPECT_EQ(plan_data_plane(CommBackend::Mpi, false, 2, "c"), DataPlane::Mpi);
}

TEST(DataPlane, MismatchedPairingsAreBadInput) {
  EXPECT_THROW(plan_data_plane(CommBackend::Mpi, true, 2, "c"), Error);
  EXPECT_THROW(plan_data_plane(CommBackend::Nccl, false, 2, "c"), Error);
}

}  // namespace
}  // namespace elbo
