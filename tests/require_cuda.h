// The skip rule of the GPU tests: without a usable CUDA device they skip, unless nvidia-smi
// lists a GPU, when they fail (a driver too old for the build must not pass as "no GPU").
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "core/cuda/cuda_backend.h"

namespace elbo {

// A machine whose nvidia-smi (when on PATH) lists a GPU has one: a test that then finds no
// usable CUDA device fails instead of skipping, since a driver too old for the build or a broken
// install must not pass as "no GPU". Asked once per process.
inline bool nvidia_smi_lists_a_gpu() {
  static const bool listed = [] {
    FILE* p =
        popen("command -v nvidia-smi >/dev/null 2>&1 && timeout 60 nvidia-smi -L 2>/dev/null", "r");
    if (!p) return false;
    bool gpu = false;
    char line[512];
    while (std::fgets(line, sizeof line, p))
      if (std::strncmp(line, "GPU ", 4) == 0) gpu = true;
    pclose(p);
    return gpu;
  }();
  return listed;
}

// Skips the calling test (or fixture set-up) without a usable CUDA device; fails it when
// nvidia-smi lists a GPU all the same.
#define ELBO_REQUIRE_CUDA_DEVICE()                                          \
  do {                                                                      \
    if (cuda_device_count() == 0) {                                         \
      if (nvidia_smi_lists_a_gpu()) {                                       \
        const std::string problem = cuda_probe().problem;                   \
        FAIL() << "nvidia-smi lists a GPU, but CUDA finds no usable device" \
               << (problem.empty() ? std::string() : ": " + problem);       \
      }                                                                     \
      GTEST_SKIP() << "no CUDA device";                                     \
    }                                                                       \
  } while (0)

}  // namespace elbo
