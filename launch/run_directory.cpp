// Run directory checks and the checkpoint rotation.
#include "launch/run_directory.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace elbo {
namespace fs = std::filesystem;

void check_run_directory_is_free(const fs::path& dir) {
  for (const char* finished : {"checkpoints/last.h5", "metrics.jsonl"}) {
    if (fs::exists(dir / finished))
      throw_bad_input("run directory already holds a run; choose another output.dir or pass "
                      "--resume auto (" + (dir / finished).string() + ")");
  }
  if (fs::exists(dir) && !fs::is_directory(dir))
    throw_bad_input("output.dir exists and is not a directory (" + dir.string() + ")");
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw_bad_input("cannot write the file (" + path.string() + ")");
}

fs::path CheckpointDirectory::path_for_step(int64_t step) const {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld.h5", static_cast<long long>(step));
  return dir_ / name;
}

void CheckpointDirectory::save(const ParameterLayout& layout, const CheckpointData& data) const {
  const fs::path target = path_for_step(data.state.step);
  write_checkpoint_atomically(target.string(), layout, data);
  // rename(2) replaces the old link in one step, so last.h5 always names a complete file.
  const fs::path tmp_link = dir_ / ".last.h5.tmp";
  std::error_code ec;
  fs::remove(tmp_link, ec);
  fs::create_symlink(target.filename(), tmp_link);
  fs::rename(tmp_link, last());
  const std::vector<fs::path> files = step_files_newest_first();
  for (size_t i = static_cast<size_t>(std::max(keep_, 1)); i < files.size(); ++i)
    fs::remove(files[i], ec);
}

std::vector<fs::path> CheckpointDirectory::step_files_newest_first() const {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() == 17 && name.starts_with("step-") && name.ends_with(".h5")) files.push_back(e.path());
  }
  std::sort(files.rbegin(), files.rend());  // zero-padded, so name order is step order
  return files;
}

std::optional<CheckpointData> CheckpointDirectory::load_newest(const ParameterLayout& layout) const {
  std::vector<fs::path> candidates;
  if (fs::exists(last())) candidates.push_back(last());
  for (const fs::path& p : step_files_newest_first()) candidates.push_back(p);
  std::string first_error;
  for (const fs::path& p : candidates) {
    try {
      return read_checkpoint(p.string(), layout);
    } catch (const Error& e) {
      // A file cut short by a crash: say so and fall back to the one before it.
      std::fprintf(stderr, "elbo: warning: skipping a checkpoint that does not load: %s\n", e.what());
      if (first_error.empty()) first_error = e.what();
    }
  }
  if (!candidates.empty())
    throw_bad_input("no checkpoint in the run directory loads; the newest: " + first_error);
  return std::nullopt;
}

}  // namespace elbo
