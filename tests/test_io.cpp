// io tests: HDF5 wrappers on the golden file, shard round trips and row reads, IDX import,
// checkpoints, and the one-line BadInput error each broken user file gives.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>

#include "core/error.h"
#include "core/model.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "io/directory_lock.h"
#include "io/files.h"
#include "io/hdf5.h"
#include "io/idx.h"
#include "io/shards.h"
#include "tests/h5_fixtures.h"

namespace fs = std::filesystem;
using namespace elbo;

namespace {

const std::string kGolden = std::string(ELBO_TEST_DATA_DIR) + "/vae_golden.h5";

// A fresh directory per test, removed afterwards.
class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("elbo_test_io_" + std::string(info->test_suite_name()) +
                                        "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// `f` must throw a one-line BadInput error of the form `<what> (<where>)` whose message contains
// every `needles` string.
void expect_bad_input(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needles[0] << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_TRUE(std::regex_match(msg, std::regex(R"(.+ \(.+\))")))
        << "not '<what> (<where>)': " << msg;
    for (const std::string& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// Sample values that tell rows apart: row r, element j.
uint8_t u8_value(int64_t r, int64_t j) { return static_cast<uint8_t>((r * 7 + j * 3) % 256); }
float f32_value(int64_t r, int64_t j) {
  return static_cast<float>(r) + 0.25f * static_cast<float>(j);
}

// Writes a uint8 shard holding global rows [first, first + n) of `F` features, labels r % 10.
void write_u8_rows(const std::string& path, int64_t first, int64_t n, std::vector<int64_t> shape,
                   bool labels = true) {
  int64_t F = 1;
  for (int64_t d : shape) F *= d;
  std::vector<uint8_t> x;
  std::vector<int64_t> y;
  for (int64_t r = first; r < first + n; ++r) {
    for (int64_t j = 0; j < F; ++j) x.push_back(u8_value(r, j));
    if (labels) y.push_back(r % 10);
  }
  write_shard_u8(path, shape, x, y);
}

void write_f32_rows(const std::string& path, int64_t first, int64_t n, std::vector<int64_t> shape) {
  int64_t F = 1;
  for (int64_t d : shape) F *= d;
  std::vector<float> x;
  for (int64_t r = first; r < first + n; ++r)
    for (int64_t j = 0; j < F; ++j) x.push_back(f32_value(r, j));
  write_shard_f32(path, shape, x, {});
}

}  // namespace

// ---- HDF5 wrappers ----------------------------------------------------------------------------

TEST(Hdf5, ReadsGoldenFloatsAndAttributes) {
  h5::File f = h5::File::open_read(kGolden);
  h5::FloatArray x = f.read_floats("/mlp_relu_bernoulli/x");  // float64 on disk
  ASSERT_EQ(x.shape, (std::vector<int64_t>{8, 784}));
  ASSERT_EQ(x.data.size(), 8u * 784u);
  EXPECT_EQ(x.data[0], 0.0f);
  EXPECT_NEAR(x.data[3 * 784 + 100], 230.0f / 255.0f, 1e-6f);
  EXPECT_EQ(f.dataset_shape("/mlp_relu_bernoulli/params/encoder.0.weight"),
            (std::vector<int64_t>{64, 784}));
  EXPECT_TRUE(f.exists("/mlp_relu_bernoulli/params/encoder.0.bias"));
  EXPECT_FALSE(f.exists("/mlp_relu_bernoulli/params/nope"));
  EXPECT_FALSE(f.exists("/nope/deeper/x"));

  const std::string g = "/mlp_relu_bernoulli";
  EXPECT_NEAR(f.read_double_attribute(g, "loss0"), 550.802, 1e-3);
  EXPECT_EQ(f.read_string_attribute(g, "activation"), "relu");
  EXPECT_EQ(f.read_int_attribute(g, "latent"), 10);
  EXPECT_EQ(f.read_int_attribute(g, "D"), 784);
  EXPECT_EQ(f.read_double_array_attribute(g, "encoder"), (std::vector<double>{64.0}));
  EXPECT_EQ(f.read_double_array_attribute(g, "betas"), (std::vector<double>{0.9, 0.999}));
  EXPECT_TRUE(f.has_attribute("/", "about"));
  EXPECT_FALSE(f.has_attribute(g, "nope"));
  std::vector<std::string> kids = f.children("/");
  EXPECT_NE(std::find(kids.begin(), kids.end(), "mlp_relu_bernoulli"), kids.end());

  expect_bad_input([&] { f.read_int_attribute(g, "nope"); },
                   {"no attribute 'nope' (" + kGolden + ":" + g + ")"});
  expect_bad_input([&] { f.read_int_attribute(g, "activation"); },
                   {"attribute 'activation' is not a scalar integer (" + kGolden + ":" + g + ")"});
  expect_bad_input([&] { f.read_floats("/mlp_relu_bernoulli/nope"); },
                   {"no dataset '/mlp_relu_bernoulli/nope' (" + kGolden + ")"});
}

TEST_F(IoTest, Hdf5WritesAndReadsBack) {
  std::string p = path("a.h5");
  {
    h5::File f = h5::File::create(p);
    std::vector<float> v{1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f};
    f.write_floats("/deep/group/w", {2, 3}, v.data());
    f.create_group("/g");
    f.write_int_attribute("/", "n", -7);
    f.write_int_attribute("/", "n", 42);  // replaces
    f.write_double_attribute("/g", "d", 0.125);
    f.write_string_attribute("/deep/group/w", "s", "hello: world\n");
  }
  h5::File f = h5::File::open_read(p);
  h5::FloatArray a = f.read_floats("/deep/group/w");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.data, (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f}));
  EXPECT_EQ(f.read_int_attribute("/", "n"), 42);
  EXPECT_EQ(f.read_double_attribute("/g", "d"), 0.125);
  EXPECT_EQ(f.read_string_attribute("/deep/group/w", "s"), "hello: world\n");
  EXPECT_EQ(f.children("/deep/group"), (std::vector<std::string>{"w"}));
}

TEST_F(IoTest, Hdf5OpenErrors) {
  expect_bad_input([&] { h5::File::open_read(path("missing.h5")); },
                   {"no such file (" + path("missing.h5") + ")"});
  std::ofstream(path("text.h5")) << "just some text, not HDF5\n";
  expect_bad_input([&] { h5::File::open_read(path("text.h5")); },
                   {"not an HDF5 file (" + path("text.h5") + ")"});
  const std::string long_name = path(std::string(5000, 'n') + ".h5");
  expect_bad_input(
      [&] { h5::File::open_read(long_name); },
      {"cannot open: " + std::generic_category().message(ENAMETOOLONG) + " (" + long_name + ")"});
}

// Opening a FIFO for reading waits for a writer for ever: it, and a device, are refused at once.
TEST_F(IoTest, Hdf5OpenRefusesFilesThatAreNotRegular) {
  ASSERT_EQ(::mkfifo(path("fifo.h5").c_str(), 0600), 0) << std::strerror(errno);
  expect_bad_input([&] { h5::File::open_read(path("fifo.h5")); },
                   {"cannot open: is a FIFO, not a regular file (" + path("fifo.h5") + ")"});
  expect_bad_input([&] { h5::File::open_read("/dev/null"); },
                   {"cannot open: is a character device, not a regular file (/dev/null)"});
  expect_bad_input([&] { h5::File::open_read(dir_.string()); },
                   {"cannot open: is a directory (" + dir_.string() + ")"});
  // A symbolic link to a regular file (as last.h5 is) opens.
  write_u8_rows(path("real.h5"), 0, 2, {3});
  fs::create_symlink(path("real.h5"), path("link.h5"));
  EXPECT_EQ(h5::File::open_read(path("link.h5")).dataset_shape("/x"), (std::vector<int64_t>{2, 3}));
}

// ---- shards -------------------------------------------------------------------------------------

TEST_F(IoTest, ShardRoundTripU8) {
  write_u8_rows(path("s0.h5"), 0, 3, {2, 3});
  write_u8_rows(path("s1.hdf5"), 3, 2, {2, 3});
  std::ofstream(path("notes.txt")) << "ignored";
  ShardedDataset d = ShardedDataset::open(dir_.string());
  ASSERT_EQ(d.shards().size(), 2u);
  EXPECT_EQ(d.shards()[1].first_row, 3);
  EXPECT_EQ(d.size(), 5);
  EXPECT_EQ(d.features(), 6);
  EXPECT_EQ(d.sample_shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(d.sample_type(), SampleType::U8);
  ASSERT_TRUE(d.has_labels());
  std::vector<int64_t> rows{0, 1, 2, 3, 4};
  std::vector<float> out(5 * 6);
  d.read_rows(rows, out.data());
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t j = 0; j < 6; ++j)
      EXPECT_EQ(out[static_cast<size_t>(r * 6 + j)], static_cast<float>(u8_value(r, j)) / 255.0f);
  std::vector<int64_t> labels(5);
  d.read_labels(rows, labels.data());
  EXPECT_EQ(labels, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST_F(IoTest, ShardRoundTripF32ByGlob) {
  write_f32_rows(path("a-0.h5"), 0, 4, {5});
  write_f32_rows(path("a-1.h5"), 4, 3, {5});
  write_u8_rows(path("b-0.h5"), 0, 2, {7});  // not matched by the glob
  ShardedDataset d = ShardedDataset::open(path("a-*.h5"));
  EXPECT_EQ(d.size(), 7);
  EXPECT_EQ(d.sample_type(), SampleType::F32);
  EXPECT_FALSE(d.has_labels());
  std::vector<int64_t> rows{6, 0, 4};
  std::vector<float> out(3 * 5);
  d.read_rows(rows, out.data());
  for (size_t i = 0; i < rows.size(); ++i)
    for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(out[i * 5 + j], f32_value(rows[i], j));
}

TEST_F(IoTest, ShardRowsInAnyOrderCachedEqualsUncached) {
  write_u8_rows(path("s0.h5"), 0, 5, {2, 2});
  write_u8_rows(path("s1.h5"), 5, 3, {2, 2});
  write_u8_rows(path("s2.h5"), 8, 4, {2, 2});
  ShardedDataset d = ShardedDataset::open(dir_.string());
  ASSERT_EQ(d.size(), 12);
  // Unsorted, repeated, crossing both shard boundaries, runs and singletons.
  std::vector<int64_t> rows{11, 0, 5, 4, 5, 7, 3, 11, 8, 1, 2, 9};
  const size_t F = 4;
  std::vector<float> uncached(rows.size() * F), cached(rows.size() * F);
  std::vector<int64_t> labels_uncached(rows.size()), labels_cached(rows.size());
  d.read_rows(rows, uncached.data());
  d.read_labels(rows, labels_uncached.data());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(labels_uncached[i], rows[i] % 10);
    for (size_t j = 0; j < F; ++j)
      EXPECT_EQ(uncached[i * F + j], static_cast<float>(u8_value(rows[i], j)) / 255.0f) << i;
  }
  EXPECT_FALSE(d.cached());
  d.cache_in_memory();
  EXPECT_TRUE(d.cached());
  d.read_rows(rows, cached.data());
  d.read_labels(rows, labels_cached.data());
  EXPECT_EQ(cached, uncached);
  EXPECT_EQ(labels_cached, labels_uncached);
}

TEST_F(IoTest, ShardRowOutOfRangeIsInternal) {
  write_u8_rows(path("s0.h5"), 0, 3, {2});
  ShardedDataset d = ShardedDataset::open(dir_.string());
  std::vector<int64_t> rows{3};
  std::vector<float> out(2);
  try {
    d.read_rows(rows, out.data());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Internal);
  }
}

TEST_F(IoTest, ShardMissingX) {
  {
    h5::File f = h5::File::create(path("s1.h5"));
    float v = 1.0f;
    f.write_floats("/z", {1, 1}, &v);
  }
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"no dataset '/x' (" + path("s1.h5") + ")"});
}

