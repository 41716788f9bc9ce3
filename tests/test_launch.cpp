// Device and communicator choices, for every config value and what a machine can show.
#include <gtest/gtest.h>

#include "core/error.h"
#include "launch/device_plan.h"

namespace elbo {
namespace {

TEST(DevicePlan, AutoUsesAGpuOnlyWhenBuiltAndVisible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, false, 4, 0, 1, "c").cuda);
  EXPECT_FALSE(plan_device(DeviceChoice::Auto, true, 0, 0, 1, "c").cuda);
  const DevicePlan p = plan_device(DeviceChoice::Auto, true, 2, 0, 1, "c");
  EXPECT_TRUE(p.cuda);
  EXPECT_EQ(p.index, 0);
}

TEST(DevicePlan, LocalRankModuloVisibleDevices) {
  for (int local_rank = 0; local_rank < 4; ++local_rank)
    EXPECT_EQ(plan_device(DeviceChoice::Cuda, true, 4, local_rank, 4, "c").index, local_rank);
  // With more GPUs than ranks each rank still takes its own (visible devices may be restricted
  // per rank, e.g. CUDA_VISIBLE_DEVICES set by the launcher, hence the modulo).
  EXPECT_EQ(plan_device(DeviceChoice::Cuda, true, 8, 1, 2, "c").index, 1);
}

TEST(DevicePlan, CpuAlwaysAndCudaOnlyWhenPossible) {
  EXPECT_FALSE(plan_device(DeviceChoice::Cpu, true, 8, 3, 8, "c").cuda);
  for (auto [built, visible] : {std::pair{false, 1}, {true, 0}}) {
    try {
      plan_device(DeviceChoice::Cuda, built, visible, 0, 1, "cfg.yaml");
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("(cfg.yaml)"), std::string::npos) << e.what();
    }
  }
}

TEST(DevicePlan, MoreRanksThanGpusOnANodeIsBadInput) {
  for (DeviceChoice choice : {DeviceChoice::Auto, DeviceChoice::Cuda}) {
    try {
      plan_device(choice, true, 1, 1, 2, "cfg.yaml");
      ADD_FAILURE() << "two ranks on one GPU were accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("2 ranks on this node but 1 visible GPU"),
                std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(plan_device(DeviceChoice::Cpu, true, 1, 1, 2, "c").cuda);  // the CPU has room
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
