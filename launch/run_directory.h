// A run directory on disk: one writer at a time, which run it holds, the checks before a run
// starts or continues in it, and its checkpoints (step-N.h5 files, `last.h5` pointing at the
// newest, the newest K kept).
//
// What elbo writes into it, and nothing else:
//   .elbo.lock      the lock (io/directory_lock.h), held by the elbo process training into it
//   run.yaml        marks the directory as one run's and names it: a random run_id made when the
//                   run starts, also stamped into each of its checkpoints
//   config.yaml     the resolved config;   metrics.jsonl   the metrics;   checkpoints/
//   images/         epoch-NNN-{reconstructions,samples}.png;   report.html   the run's page
// A file of one of those names that elbo did not write (no run.yaml, or a symlink) is the user's
// and is never written over: such a directory is refused.
//
// The rules, so that nothing a user has is lost:
//   - a new run needs a directory without a run: empty, new, or holding a run that never reached
//     a checkpoint (a failed start; it is taken over, with a note);
//   - `--resume auto` continues from the newest checkpoint, and stops with an error, leaving every
//     file in place, when that checkpoint does not load;
//   - `--resume PATH` continues only in the run the checkpoint belongs to (same run_id) or in a
//     directory without a run; checkpoints past PATH's step are deleted only with --discard-newer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/directory_lock.h"

namespace elbo {

class CheckpointDirectory {
 public:
  CheckpointDirectory(std::filesystem::path dir, int keep, std::string run_id = "")
      : dir_(std::move(dir)), keep_(keep), run_id_(std::move(run_id)) {}

  std::filesystem::path path_for_step(int64_t step) const;
  std::filesystem::path last() const { return dir_ / "last.h5"; }

  // Writes step-<step>.h5 atomically (stamped with the run id), then points last.h5 at it (an
  // atomic symlink swap), then deletes all step files but this one and the newest keep - 1
  // others. A crash at any point leaves last.h5 loadable.
  void save(const ParameterLayout& layout, CheckpointData&& data) const;

  // The step files, newest first (their names sort by step).
  std::vector<std::filesystem::path> step_files_newest_first() const;
  // The newest checkpoint, or nullopt when there is none. When it does not load, that is an
  // error: the run must not continue behind a checkpoint it could not read (a newer format, a
  // damaged or unreadable file), and the file is left in place.
  std::optional<CheckpointData> load_newest(const ParameterLayout& layout) const;
  // Removes the temporaries of saves that a crash interrupted (ours by name; call under the
  // run directory's lock, so that no save is in progress).
  void remove_temporaries() const;

 private:
  std::filesystem::path dir_;
  int keep_;
  std::string run_id_;
};

class RunDirectory {
 public:
  // Takes the directory's lock (creating it when missing) and reads what it holds.
  static RunDirectory open(const std::filesystem::path& dir);

  // Chooses how the run starts, refusing (BadInput, nothing written) what the rules above forbid:
  // `resume` is "" (a new run), "auto", or a checkpoint path whose contents `from_path` holds.
  // Returns the checkpoint to continue from, if any.
  std::optional<CheckpointData> choose_start(const std::string& resume,
                                             std::optional<CheckpointData> from_path,
                                             bool discard_newer, const ParameterLayout& layout);

  // After choose_start: writes run.yaml and config.yaml (by temporary name and rename), and
  // brings metrics.jsonl and checkpoints/ to the starting step: emptied for a new run; for a
  // continuation, records past the step and a half-written last line dropped, and (with
  // --discard-newer) the step files past it deleted.
  void start(const std::string& config_yaml, const CheckpointData* resumed_from, int keep);

  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path metrics_path() const { return dir_ / "metrics.jsonl"; }
  const std::string& run_id() const { return run_id_; }
  // Valid after start().
  const CheckpointDirectory& checkpoints() const { return *checkpoints_; }

  static constexpr const char* kMarker = "run.yaml";

 private:
  enum class Holds { Nothing, Start, Run };  // nothing of elbo's; a failed start; a run
  RunDirectory(std::filesystem::path dir, DirectoryLock lock)
      : dir_(std::move(dir)), lock_(std::move(lock)) {}
  void inspect();

  std::filesystem::path dir_;
  DirectoryLock lock_;
  Holds holds_ = Holds::Nothing;
  std::string found_run_id_;  // of the run it holds
  std::string run_id_;        // of the run that starts
  bool discard_newer_ = false;
  std::optional<CheckpointDirectory> checkpoints_;
};

// Drops the records of a metrics file after `step`, and a last line that a crash cut short.
// Returns how many lines it dropped.
size_t trim_metrics_after(const std::filesystem::path& path, int64_t step);

// A fresh random run id: 32 hex digits.
std::string make_run_id();

}  // namespace elbo