TEST_F(IoTest, ShardsDisagreeOnShape) {
  write_u8_rows(path("a.h5"), 0, 2, {28, 28});
  write_u8_rows(path("b.h5"), 2, 2, {784});
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"shards disagree on sample shape: [28, 28] vs [784] (" + path("a.h5") + ", " +
                    path("b.h5") + ")"});
}

TEST_F(IoTest, ShardsDisagreeOnType) {
  write_u8_rows(path("a.h5"), 0, 2, {4}, false);
  write_f32_rows(path("b.h5"), 2, 2, {4});
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"shards disagree on sample type: uint8 vs float32 (" + path("a.h5") + ", " +
                    path("b.h5") + ")"});
}

TEST_F(IoTest, ShardsDisagreeOnLabels) {
  write_u8_rows(path("a.h5"), 0, 2, {4}, true);
  write_u8_rows(path("b.h5"), 2, 2, {4}, false);
  expect_bad_input(
      [&] { ShardedDataset::open(dir_.string()); },
      {"shards disagree on labels: '/y' vs no '/y' (" + path("a.h5") + ", " + path("b.h5") + ")"});
}

TEST_F(IoTest, ShardWrongTypeOrRank) {
  {
    h5::File f = h5::File::create(path("i32.h5"));
    std::vector<int32_t> v(6, 1);
    f.write_dataset("/x", {3, 2}, H5T_STD_I32LE, H5T_NATIVE_INT32, v.data());
  }
  expect_bad_input([&] { ShardedDataset::open(path("i32.h5")); },
                   {"type int32", "(" + path("i32.h5") + ":/x)"});
  {
    h5::File f = h5::File::create(path("flat.h5"));
    std::vector<float> v(3, 1.0f);
    f.write_floats("/x", {3}, v.data());
  }
  expect_bad_input([&] { ShardedDataset::open(path("flat.h5")); },
                   {"shape [3]", "(" + path("flat.h5") + ":/x)"});
}

