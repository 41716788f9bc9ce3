// Run directories: the lock, the run they hold, the start-up rules, and the checkpoint rotation.
#include "launch/run_directory.h"

#include <sys/random.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "io/files.h"
#include "io/location.h"

namespace elbo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kMarkerHeader = "# elbo run directory: the run_id names the run it holds";
constexpr const char* kConfigHeader = "# the resolved config of this run, written by elbo train\n";

void note(const std::string& text) { std::fprintf(stderr, "elbo: note: %s\n", text.c_str()); }

bool exists_here(const fs::path& p) {  // a dangling symlink exists too
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec));
}

std::string read_small_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string text(4096, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

// The run_id of a marker file elbo wrote, or "" when it is not one.
std::string run_id_in_marker(const std::string& text) {
  if (!text.starts_with(std::string(kMarkerHeader) + "\n")) return "";
  const std::string key = "\nrun_id: ";
  const size_t at = text.find(key);
  if (at == std::string::npos) return "";
  const std::string id = text.substr(at + key.size(), 32);
  const bool hex = id.size() == 32 && id.find_first_not_of("0123456789abcdef") == std::string::npos;
  return hex ? id : "";
}

// Makes renames and unlinks in a directory durable before anything relies on them.
void sync_directory(const fs::path& dir) { fsync_path(dir.string(), true); }

int64_t step_of(const fs::path& p) { return std::stoll(p.filename().string().substr(5, 9)); }

// Removes images/epoch-NNN-*.png past `epoch` (those of epochs that, for this run, never
// happened), and the temporaries of image writes a crash interrupted.
void remove_images_after(const fs::path& dir, int64_t epoch) {
  std::error_code ec;
  std::vector<fs::path> gone;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("epoch-", 0) != 0) continue;
    const bool temporary = name.find(".png.tmp.") != std::string::npos;
    if (temporary || std::strtoll(name.c_str() + 6, nullptr, 10) > epoch) gone.push_back(e.path());
  }
  for (const fs::path& p : gone) fs::remove(p, ec);
}

bool is_step_file_name(const std::string& name) {
  return name.size() == 17 && name.starts_with("step-") && name.ends_with(".h5") &&
         name.find_first_not_of("0123456789", 5) == 14;
}

}  // namespace

std::string make_run_id() {
  unsigned char bytes[16] = {};
  if (::getrandom(bytes, sizeof bytes, 0) != static_cast<ssize_t>(sizeof bytes)) {
    // No entropy source: time and pid still make a collision between two runs unlikely.
    const uint64_t t = static_cast<uint64_t>(std::time(nullptr)), pid = static_cast<uint64_t>(::getpid());
    for (int i = 0; i < 8; ++i) {
      bytes[i] = static_cast<unsigned char>(t >> (8 * i));
      bytes[8 + i] = static_cast<unsigned char>(pid >> (8 * i));
    }
  }
  std::string id;
  for (unsigned char b : bytes) {
    char hex[3];
    std::snprintf(hex, sizeof hex, "%02x", b);
    id += hex;
  }
  return id;
}

size_t trim_metrics_after(const fs::path& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return 0;
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  std::string kept;
  size_t dropped = 0;
  const std::string key = "\"step\": ";
  for (size_t pos = 0; pos < all.size();) {
    const size_t end = all.find('\n', pos);
    const bool complete = end != std::string::npos;
    const std::string line = all.substr(pos, complete ? end - pos : std::string::npos);
    pos = complete ? end + 1 : all.size();
    // A record is one whole line holding one object; a crash while writing cuts the last short.
    if (!complete || line.empty() || line.back() != '}') {
      ++dropped;
      continue;
    }
    const size_t at = line.find(key);
    int64_t s = 0;
    if (at != std::string::npos) {
      const char* first = line.data() + at + key.size();
      if (std::from_chars(first, line.data() + line.size(), s).ec == std::errc() && s > step) {
        ++dropped;
        continue;
      }
    }
    kept += line;
    kept += '\n';
  }
  if (dropped > 0) write_file_atomically(path.string(), kept, "the metrics file");
  return dropped;
}

// ---- checkpoints --------------------------------------------------------------------------------

fs::path CheckpointDirectory::path_for_step(int64_t step) const {
  char name[32];
  std::snprintf(name, sizeof name, "step-%09lld.h5", static_cast<long long>(step));
  return dir_ / name;
}

