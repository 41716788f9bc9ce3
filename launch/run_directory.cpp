// Run directory checks and the checkpoint rotation.
#include "launch/run_directory.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

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

void trim_metrics_after(const fs::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  const std::string key = "\"step\": ";
  while (std::getline(in, line)) {
    const size_t at = line.find(key);
    if (at != std::string::npos && std::stoll(line.substr(at + key.size())) > step) continue;
    kept += line + "\n";
  }
  in.close();
  const fs::path tmp = path.string() + ".tmp";
  write_text_file(tmp, kept);
  fs::rename(tmp, path);
}

fs::path CheckpointDirectory::path_for_step(int64_t step) const {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld.h5", static_cast<long long>(step));
  return dir_ / name;
}

namespace {

// Makes renames and unlinks in a directory durable before anything relies on them.
void fsync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

int64_t step_of(const fs::path& p) { return std::stoll(p.filename().string().substr(5, 9)); }

}  // namespace

void CheckpointDirectory::save(const ParameterLayout& layout, const CheckpointData& data) const {
  const fs::path target = path_for_step(data.state.step);
  write_checkpoint_atomically(target.string(), layout, data);
  // rename(2) replaces the old link in one step, so last.h5 always names a complete file.
  const fs::path tmp_link = dir_ / ".last.h5.tmp";
  std::error_code ec;
  fs::remove(tmp_link, ec);
  fs::create_symlink(target.filename(), tmp_link);
  fs::rename(tmp_link, last());
  fsync_directory(dir_);
  // Keep the file just written and the newest keep - 1 others.
  size_t kept = 1;
  for (const fs::path& p : step_files_newest_first()) {
    if (p == target) continue;
    if (kept < static_cast<size_t>(std::max(keep_, 1))) ++kept;
    else fs::remove(p, ec);
  }
}

void CheckpointDirectory::prepare_for_resume_at(int64_t step) const {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    // Temporaries of a save that a crash interrupted.
    if (name.starts_with("step-") && name.find(".h5.tmp.") != std::string::npos) fs::remove(e.path(), ec);
  }
  // Steps after the one resumed from belong to an abandoned continuation; left in place they
  // would outrank the new run's files in --resume auto and in the rotation.
  for (const fs::path& p : step_files_newest_first()) {
    if (step_of(p) <= step) break;
    std::fprintf(stderr, "elbo: note: removing %s, which is past the resumed step %lld\n",
                 p.c_str(), static_cast<long long>(step));
    fs::remove(p, ec);
  }
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
  std::vector<std::string> skipped;
  for (const fs::path& p : candidates) {
    try {
      CheckpointData d = read_checkpoint(p.string(), layout);
      // A file cut short by a crash is passed over for the one before it; say so.
      for (const std::string& why : skipped)
        std::fprintf(stderr, "elbo: warning: skipped a checkpoint that does not load: %s\n", why.c_str());
      return d;
    } catch (const Error& e) {
      skipped.push_back(e.what());
    }
  }
  if (!candidates.empty())
    throw_bad_input("none of the " + std::to_string(candidates.size()) +
                    " checkpoints in the run directory loads; the newest: " + skipped.front());
  return std::nullopt;
}

}  // namespace elbo