TEST_F(IoTest, ShardEmpty) {
  write_shard_u8(path("e.h5"), {4}, {}, {});
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"shard has 0 rows (" + path("e.h5") + ")"});
}

TEST_F(IoTest, ShardTruncated) {
  write_u8_rows(path("t.h5"), 0, 100, {28, 28});
  fs::resize_file(path("t.h5"), fs::file_size(path("t.h5")) / 2);
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"truncated or corrupt HDF5 file (" + path("t.h5") + ")"});
}

TEST_F(IoTest, ShardNotHdf5) {
  std::ofstream(path("text.h5")) << "x,y\n1,2\n";
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"not an HDF5 file (" + path("text.h5") + ")"});
}

// A FIFO named like a shard, in the directory or matched by the glob, is an error, not skipped.
TEST_F(IoTest, ShardThatIsNotARegularFile) {
  write_u8_rows(path("a.h5"), 0, 2, {3});
  ASSERT_EQ(::mkfifo(path("b.h5").c_str(), 0600), 0) << std::strerror(errno);
  fs::create_directories(path("sub.h5"));  // a directory named like a shard is not one
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"cannot open: is a FIFO, not a regular file (" + path("b.h5") + ")"});
  expect_bad_input([&] { ShardedDataset::open(path("*.h5")); },
                   {"cannot open: is a FIFO, not a regular file (" + path("b.h5") + ")"});
  expect_bad_input([&] { ShardedDataset::open("/dev/null"); },
                   {"cannot open: is a character device, not a regular file (/dev/null)"});
  fs::remove(path("b.h5"));
  EXPECT_EQ(ShardedDataset::open(dir_.string()).size(), 2);
  EXPECT_EQ(ShardedDataset::open(path("*.h5")).size(), 2);
}

TEST_F(IoTest, ShardGlobMatchesNothing) {
  expect_bad_input([&] { ShardedDataset::open(path("train/*.h5")); },
                   {"no shards match the pattern (" + path("train/*.h5") + ")"});
  expect_bad_input([&] { ShardedDataset::open(path("nope.h5")); },
                   {"no shards match the pattern (" + path("nope.h5") + ")"});
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"no shards (*.h5, *.hdf5) in the directory (" + dir_.string() + ")"});
}

TEST_F(IoTest, ShardLabelRowMismatch) {
  {
    h5::File f = h5::File::create(path("y.h5"));
    std::vector<uint8_t> x(3 * 4, 1);
    std::vector<int64_t> y{0, 1};
    f.write_dataset("/x", {3, 4}, H5T_STD_U8LE, H5T_NATIVE_UINT8, x.data());
    f.write_dataset("/y", {2}, H5T_STD_I64LE, H5T_NATIVE_INT64, y.data());
  }
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); },
                   {"shape [2], expected [3]", "(" + path("y.h5") + ":/y)"});
}

TEST_F(IoTest, ShardCacheRejectsNonFinite) {
  write_f32_rows(path("a.h5"), 0, 3, {2});
  std::vector<float> x{0.0f, 1.0f, 2.0f, 3.0f, 4.0f, std::nanf("")};
  write_shard_f32(path("b.h5"), {2}, x, {});
  {
    ShardedDataset d = ShardedDataset::open(dir_.string());
    expect_bad_input([&] { d.cache_in_memory(); },
                     {"non-finite value in '/x' at row 2 (" + path("b.h5") + ")"});
    EXPECT_FALSE(d.cached());
  }  // closes b.h5 so it can be rewritten

  x[5] = -INFINITY;
  write_shard_f32(path("b.h5"), {2}, x, {});
  expect_bad_input([&] { ShardedDataset::open(path("b.h5")).cache_in_memory(); },
                   {"non-finite value in '/x' at row 2 (" + path("b.h5") + ")"});
}

// Rows read from the shards, not only cached ones, are checked: data.cache never (or auto on data
// larger than memory) once trained on NaN without a word. One check serves both paths.
TEST_F(IoTest, ShardRowsAreCheckedAsTheyAreReadCachedOrNot) {
  std::vector<float> a{0.0f, 0.5f, 1.0f, 0.25f, 0.75f, 0.125f};  // rows 0-2, two values each
  std::vector<float> b{0.5f, 0.5f, 0.0f, 1.5f, 0.5f, 0.5f};      // rows 3-5; 1.5 in its row 1
  write_shard_f32(path("a.h5"), {2}, a, {});
  write_shard_f32(path("b.h5"), {2}, b, {});
  {
    ShardedDataset d = ShardedDataset::open(dir_.string());  // no rule: 1.5 is data like any
    std::vector<int64_t> rows{4, 0};
    std::vector<float> out(4);
    d.read_rows(rows, out.data());
    EXPECT_EQ(out, (std::vector<float>{0.0f, 1.5f, 0.0f, 0.5f}));
  }
  const std::string outside =
      "value 1.5 in '/x' at row 1 is outside [0, 1], which model.likelihood bernoulli needs (" +
      path("b.h5") + ")";
  ShardedDataset d = ShardedDataset::open(dir_.string());
  d.require_unit_interval("model.likelihood bernoulli");
  std::vector<float> out(3 * 2);
  std::vector<int64_t> clean{2, 0, 5};
  d.read_rows(clean, out.data());  // rows without the value read fine
  EXPECT_EQ(out, (std::vector<float>{0.75f, 0.125f, 0.0f, 0.5f, 0.5f, 0.5f}));
  std::vector<int64_t> dirty{0, 4};
  expect_bad_input([&] { d.read_rows(dirty, out.data()); }, {outside});
  expect_bad_input([&] { d.cache_in_memory(); }, {outside});
  EXPECT_FALSE(d.cached());

  b[3] = -0.25f;
  write_shard_f32(path("c.h5"), {2}, b, {});
  ShardedDataset c = ShardedDataset::open(path("c.h5"));
  c.require_unit_interval("model.likelihood bernoulli");
  std::vector<int64_t> row1{1};
  expect_bad_input([&] { c.read_rows(row1, out.data()); },
                   {"value -0.25 in '/x' at row 1 is outside [0, 1], which model.likelihood "
                    "bernoulli needs (" +
                    path("c.h5") + ")"});

  // uint8 data is in [0, 1] by construction, 0 and 255 included.
  std::vector<uint8_t> u{0, 255, 128, 1};
  write_shard_u8(path("u8.h5"), {2}, u, {});
  ShardedDataset e = ShardedDataset::open(path("u8.h5"));
  e.require_unit_interval("model.likelihood bernoulli");
  std::vector<int64_t> both{0, 1};
  e.read_rows(both, out.data());
  EXPECT_EQ(out[1], 1.0f);
  e.cache_in_memory();
  EXPECT_TRUE(e.cached());
}

