// Replays fuzz inputs without libFuzzer: every file named on the command line, and every file in a
// directory named there, goes once through the target's LLVMFuzzerTestOneInput, in name order.
// Built with the project's compiler in every configuration, so that each CI build runs the seed
// corpus and the inputs that once failed (tests/fuzz/regressions). A failing input aborts; its
// name is the last one printed. Usage: replay [--seeds DIR] [FILE|DIR...]; the inputs in the
// --seeds directory are valid ones that the target must accept all the way, but for those named
// refused-*, which it must refuse.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  fs::path seeds;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (std::string(argv[i]) == "--seeds" && i + 1 < argc) {
      seeds = argv[++i];
      for (const auto& e : fs::directory_iterator(seeds))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_directory(argv[i], ec)) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (fs::is_regular_file(argv[i], ec)) {
      files.emplace_back(argv[i]);
    } else {
      std::fprintf(stderr, "replay: no such file or directory: %s\n", argv[i]);
      return 1;
    }
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::printf("replay: %s\n", f.c_str());
    std::fflush(stdout);
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    if (in.bad()) {
      std::fprintf(stderr, "replay: cannot read %s\n", f.c_str());
      return 1;
    }
    const long refusals = elbo::fuzz::refusals;
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (!seeds.empty() && f.parent_path() == seeds) {
      const bool refused = elbo::fuzz::refusals != refusals;
      if (refused != (f.filename().string().rfind("refused-", 0) == 0)) {
        std::fprintf(
            stderr, "replay: the seed %s was %s\n", f.c_str(),
            refused ? "refused: it should be a valid input" : "accepted: it is named refused-*");
        return 1;
      }
    }
  }
  std::printf("replay: %zu inputs, no failure\n", files.size());
  return files.empty() ? 1 : 0;  // replaying nothing tests nothing
}
