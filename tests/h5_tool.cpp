// Writes and edits HDF5 files for tests/cli_test.sh (the fixtures of tests/h5_fixtures.h):
//   h5_tool shard PATH u8|f32 ROWS FEATURES contiguous|deflate|unavailable|sparse
//   h5_tool corrupt-chunk PATH DATASET ROW
//   h5_tool set-value PATH DATASET INDEX VALUE        (VALUE may be nan, inf, -inf)
//   h5_tool set-int PATH OBJECT NAME VALUE
//   h5_tool set-string PATH OBJECT NAME VALUE
//   h5_tool set-float64 PATH DATASET                  (stores the dataset as float64)
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "tests/h5_fixtures.h"

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  const auto need = [&](size_t n) {
    if (a.size() != n) throw std::runtime_error("usage: see tests/h5_tool.cpp");
  };
  try {
    if (a.empty()) need(1);
    using namespace elbo_test;
    if (a[0] == "shard") {
      need(6);
      const Storage s = a[5] == "deflate"       ? Storage::Deflate
                        : a[5] == "unavailable" ? Storage::Unavailable
                        : a[5] == "sparse"      ? Storage::Sparse
                                                : Storage::Contiguous;
      write_fixture_shard(a[1], a[2] == "f32", std::stoll(a[3]), std::stoll(a[4]), s);
    } else if (a[0] == "corrupt-chunk") {
      need(4);
      corrupt_chunk(a[1], a[2], std::stoll(a[3]));
    } else if (a[0] == "set-value") {
      need(5);
      set_value(a[1], a[2], std::stoll(a[3]), std::strtod(a[4].c_str(), nullptr));
    } else if (a[0] == "set-int") {
      need(5);
      set_int_attribute(a[1], a[2], a[3], std::stoll(a[4]));
    } else if (a[0] == "set-string") {
      need(5);
      set_string_attribute(a[1], a[2], a[3], a[4]);
    } else if (a[0] == "set-float64") {
      need(3);
      retype_dataset(a[1], a[2], H5T_IEEE_F64LE);
    } else {
      need(0);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "h5_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