TEST_F(IoTest, ShardUncachedReadsRejectNonFinite) {
  write_f32_rows(path("a.h5"), 0, 3, {2});
  std::vector<float> x{0.0f, 1.0f, 2.0f, 3.0f, 4.0f, std::nanf("")};
  write_shard_f32(path("b.h5"), {2}, x, {});
  ShardedDataset d = ShardedDataset::open(dir_.string());
  std::vector<float> out(2 * 2);
  std::vector<int64_t> finite{3, 4};  // rows 0 and 1 of b.h5
  d.read_rows(finite, out.data());
  EXPECT_EQ(out, (std::vector<float>{0.0f, 1.0f, 2.0f, 3.0f}));
  std::vector<int64_t> with_nan{1, 5};
  expect_bad_input([&] { d.read_rows(with_nan, out.data()); },
                   {"non-finite value in '/x' at row 2 (" + path("b.h5") + ")"});
}

// A shard stored through a filter this HDF5 lacks (as h5py's LZF is without its plugin) is refused
// when it is opened, not when a batch first reads it; one with a filter it has reads as written.
TEST_F(IoTest, ShardFiltersMustBeAvailable) {
  using namespace elbo_test;
  write_fixture_shard(path("lzf.h5"), false, 40, 6, Storage::Unavailable);
  expect_bad_input([&] { ShardedDataset::open(path("lzf.h5")); },
                   {"dataset is stored with the HDF5 filter 'unavailable test filter' (id 511), "
                    "which this HDF5 library cannot decode; install its plugin (see "
                    "HDF5_PLUGIN_PATH) or rewrite the shard without it (" +
                    path("lzf.h5") + ":/x)"});
  write_fixture_shard(path("deflate.h5"), true, 40, 6, Storage::Deflate);
  ShardedDataset d = ShardedDataset::open(path("deflate.h5"));
  std::vector<int64_t> rows{39, 0, 17};
  std::vector<float> uncached(3 * 6), cached(3 * 6);
  d.read_rows(rows, uncached.data());
  for (size_t i = 0; i < rows.size(); ++i)
    for (int64_t j = 0; j < 6; ++j)
      EXPECT_EQ(uncached[i * 6 + static_cast<size_t>(j)], fixture_value(rows[i], j) / 255.0f);
  d.cache_in_memory();
  d.read_rows(rows, cached.data());
  EXPECT_EQ(cached, uncached);
}

// A corrupt chunk is found when a batch reads it: the error names the shard, the dataset and the
// first row that cannot be read, with HDF5's reason, and rows in other chunks still read.
TEST_F(IoTest, ShardCorruptChunkNamesTheRow) {
  using namespace elbo_test;
  const std::string p = path("s.h5");
  write_fixture_shard(p, false, 100, 8, Storage::Deflate);
  corrupt_chunk(p, "/x", 37);  // the chunk of rows 32-47
  ShardedDataset d = ShardedDataset::open(dir_.string());
  std::vector<int64_t> good{5, 99, 48, 31};
  std::vector<float> out(4 * 8);
  d.read_rows(good, out.data());
  for (size_t i = 0; i < good.size(); ++i)
    EXPECT_EQ(out[i * 8 + 3], fixture_value(good[i], 3) / 255.0f);
  std::vector<int64_t> bad{60, 40, 5, 33};
  expect_bad_input(
      [&] { d.read_rows(bad, out.data()); },
      {"cannot read '/x' at row 33: filter returned failure during read", "(" + p + ")"});
  expect_bad_input(
      [&] { d.cache_in_memory(); },
      {"cannot read '/x' at row 32: filter returned failure during read", "(" + p + ")"});
  EXPECT_FALSE(d.cached());
  // The same file through the wrappers' whole-dataset read (as checkpoint tensors are read).
  expect_bad_input(
      [&] { h5::File::open_read(p).read_floats("/x"); },
      {"cannot read the dataset: filter returned failure during read", "(" + p + ":/x)"});
}

// An unfiltered chunk whose stored size in the chunk index (a version-1 B-tree here) is not one
// chunk's bytes: 16 where 2 x 2 x 2 uint8 take 8, at the address of the superblock, found by the
// fuzzer. HDF5 1.10.8 reads it into a buffer of one chunk and copies past its end. Refused when
// the dataset is opened, by every reader.
TEST_F(IoTest, ShardUnfilteredChunkOfTheWrongSizeIsRefused) {
  const std::string p = path("s.h5");
  std::filesystem::copy_file(
      std::string(ELBO_TEST_DATA_DIR) +
          "/../fuzz/regressions/shard/hdf5-unfiltered-chunk-larger-than-chunk",
      p);
  const std::vector<std::string> why{"the dataset's 3 chunks are stored in 16 bytes, not 8 each",
                                     "is the file corrupt? (" + p + ":/x)"};
  expect_bad_input([&] { ShardedDataset::open(dir_.string()); }, why);
  expect_bad_input([&] { h5::File::open_read(p).read_floats("/x"); }, why);
}

// A checkpoint whose integer attribute's type has bits past its element (found by the fuzzer):
// HDF5 1.10.8's conversion reads past the value, so the type is refused before the read.
TEST_F(IoTest, MalformedNumberTypeOfAnAttributeIsRefused) {
  const std::string p = path("c.h5");
  std::filesystem::copy_file(std::string(ELBO_TEST_DATA_DIR) +
                                 "/../fuzz/regressions/checkpoint/hdf5-int-attribute-bits-past-element",
                             p);
  expect_bad_input([&] { h5::File::open_read(p).read_int_attribute("/", "format_version"); },
                   {"attribute 'format_version' has a malformed number type", "(" + p + ":/)"});
}

// Valid unfiltered chunked shards pass the same check: a partial edge chunk (100 rows in chunks
// of 16) and a sparse one (no chunk written).
TEST_F(IoTest, ShardUnfilteredChunksOfTheRightSizePass) {
  using namespace elbo_test;
  for (const Storage s : {Storage::Sparse, Storage::Contiguous}) {
    const std::string p = path(s == Storage::Sparse ? "sparse.h5" : "plain.h5");
    write_fixture_shard(p, true, 100, 16, s);
    EXPECT_EQ(h5::File::open_read(p).read_floats("/x").data.size(), 1600u) << p;
  }
  const std::string p = path("edge.h5");
  {
    h5::File f = h5::File::create(p);
    const hsize_t dims[2] = {100, 3}, chunk[2] = {16, 2};  // edge chunks along both dimensions
    h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), h5::Handle::Type::PropList);
    ASSERT_GE(H5Pset_chunk(dcpl.get(), 2, chunk), 0);
    h5::Handle space(H5Screate_simple(2, dims, nullptr), h5::Handle::Type::Dataspace);
    h5::Handle ds(
        H5Dcreate2(f.id(), "x", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
        h5::Handle::Type::Dataset);
    std::vector<float> v(300);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 300.0f;
    ASSERT_GE(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0);
  }
  EXPECT_EQ(h5::File::open_read(p).read_floats("/x").data[299], 299.0f / 300.0f);
}