void CheckpointDirectory::save(const ParameterLayout& layout, CheckpointData&& data) const {
  data.run_id = run_id_;
  const fs::path target = path_for_step(data.state.step);
  write_checkpoint_atomically(target.string(), layout, data);
  // rename(2) replaces the old link in one step, so last.h5 always names a complete file.
  const fs::path tmp_link = dir_ / ".last.h5.tmp";
  std::error_code ec;
  fs::remove(tmp_link, ec);
  fs::create_symlink(target.filename(), tmp_link, ec);
  if (ec) throw_file_error("create", "the link last.h5", tmp_link.string(), ec.value());
  rename_into_place(tmp_link.string(), last().string(), "the link last.h5");
  // Keep the file just written and the newest keep - 1 others.
  size_t kept = 1;
  for (const fs::path& p : step_files_newest_first()) {
    if (p == target) continue;
    if (kept < static_cast<size_t>(std::max(keep_, 1))) ++kept;
    else fs::remove(p, ec);
  }
  sync_directory(dir_);
}

void CheckpointDirectory::remove_temporaries() const {
  std::error_code ec;
  std::vector<fs::path> ours;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (name == ".last.h5.tmp" ||
        (name.size() > 17 && is_step_file_name(name.substr(0, 17)) &&
         is_temporary_name_of(name, name.substr(0, 17))))
      ours.push_back(e.path());
  }
  for (const fs::path& p : ours) fs::remove(p, ec);
}

std::vector<fs::path> CheckpointDirectory::step_files_newest_first() const {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (is_step_file_name(e.path().filename().string())) files.push_back(e.path());
  std::sort(files.rbegin(), files.rend());  // zero-padded, so name order is step order
  return files;
}

std::optional<CheckpointData> CheckpointDirectory::load_newest(const ParameterLayout& layout) const {
  // Step files are renamed into place complete, before last.h5 is pointed at them, so the
  // newest step file is the newest checkpoint; last.h5 matters only when it is the only one.
  const std::vector<fs::path> steps = step_files_newest_first();
  const fs::path newest = !steps.empty() ? steps.front() : exists_here(last()) ? last() : fs::path();
  if (newest.empty()) return std::nullopt;
  try {
    return read_checkpoint(newest.string(), layout);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::BadInput) throw;
    throw_bad_input("cannot resume: the newest checkpoint does not load and is left in place "
                    "(move it out of the directory to resume from the one before it): " +
                    std::string(e.what()));
  }
}

// ---- the run directory --------------------------------------------------------------------------

RunDirectory RunDirectory::open(const fs::path& dir) {
  RunDirectory rd(dir, DirectoryLock::acquire(dir, "output.dir"));
  try {
    rd.inspect();
  } catch (const Error&) {
    rd.lock_.release_leaving_no_trace();  // not elbo's directory: leave it as it was
    throw;
  }
  return rd;
}

void RunDirectory::inspect() {
  const fs::path marker = dir_ / kMarker;
  std::error_code ec;
  auto refuse = [&](const fs::path& p, const std::string& why) {
    throw_bad_input("output.dir holds " + p.filename().string() + ", " + why +
                    "; elbo writes only into its own run directories: choose another output.dir" +
                    at(p.string()));
  };
  const char* ours[] = {"config.yaml", "metrics.jsonl", "checkpoints", "images", "report.html"};
  if (!exists_here(marker)) {
    for (const char* name : ours)
      if (exists_here(dir_ / name)) refuse(dir_ / name, "which elbo did not write here (no run.yaml)");
    holds_ = Holds::Nothing;
    return;
  }
  if (!fs::is_regular_file(fs::symlink_status(marker, ec)) ||
      (found_run_id_ = run_id_in_marker(read_small_file(marker))).empty())
    refuse(marker, "which is not the run marker elbo writes");
  for (const char* name : ours) {
    const fs::path p = dir_ / name;
    const fs::file_status st = fs::symlink_status(p, ec);
    const bool directory = name == std::string("checkpoints") || name == std::string("images");
    const bool right_kind = directory ? fs::is_directory(st) : fs::is_regular_file(st);
    if (exists_here(p) && !right_kind)
      refuse(p, fs::is_symlink(st) ? "which is a symlink" : "which is not what elbo writes there");
  }
  const CheckpointDirectory cd(dir_ / "checkpoints", 1);
  holds_ = !cd.step_files_newest_first().empty() || exists_here(cd.last()) ? Holds::Run : Holds::Start;
}

