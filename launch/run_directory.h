// A run directory on disk: the checks before a run starts, and its checkpoints (step-N.h5 files,
// `last.h5` pointing at the newest, the newest K kept).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace elbo {

// Refuses a directory that already holds a run (unless resuming) or is not a directory.
void check_run_directory_is_free(const std::filesystem::path& dir);
void write_text_file(const std::filesystem::path& path, const std::string& text);
// Drops the records of metrics.jsonl after `step` (a resumed run redoes those steps).
void trim_metrics_after(const std::filesystem::path& path, int64_t step);

class CheckpointDirectory {
 public:
  CheckpointDirectory(std::filesystem::path dir, int keep) : dir_(std::move(dir)), keep_(keep) {}

  std::filesystem::path path_for_step(int64_t step) const;
  std::filesystem::path last() const { return dir_ / "last.h5"; }

  // Writes step-<step>.h5 atomically, then points last.h5 at it (an atomic symlink swap), then
  // deletes all step files but this one and the newest keep - 1 others. A crash at any point leaves last.h5 loadable.
  void save(const ParameterLayout& layout, const CheckpointData& data) const;

  // Before continuing from `step`: removes temporaries of interrupted saves and step files past
  // `step` (an abandoned continuation).
  void prepare_for_resume_at(int64_t step) const;

  // The newest checkpoint that loads, trying last.h5 first, then step files newest first.
  std::optional<CheckpointData> load_newest(const ParameterLayout& layout) const;

 private:
  std::vector<std::filesystem::path> step_files_newest_first() const;
  std::filesystem::path dir_;
  int keep_;
};

}  // namespace elbo