// ---- IDX ----------------------------------------------------------------------------------------

namespace {

std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& shape, const std::vector<uint8_t>& data,
                               uint8_t type = 0x08) {
  std::vector<uint8_t> b{0, 0, type, static_cast<uint8_t>(shape.size())};
  for (uint32_t d : shape)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void write_raw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  gzclose(f);
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 13 % 251);
  return v;
}

}  // namespace

TEST_F(IoTest, IdxRawAndGzipRoundTrip) {
  std::vector<uint8_t> data = iota_bytes(5 * 3 * 2);
  std::vector<uint8_t> bytes = idx_bytes({5, 3, 2}, data);
  write_raw(path("x-idx3-ubyte"), bytes);
  write_gz(path("x-idx3-ubyte.gz"), bytes);
  for (const char* name : {"x-idx3-ubyte", "x-idx3-ubyte.gz"}) {
    IdxArray a = read_idx(path(name));
    EXPECT_EQ(a.shape, (std::vector<int64_t>{5, 3, 2})) << name;
    EXPECT_EQ(a.data, data) << name;
  }
}

TEST_F(IoTest, IdxErrors) {
  std::vector<uint8_t> good = idx_bytes({4, 2, 2}, iota_bytes(16));
  std::vector<uint8_t> short_data(good.begin(), good.end() - 3);
  write_gz(path("short.gz"), short_data);
  expect_bad_input([&] { read_idx(path("short.gz")); },
                   {"truncated", "(" + path("short.gz") + ")"});
  std::vector<uint8_t> long_data = good;
  long_data.push_back(7);
  write_raw(path("long"), long_data);
  expect_bad_input([&] { read_idx(path("long")); },
                   {"past the 16 bytes", "(" + path("long") + ")"});
  std::vector<uint8_t> bad_magic = good;
  bad_magic[0] = 0x1f;
  write_raw(path("magic"), bad_magic);
  expect_bad_input([&] { read_idx(path("magic")); },
                   {"not an IDX file", "(" + path("magic") + ")"});
  write_raw(path("float"), idx_bytes({2}, std::vector<uint8_t>(8), 0x0D));
  expect_bad_input([&] { read_idx(path("float")); }, {"0x0D", "(" + path("float") + ")"});
  expect_bad_input([&] { read_idx(path("missing.gz")); },
                   {"no such file (" + path("missing.gz") + ")"});
}

TEST_F(IoTest, PrepareFromIdxWritesShards) {
  std::vector<uint8_t> images = iota_bytes(10 * 2 * 3);
  std::vector<uint8_t> labels{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  write_gz(path("images.gz"), idx_bytes({10, 2, 3}, images));
  write_gz(path("labels.gz"), idx_bytes({10}, labels));
  std::string out = path("out");
  PrepareResult r = prepare_from_idx(path("images.gz"), path("labels.gz"), out, 3);
  EXPECT_EQ(r.rows, 10);
  ASSERT_EQ(r.shard_paths.size(), 3u);
  EXPECT_EQ(fs::path(r.shard_paths[0]).filename().string(), "shard-00000-of-00003.h5");
  EXPECT_EQ(fs::path(r.shard_paths[2]).filename().string(), "shard-00002-of-00003.h5");
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();

  ShardedDataset d = ShardedDataset::open(out);
  ASSERT_EQ(d.size(), 10);
  EXPECT_EQ(d.shards()[0].rows, 4);  // 10 = 4 + 3 + 3
  EXPECT_EQ(d.shards()[2].rows, 3);
  EXPECT_EQ(d.sample_shape(), (std::vector<int64_t>{2, 3}));
  std::vector<int64_t> rows{9, 0, 4};
  std::vector<float> x(3 * 6);
  std::vector<int64_t> y(3);
  d.read_rows(rows, x.data());
  d.read_labels(rows, y.data());
  EXPECT_EQ(y, rows);
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = 0; j < 6; ++j)
      EXPECT_EQ(x[i * 6 + j],
                static_cast<float>(images[static_cast<size_t>(rows[i]) * 6 + j]) / 255.0f);

  expect_bad_input([&] { prepare_from_idx(path("images.gz"), "", out, 2); },
                   {"refusing to overwrite existing shards (" + out + "/shard-0000"});
  PrepareResult unlabelled = prepare_from_idx(path("images.gz"), "", path("out2"), 1);
  EXPECT_FALSE(ShardedDataset::open(path("out2")).has_labels());
}

TEST_F(IoTest, PrepareFromIdxErrors) {
  write_raw(path("images"), idx_bytes({3, 2, 2}, iota_bytes(12)));
  write_raw(path("labels"), idx_bytes({4}, {0, 1, 2, 3}));
  expect_bad_input([&] { prepare_from_idx(path("images"), path("labels"), path("o"), 1); },
                   {"3 images vs 4 labels (" + path("images") + ", " + path("labels") + ")"});
  expect_bad_input([&] { prepare_from_idx(path("images"), "", path("o"), 4); },
                   {"4 shards (" + path("images") + ")"});
  expect_bad_input([&] { prepare_from_idx(path("images"), "", path("o"), 0); },
                   {"0 shards (" + path("images") + ")"});
}

// Failing to write shard k (here: a directory squats on its temporary name, so creating it fails)
// leaves no shard at all, not shards 0..k-1.
TEST_F(IoTest, PrepareFromIdxFailureLeavesNoShard) {
  write_raw(path("images"), idx_bytes({6, 2, 2}, iota_bytes(24)));
  std::string out = path("out");
  const std::string blocked = out + "/shard-00002-of-00003.h5.tmp." + std::to_string(::getpid());
  fs::create_directories(blocked + "/blocker");
  EXPECT_THROW(prepare_from_idx(path("images"), "", out, 3), Error);
  for (const auto& e : fs::directory_iterator(out)) {
    std::string name = e.path().filename().string();
    if (name == DirectoryLock::kFileName) continue;
    EXPECT_NE(name, "shard-00000-of-00003.h5");
    EXPECT_NE(name, "shard-00001-of-00003.h5");
    EXPECT_FALSE(e.is_regular_file()) << "left behind: " << name;
  }
  EXPECT_TRUE(fs::is_directory(blocked + "/blocker"));  // not ours

  // Once the obstacle is gone the same command goes through.
  fs::remove_all(blocked);
  EXPECT_EQ(prepare_from_idx(path("images"), "", out, 3).shard_paths.size(), 3u);
}