std::optional<CheckpointData> RunDirectory::choose_start(const std::string& resume,
                                                         std::optional<CheckpointData> from_path,
                                                         bool discard_newer,
                                                         const ParameterLayout& layout) {
  const CheckpointDirectory cd(dir_ / "checkpoints", 1);
  auto take_over_failed_start = [&] {
    if (holds_ == Holds::Start)
      note("output.dir holds a run that never reached a checkpoint (run " + found_run_id_ +
           "); starting over in it (" + dir_.string() + ")");
  };
  if (resume.empty() || (resume == "auto" && holds_ != Holds::Run)) {
    if (resume.empty() && holds_ == Holds::Run)
      throw_bad_input("run directory already holds a run; choose another output.dir or pass "
                      "--resume auto" + at((dir_ / "checkpoints").string()));
    take_over_failed_start();
    run_id_ = make_run_id();
    return std::nullopt;
  }
  if (resume == "auto") {
    std::optional<CheckpointData> ck = cd.load_newest(layout);
    if (!ck->run_id.empty() && ck->run_id != found_run_id_)
      throw_bad_input("cannot resume: the newest checkpoint belongs to run " + ck->run_id +
                      ", not to this directory's run " + found_run_id_ + at(dir_.string()));
    run_id_ = found_run_id_;
    return ck;
  }
  CheckpointData& ck = *from_path;
  if (holds_ != Holds::Run) {  // a continuation into a directory of its own
    take_over_failed_start();
    run_id_ = ck.run_id.empty() ? make_run_id() : ck.run_id;
    return from_path;
  }
  if (ck.run_id.empty() || ck.run_id != found_run_id_)
    throw_bad_input("output.dir holds another run (run " + found_run_id_ + "), and " + resume +
                    " belongs to " + (ck.run_id.empty() ? "no known run" : "run " + ck.run_id) +
                    "; resume into the directory of the checkpoint's run, or into an empty or "
                    "new output.dir" + at(dir_.string()));
  std::vector<fs::path> newer;
  for (const fs::path& p : cd.step_files_newest_first())
    if (step_of(p) > ck.state.step) newer.push_back(p);
  if (!newer.empty() && !discard_newer)
    throw_bad_input(std::to_string(newer.size()) + " checkpoint(s) of this run are past step " +
                    std::to_string(ck.state.step) + ", the newest " +
                    newer.front().filename().string() +
                    "; pass --discard-newer to delete them and continue from step " +
                    std::to_string(ck.state.step) + ", or resume into an empty or new output.dir" +
                    at(dir_.string()));
  discard_newer_ = discard_newer;
  run_id_ = found_run_id_;
  return from_path;
}

void RunDirectory::start(const std::string& config_yaml, const CheckpointData* resumed_from,
                         int keep) {
  const fs::path ck_dir = dir_ / "checkpoints";
  std::error_code ec;
  fs::create_directories(ck_dir, ec);
  if (ec) throw_file_error("create", "the checkpoint directory", ck_dir.string(), ec.value());
  // The marker first: from here on the directory is this run's, whatever fails next.
  if (run_id_ != found_run_id_)
    write_file_atomically((dir_ / kMarker).string(),
                          std::string(kMarkerHeader) + "\nrun_id: " + run_id_ +
                              "\ncreated: " + iso8601_utc_now() + "\n",
                          "the run marker");
  write_file_atomically((dir_ / "config.yaml").string(), kConfigHeader + config_yaml,
                        "the resolved config");
  const bool continues_here = resumed_from && holds_ == Holds::Run;
  if (continues_here) {
    // What came after the checkpoint never happened, as far as this run is concerned.
    const size_t dropped = trim_metrics_after(metrics_path(), resumed_from->state.step);
    if (dropped > 0)
      note("dropped " + std::to_string(dropped) + " line(s) of metrics.jsonl past step " +
           std::to_string(resumed_from->state.step) + " or cut short by a crash");
  } else if (exists_here(metrics_path())) {
    write_file_atomically(metrics_path().string(), "", "the metrics file");
  }
  remove_images_after(dir_ / "images", continues_here ? resumed_from->state.epoch : 0);
  checkpoints_.emplace(ck_dir, keep, run_id_);
  checkpoints_->remove_temporaries();
  if (continues_here && discard_newer_) {
    for (const fs::path& p : checkpoints_->step_files_newest_first()) {
      if (step_of(p) <= resumed_from->state.step) break;
      note("--discard-newer: deleting " + p.string());
      fs::remove(p, ec);
    }
    // last.h5 named one of them: until the next save, no last.h5 beats a dangling one.
    if (!fs::exists(checkpoints_->last(), ec)) fs::remove(checkpoints_->last(), ec);
    sync_directory(ck_dir);
  }
}

}  // namespace elbo