// Temporaries left by an earlier crashed prepare neither block a new one nor survive it.
TEST_F(IoTest, PrepareFromIdxClearsStaleTemporaries) {
  write_raw(path("images"), idx_bytes({4, 2, 2}, iota_bytes(16)));
  std::string out = path("out");
  fs::create_directories(out);
  std::ofstream(out + "/shard-00000-of-00002.h5.tmp.123") << "half-written";
  std::ofstream(out + "/shard-00004-of-00005.h5.tmp.4567") << "half-written";
  std::ofstream(out + "/notes.h5.tmp") << "the user's";
  PrepareResult r = prepare_from_idx(path("images"), "", out, 2);
  ASSERT_EQ(r.shard_paths.size(), 2u);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{".elbo.lock", "notes.h5.tmp", "shard-00000-of-00002.h5",
                                             "shard-00001-of-00002.h5"}));
  EXPECT_EQ(ShardedDataset::open(out).size(), 4);
}

// ---- whole-file writes and directory locks --------------------------------------------------------

TEST_F(IoTest, WriteFileAtomicallyReplacesTheFileAndLeavesNoTemporary) {
  write_file_atomically(path("f"), "one", "the file");
  write_file_atomically(path("f"), "two", "the file");
  std::ifstream in(path("f"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "two");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"f"});
}

// A symlink where the file goes is replaced itself; what it pointed at is never written.
TEST_F(IoTest, WriteFileAtomicallyNeverWritesThroughASymlink) {
  std::ofstream(path("users_file")) << "precious";
  fs::create_symlink(path("users_file"), path("link"));
  // Also a symlink planted at the temporary name (another user's trap): not followed.
  fs::create_symlink(path("users_file"), temporary_name_for(path("other")));
  write_file_atomically(path("link"), "ours", "the file");
  write_file_atomically(path("other"), "ours", "the file");
  std::ifstream in(path("users_file"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "precious");
  EXPECT_FALSE(fs::is_symlink(path("link")));
  EXPECT_EQ(fs::file_size(path("link")), 4u);
}

TEST_F(IoTest, FileErrorsNameTheTargetAndTheCause) {
  fs::create_directories(path("ro"));
  std::ofstream(path("plain")) << "x";
  // A file where a directory should be: the user's path, so bad input.
  expect_bad_input([&] { write_file_atomically(path("plain") + "/f", "x", "the file"); },
                   {"cannot create the file", "Not a directory", path("plain") + "/f"});
  try {
    throw_file_error("write", "the checkpoint", "/runs/a/step.h5", ENOSPC);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Internal);  // the machine's fault: exit 1
    EXPECT_STREQ(e.what(), "cannot write the checkpoint: No space left on device (/runs/a/step.h5)");
  }
}

TEST_F(IoTest, TemporaryNamesAreOursOnlyWithAPid) {
  EXPECT_TRUE(is_temporary_name_of("a.h5.tmp.123", "a.h5"));
  EXPECT_EQ(fs::path(temporary_name_for("/x/a.h5")).filename().string(),
            "a.h5.tmp." + std::to_string(::getpid()));
  for (const char* name : {"a.h5.tmp", "a.h5.tmp.", "a.h5.tmp.12x", "b.h5.tmp.1", "a.h5"})
    EXPECT_FALSE(is_temporary_name_of(name, "a.h5")) << name;
}

// The lock is per open file, so a second acquire in this process conflicts like another
// process's would; the error names the holder. A holder that dies releases it.
TEST_F(IoTest, DirectoryLockAdmitsOneHolderAndDiesWithIt) {
  {
    DirectoryLock held = DirectoryLock::acquire(path("run"), "output.dir");
    EXPECT_TRUE(held.created_directory());
    expect_bad_input([&] { DirectoryLock::acquire(path("run"), "output.dir"); },
                     {"output.dir is in use by another elbo process",
                      "pid " + std::to_string(::getpid()) + " on host", path("run")});
  }
  EXPECT_FALSE(DirectoryLock::acquire(path("run"), "output.dir").created_directory());

  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    DirectoryLock mine = DirectoryLock::acquire(path("run"), "output.dir");
    (void)!::write(ready[1], "x", 1);
    ::pause();  // killed below, the lock still held
    ::_exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  expect_bad_input([&] { DirectoryLock::acquire(path("run"), "output.dir"); },
                   {"pid " + std::to_string(child) + " on host"});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_NO_THROW(DirectoryLock::acquire(path("run"), "output.dir"));
  ::close(ready[0]);
  ::close(ready[1]);
  std::ofstream(path("file")) << "x";
  expect_bad_input([&] { DirectoryLock::acquire(path("file"), "--out"); },
                   {"--out exists and is not a directory"});
}

// ---- checkpoints --------------------------------------------------------------------------------

namespace {

ModelSpec small_spec(int hidden = 5) {
  ModelSpec s;
  s.input_dim = 6;
  s.encoder = {hidden};
  s.latent = 2;
  s.decoder = {4};
  return s;
}

// The config a run of small_spec(hidden) would have saved (batch 50, adamw).
Config small_config(int hidden = 5) {
  Config c;
  c.seed = 0xFEDCBA9876543210ull;
  c.data.train = "shards/";
  c.model.encoder = {hidden};
  c.model.latent = 2;
  c.model.decoder = {4};
  c.train.batch_size = 50;
  c.train.optimizer.name = "adamw";
  c.output.dir = "runs/small";
  return c;
}

// A checkpoint of small_spec() whose fields agree, as a run writes them: 1234 steps of 50 samples.
CheckpointData sample_checkpoint(const ParameterLayout& layout) {
  CheckpointData d;
  d.state = {3, 1234, 61700, 0xFEDCBA9876543210ull, 4};
  d.config_yaml = to_yaml(small_config(layout.find("encoder.0.weight")->rows));
  d.optimizer_name = "adamw";
  d.optimizer_steps = 1234;
  size_t P = layout.total_size();
  for (size_t i = 0; i < P; ++i) {
    float f = static_cast<float>(i);
    d.params.push_back(std::ldexp(f + 0.1f, -static_cast<int>(i % 30)) * (i % 2 ? -1.0f : 1.0f));
    d.exp_avg.push_back(1e-7f * f);
    d.exp_avg_sq.push_back(f * f + 0.3f);
  }
  return d;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_F(IoTest, CheckpointRoundTripIsBitwise) {
  ParameterLayout layout(small_spec());
  ASSERT_GT(layout.tensors().size(), 0u);
  CheckpointData in = sample_checkpoint(layout);
  std::string p = path("ckpt.h5");
  write_checkpoint_atomically(p, layout, in);
  CheckpointData out = read_checkpoint(p, layout);
  EXPECT_TRUE(bitwise_equal(in.params, out.params));
  EXPECT_TRUE(bitwise_equal(in.exp_avg, out.exp_avg));
  EXPECT_TRUE(bitwise_equal(in.exp_avg_sq, out.exp_avg_sq));
  EXPECT_EQ(out.state.epoch, 3);
  EXPECT_EQ(out.state.step, 1234);
  EXPECT_EQ(out.state.samples_seen, 61700);
  EXPECT_EQ(out.state.seed, 0xFEDCBA9876543210ull);
  EXPECT_EQ(out.state.world_size, 4);
  EXPECT_EQ(out.config_yaml, in.config_yaml);
  EXPECT_EQ(out.optimizer_name, "adamw");
  EXPECT_EQ(out.optimizer_steps, 1234);

  // The documented layout, as an h5py user would see it.
  h5::File f = h5::File::open_read(p);
  EXPECT_EQ(f.read_int_attribute("/", "format_version"), 1);
  EXPECT_EQ(f.read_string_attribute("/", "created").size(), 20u);  // 2024-01-02T03:04:05Z
  const TensorView& w = layout.tensors()[0];
  EXPECT_EQ(f.dataset_shape("/params/" + w.name), (std::vector<int64_t>{w.rows, w.cols}));
  for (const TensorView& t : layout.tensors()) {
    std::vector<int64_t> want{t.rows};
    if (!t.is_bias) want.push_back(t.cols);
    EXPECT_EQ(f.dataset_shape("/params/" + t.name), want) << t.name;
  }
}

// A conv model's checkpoint: PyTorch's 4-D shapes on disk, and the sample shape [C, H, W] from
// which elbo info and --resume rebuild the model.
TEST_F(IoTest, ConvCheckpointHasTorchShapesAndTheSampleShape) {
  Config c = small_config();
  c.model.type = ModelType::Conv;
  c.model.conv = ConvSpec{{3, 4}, 3, 2, 1};
  const ModelSpec spec = model_spec(c, {2, 7, 6}, "shards/");
  const ParameterLayout layout(spec);
  CheckpointData in = sample_checkpoint(layout);
  in.config_yaml = to_yaml(c);
  const std::string p = path("conv.h5");
  write_checkpoint_atomically(p, layout, in);
  const h5::File f = h5::File::open_read(p);
  EXPECT_EQ(f.dataset_shape("/params/encoder.conv.1.weight"), (std::vector<int64_t>{4, 3, 3, 3}));
  EXPECT_EQ(f.dataset_shape("/params/decoder.deconv.0.weight"), (std::vector<int64_t>{4, 3, 3, 3}));
  EXPECT_EQ(f.dataset_shape("/params/decoder.out.weight"), (std::vector<int64_t>{3, 2, 3, 3}));
  EXPECT_EQ(f.dataset_shape("/params/decoder.out.bias"), (std::vector<int64_t>{2}));
  const CheckpointHeader h = read_checkpoint_header(p);
  EXPECT_EQ(h.sample_shape, (std::vector<int64_t>{2, 7, 6}));
  EXPECT_EQ(h.input_dim, 84);
  const CheckpointData out = read_checkpoint(p, layout);
  EXPECT_TRUE(bitwise_equal(in.params, out.params));
  // The MLP of the same config file, but for the type, does not take it.
  EXPECT_THROW(read_checkpoint(p, ParameterLayout(small_spec())), Error);
}

TEST_F(IoTest, CheckpointReplacesAtomicallyAndLeavesNoTemporary) {
  ParameterLayout layout(small_spec());
  CheckpointData first = sample_checkpoint(layout), second = first;
  second.state.step = second.optimizer_steps = 2000;
  second.state.samples_seen = 2000 * 50;
  for (float& v : second.params) v += 1.0f;
  std::string p = path("ckpt.h5");
  write_checkpoint_atomically(p, layout, first);
  write_checkpoint_atomically(p, layout, second);
  CheckpointData out = read_checkpoint(p, layout);
  EXPECT_EQ(out.state.step, 2000);
  EXPECT_TRUE(bitwise_equal(out.params, second.params));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt.h5"}));

  // A crash mid-write leaves a half-written temporary beside the previous checkpoint, which must
  // still read; the next save goes through.
  std::ofstream(p + ".tmp.99999") << "\x89HDF\r\n\x1a\n half-written";
  EXPECT_EQ(read_checkpoint(p, layout).state.step, 2000);
  write_checkpoint_atomically(p, layout, first);
  EXPECT_EQ(read_checkpoint(p, layout).state.step, 1234);

  // A failed write (buffers that do not match the layout) leaves the old file and no temporary.
  CheckpointData broken = first;
  broken.exp_avg.pop_back();
  EXPECT_THROW(write_checkpoint_atomically(p, layout, broken), Error);
  EXPECT_EQ(read_checkpoint(p, layout).state.step, 1234);
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));
}

// Failing to create the file we write (here: its directory is missing) is not the user's input.
TEST_F(IoTest, CheckpointCreateFailureIsInternal) {
  ParameterLayout layout(small_spec());
  std::string p = path("no/such/dir/ckpt.h5");
  try {
    write_checkpoint_atomically(p, layout, sample_checkpoint(layout));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::Internal) << msg;
    EXPECT_EQ(msg, "cannot create the checkpoint: " + std::string(std::strerror(ENOENT)) + " (" + p + ")");
  }
}

TEST_F(IoTest, CheckpointErrors) {
  ParameterLayout layout(small_spec());
  expect_bad_input([&] { read_checkpoint(path("missing.h5"), layout); },
                   {"no such file (" + path("missing.h5") + ")"});

  ASSERT_EQ(::mkfifo(path("fifo.h5").c_str(), 0600), 0) << std::strerror(errno);
  expect_bad_input([&] { read_checkpoint(path("fifo.h5"), layout); },
                   {"cannot open: is a FIFO, not a regular file (" + path("fifo.h5") + ")"});
  expect_bad_input([&] { read_checkpoint_header(path("fifo.h5")); },
                   {"cannot open: is a FIFO, not a regular file (" + path("fifo.h5") + ")"});

  write_u8_rows(path("shard.h5"), 0, 2, {6});
  expect_bad_input([&] { read_checkpoint(path("shard.h5"), layout); },
                   {"not an elbo checkpoint", "(" + path("shard.h5") + ")"});

  std::string p = path("ckpt.h5");
  write_checkpoint_atomically(p, layout, sample_checkpoint(layout));
  ParameterLayout wider(small_spec(7));
  expect_bad_input(
      [&] { read_checkpoint(p, wider); },
      {"tensor has shape [5, 6], the model expects [7, 6] (" + p + ":/params/encoder.0.weight)"});
  ModelSpec deeper = small_spec();
  deeper.decoder = {4, 4};
  expect_bad_input([&] { read_checkpoint(p, ParameterLayout(deeper)); },
                   {"decoder.1", "(" + p + ")"});

  {
    h5::File f = h5::File::create(path("v2.h5"));
    f.write_int_attribute("/", "format_version", 2);
  }
  expect_bad_input([&] { read_checkpoint(path("v2.h5"), layout); },
                   {"unsupported format version 2", "(" + path("v2.h5") + ")"});

  fs::copy_file(p, path("cut.h5"));
  fs::resize_file(path("cut.h5"), fs::file_size(p) / 2);
  expect_bad_input([&] { read_checkpoint(path("cut.h5"), layout); }, {"(" + path("cut.h5")});
}

// Every field read from a checkpoint is checked, alone and against the others, naming the file and
// the field: a damaged or edited checkpoint is refused, not continued from (a negative step once
// crashed the training loop). Each case edits a copy of a good checkpoint with the HDF5 C API.
TEST_F(IoTest, CheckpointFieldsAreValidated) {
  ParameterLayout layout(small_spec());
  const std::string good = path("good.h5");
  write_checkpoint_atomically(good, layout, sample_checkpoint(layout));
  ASSERT_EQ(read_checkpoint(good, layout).state.step, 1234);
  struct Case {
    std::string name;
    std::function<void(const std::string&)> edit;
    std::string message;  // the error, up to the location
    std::string object;   // the location inside the file
  };
  using namespace elbo_test;
  const auto set_int = [](const std::string& object, const std::string& name, int64_t v) {
    return [=](const std::string& p) { set_int_attribute(p, object, name, v); };
  };
  const auto set_text = [](const std::string& object, const std::string& name, std::string v) {
    return [=](const std::string& p) { set_string_attribute(p, object, name, v); };
  };
  const auto set_element = [](const std::string& ds, int64_t index, double v) {
    return [=](const std::string& p) { set_value(p, ds, index, v); };
  };
  Config other_model = small_config();
  other_model.model.activation = Activation::Tanh;  // same tensors: still loads
  Config wider = small_config(7);
  const std::vector<Case> cases = {
      {"negative step", set_int("/state", "step", -5),
       "checkpoint attribute 'step' is -5, must be between 0 and 2147483647", "/state"},
      {"step past the Adam counter", set_int("/state", "step", int64_t{1} << 40),
       "checkpoint attribute 'step' is 1099511627776, must be between 0 and 2147483647", "/state"},
      {"negative epoch", set_int("/state", "epoch", -1),
       "checkpoint attribute 'epoch' is -1, must be between 0 and the config's train.epochs 10",
       "/state"},
      {"epoch past train.epochs", set_int("/state", "epoch", 11),
       "checkpoint attribute 'epoch' is 11, must be between 0 and the config's train.epochs 10",
       "/state"},
      {"more epochs than steps",
       [](const std::string& p) {
         set_int_attribute(p, "/state", "step", 2);
         set_int_attribute(p, "/state", "samples_seen", 100);
         set_int_attribute(p, "/optimizer", "steps", 2);
       },
       "checkpoint attribute 'epoch' is 3, but only 2 steps were taken", "/state"},
      {"samples_seen", set_int("/state", "samples_seen", 56789),
       "checkpoint attribute 'samples_seen' is 56789, but 1234 steps of train.batch_size 50 are "
       "61700",
       "/state"},
      {"seed", set_int("/state", "seed", 7),
       "checkpoint attribute 'seed' is 7, but the config's seed is 18364758544493064720", "/state"},
      {"world_size 0", set_int("/", "world_size", 0),
       "checkpoint attribute 'world_size' is 0, must be between 1 and the config's "
       "train.batch_size 50",
       "/"},
      {"world_size past the batch", set_int("/", "world_size", 51),
       "checkpoint attribute 'world_size' is 51, must be between 1 and the config's "
       "train.batch_size 50",
       "/"},
      {"optimizer name", set_text("/optimizer", "name", "sgd"),
       "checkpoint attribute 'name' is 'sgd', but the config's train.optimizer.name is 'adamw'",
       "/optimizer"},
      {"optimizer steps", set_int("/optimizer", "steps", 1233),
       "checkpoint attribute 'steps' is 1233, but /state says 1234 steps were taken", "/optimizer"},
      {"step as text", set_text("/state", "step", "1234"),
       "attribute 'step' is not a scalar integer", "/state"},
      {"format_version as text", set_text("/", "format_version", "1"),
       "attribute 'format_version' is not a scalar integer", "/"},
      {"config that does not validate",
       set_text("/", "config", "data: {train: x}\ntrain: {epochs: -1}\n"),
       "key 'train.epochs' must be >= 1, got -1", "/config:2"},
      {"config of another model", set_text("/", "config", to_yaml(wider)),
       "the config attribute describes another model than the tensors hold (123 parameters vs "
       "101)",
       "/config"},
      {"NaN parameter", set_element("/params/encoder.0.weight", 3, std::nan("")),
       "tensor holds a non-finite value (nan) at index 3", "/params/encoder.0.weight"},
      {"infinite first moment", set_element("/optimizer/exp_avg/decoder.out.bias", 5, -INFINITY),
       "tensor holds a non-finite value (-inf) at index 5", "/optimizer/exp_avg/decoder.out.bias"},
      {"negative second moment", set_element("/optimizer/exp_avg_sq/encoder.head.weight", 1, -0.5),
       "tensor holds a negative second moment (-0.5) at index 1",
       "/optimizer/exp_avg_sq/encoder.head.weight"},
      {"float64 tensor",
       [](const std::string& p) { retype_dataset(p, "/params/decoder.out.bias", H5T_IEEE_F64LE); },
       "tensor is not float32 (64-bit float)", "/params/decoder.out.bias"},
      {"integer tensor",
       [](const std::string& p) {
         retype_dataset(p, "/optimizer/exp_avg/encoder.0.bias", H5T_STD_I32LE);
       },
       "tensor is not float32 (32-bit non-float)", "/optimizer/exp_avg/encoder.0.bias"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string p = path("edited.h5");
    fs::copy_file(good, p, fs::copy_options::overwrite_existing);
    c.edit(p);
    expect_bad_input([&] { read_checkpoint(p, layout); },
                     {c.message + " (" + p + ":" + c.object + ")"});
  }
  // Edits that keep the file consistent still load: a negative first moment, another activation.
  const std::string p = path("edited.h5");
  fs::copy_file(good, p, fs::copy_options::overwrite_existing);
  set_value(p, "/optimizer/exp_avg/encoder.0.weight", 0, -2.0);
  set_string_attribute(p, "/", "config", to_yaml(other_model));
  const CheckpointData d = read_checkpoint(p, layout);
  EXPECT_EQ(d.exp_avg[layout.find("encoder.0.weight")->offset], -2.0f);
  EXPECT_EQ(parse_config(d.config_yaml, "c").model.activation, Activation::Tanh);
}
