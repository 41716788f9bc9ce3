// Strict YAML config: every error is a BadInput naming the key and where it came from; overrides,
// defaults and the to_yaml round trip.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/config.h"

namespace fs = std::filesystem;
using elbo::Config;
using elbo::Error;
using elbo::ErrorKind;

namespace {

// The design document's example, line for line (line numbers matter to the tests below).
const char* kFullConfig = R"(name: fashion_mnist_mlp
seed: 7
data:
  train: data/fashion-mnist/train
  test: data/fashion-mnist/test
  binarize: dynamic
  cache: never
model:
  encoder: [512, 256]
  latent: 16
  decoder: [256, 512]
  activation: tanh
  likelihood: gaussian
train:
  epochs: 12
  batch_size: 64
  optimizer: {name: adamw, lr: 3.0e-4, betas: [0.8, 0.95], eps: 1.0e-6, weight_decay: 0.01}
  grad_clip: 1.5
  beta: 0.5
  kl_warmup_steps: 1000
  threads: 4
  max_steps: 250
  cuda_graphs: true
device: cpu
distributed:
  backend: mpi
  timeout_s: 60
checkpoint:
  every_steps: 100
  keep: 2
output:
  dir: runs/custom
  log_every: 10
)";

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("elbo_test_config_") + info->test_suite_name() + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& text, const std::string& name = "cfg.yaml") {
    const fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path.string();
  }

  Config load(const std::string& text, const std::vector<std::string>& overrides = {}) {
    return elbo::load_config(write(text), overrides);
  }

  fs::path dir_;
};

// Runs `f`, expects a BadInput error on one line of the form `<what> (<where>)`, and returns its
// message.
std::string bad_input_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    EXPECT_TRUE(std::regex_match(std::string(e.what()), std::regex(R"(.+ \(.+\))")))
        << "not '<what> (<where>)': " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

// Expects a BadInput whose message ends with `tail` (the key and location are the point).
#define EXPECT_BAD_INPUT(statement, tail)                                              \
  do {                                                                                 \
    const std::string msg_ = bad_input_message([&] { (void)(statement); });            \
    EXPECT_TRUE(msg_.ends_with(tail)) << "message: " << msg_ << "\nexpected end: " << (tail); \
  } while (0)

void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.data.train, b.data.train);
  EXPECT_EQ(a.data.test, b.data.test);
  EXPECT_EQ(a.data.binarize, b.data.binarize);
  EXPECT_EQ(a.data.cache, b.data.cache);
  EXPECT_EQ(a.model.encoder, b.model.encoder);
  EXPECT_EQ(a.model.latent, b.model.latent);
  EXPECT_EQ(a.model.decoder, b.model.decoder);
  EXPECT_EQ(a.model.activation, b.model.activation);
  EXPECT_EQ(a.model.likelihood, b.model.likelihood);
  EXPECT_EQ(a.model.type, b.model.type);
  EXPECT_EQ(a.model.conv.channels, b.model.conv.channels);
  EXPECT_EQ(a.model.conv.kernel, b.model.conv.kernel);
  EXPECT_EQ(a.model.conv.stride, b.model.conv.stride);
  EXPECT_EQ(a.model.conv.padding, b.model.conv.padding);
  EXPECT_EQ(a.train.epochs, b.train.epochs);
  EXPECT_EQ(a.train.batch_size, b.train.batch_size);
  EXPECT_EQ(a.train.optimizer.name, b.train.optimizer.name);
  EXPECT_EQ(a.train.optimizer.lr, b.train.optimizer.lr);  // exact: doubles must round-trip
  EXPECT_EQ(a.train.optimizer.beta1, b.train.optimizer.beta1);
  EXPECT_EQ(a.train.optimizer.beta2, b.train.optimizer.beta2);
  EXPECT_EQ(a.train.optimizer.eps, b.train.optimizer.eps);
  EXPECT_EQ(a.train.optimizer.weight_decay, b.train.optimizer.weight_decay);
  EXPECT_EQ(a.train.grad_clip, b.train.grad_clip);
  EXPECT_EQ(a.train.beta, b.train.beta);
  EXPECT_EQ(a.train.kl_warmup_steps, b.train.kl_warmup_steps);
  EXPECT_EQ(a.train.threads, b.train.threads);
  EXPECT_EQ(a.train.max_steps, b.train.max_steps);
  EXPECT_EQ(a.train.cuda_graphs, b.train.cuda_graphs);
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.distributed.backend, b.distributed.backend);
  EXPECT_EQ(a.distributed.timeout_s, b.distributed.timeout_s);
  EXPECT_EQ(a.checkpoint.every_steps, b.checkpoint.every_steps);
  EXPECT_EQ(a.checkpoint.keep, b.checkpoint.keep);
  EXPECT_EQ(a.output.dir, b.output.dir);
  EXPECT_EQ(a.output.log_every, b.output.log_every);
}

// ---- good configs ----------------------------------------------------------------------------------

TEST_F(ConfigTest, ParsesEveryKey) {
  const Config c = load(kFullConfig);
  EXPECT_EQ(c.name, "fashion_mnist_mlp");
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.data.train, "data/fashion-mnist/train");
  EXPECT_EQ(c.data.test, "data/fashion-mnist/test");
  EXPECT_EQ(c.data.binarize, elbo::Binarize::Dynamic);
  EXPECT_EQ(c.data.cache, elbo::DataCache::Never);
  EXPECT_EQ(c.model.encoder, (std::vector<int>{512, 256}));
  EXPECT_EQ(c.model.latent, 16);
  EXPECT_EQ(c.model.decoder, (std::vector<int>{256, 512}));
  EXPECT_EQ(c.model.activation, elbo::Activation::Tanh);
  EXPECT_EQ(c.model.likelihood, elbo::Likelihood::Gaussian);
  EXPECT_EQ(c.train.epochs, 12);
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.optimizer.name, "adamw");
  EXPECT_EQ(c.train.optimizer.lr, 3.0e-4);
  EXPECT_EQ(c.train.optimizer.beta1, 0.8);
  EXPECT_EQ(c.train.optimizer.beta2, 0.95);
  EXPECT_EQ(c.train.optimizer.eps, 1.0e-6);
  EXPECT_EQ(c.train.optimizer.weight_decay, 0.01);
  EXPECT_EQ(c.train.grad_clip, 1.5);
  EXPECT_EQ(c.train.beta, 0.5);
  EXPECT_EQ(c.train.kl_warmup_steps, 1000);
  EXPECT_EQ(c.train.threads, 4);
  EXPECT_EQ(c.train.max_steps, 250);
  EXPECT_TRUE(c.train.cuda_graphs);
  EXPECT_EQ(c.device, elbo::DeviceChoice::Cpu);
  EXPECT_EQ(c.distributed.backend, elbo::CommBackend::Mpi);
  EXPECT_EQ(c.distributed.timeout_s, 60.0);
  EXPECT_EQ(c.checkpoint.every_steps, 100);
  EXPECT_EQ(c.checkpoint.keep, 2);
  EXPECT_EQ(c.output.dir, "runs/custom");
  EXPECT_EQ(c.output.log_every, 10);
}

TEST_F(ConfigTest, DefaultsFillEveryOptionalKey) {
  const Config c = load("data:\n  train: shards/\n");
  Config expected;
  expected.data.train = "shards/";
  expected.output.dir = "runs/vae";
  expect_same(c, expected);
}

TEST_F(ConfigTest, OutputDirDefaultsToRunsSlashName) {
  EXPECT_EQ(load("name: mnist_small\ndata: {train: x}\n").output.dir, "runs/mnist_small");
  EXPECT_EQ(load("name: a\ndata: {train: x}\noutput: {log_every: 5}\n").output.dir, "runs/a");
}

TEST_F(ConfigTest, IntegersAreDecimalAndSeedSpansUint64) {
  const Config c = load("seed: 18446744073709551615\ndata: {train: x}\ntrain: {epochs: 010}\n");
  EXPECT_EQ(c.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(c.train.epochs, 10);  // not octal 8
}

TEST_F(ConfigTest, EmptyHiddenListIsAllowed) {
  const Config c = load("data: {train: x}\nmodel: {encoder: [], decoder: []}\n");
  EXPECT_TRUE(c.model.encoder.empty());
  EXPECT_TRUE(c.model.decoder.empty());
}

// ---- errors in the file -----------------------------------------------------------------------------

TEST_F(ConfigTest, UnknownTopLevelKey) {
  EXPECT_BAD_INPUT(load("data: {train: x}\nepochs: 3\n"), "unknown key 'epochs' (" + dir_.string() +
                                                              "/cfg.yaml:2)");
}

TEST_F(ConfigTest, UnknownNestedKey) {
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  epochs: 3\n  epochz: 4\n"),
                   "unknown key 'train.epochz' (" + dir_.string() + "/cfg.yaml:4)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  optimizer:\n    name: adam\n    momentum: 0.9\n"),
                   "unknown key 'train.optimizer.momentum' (" + dir_.string() + "/cfg.yaml:5)");
}

TEST_F(ConfigTest, DuplicateKey) {
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  epochs: 3\n  epochs: 4\n"),
                   "duplicate key 'train.epochs' (" + dir_.string() + "/cfg.yaml:4)");
}

TEST_F(ConfigTest, WrongType) {
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  epochs: ten\n"),
                   "key 'train.epochs' must be an integer, got 'ten' (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  epochs: 3.5\n"),
                   "key 'train.epochs' must be an integer, got '3.5' (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  optimizer: {lr: fast}\n"),
                   "key 'train.optimizer.lr' must be a finite number, got 'fast' (" +
                       dir_.string() + "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel:\n  encoder: 400\n"),
                   "key 'model.encoder' must be a list, got '400' (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel:\n  encoder: [400, wide]\n"),
                   "key 'model.encoder[1]' must be an integer, got 'wide' (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain: 5\n"),
                   "key 'train' must be a map, got '5' (" + dir_.string() + "/cfg.yaml:2)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  optimizer:\n  epochs: 3\n"),
                   "key 'train.optimizer' must be a map, got null (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data:\n  train: [a, b]\n"),
                   "key 'data.train' must be a string, got a list (" + dir_.string() +
                       "/cfg.yaml:2)");
}

TEST_F(ConfigTest, IntegerOutOfRange) {
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain: {epochs: 99999999999}\n"),
                   "key 'train.epochs' must be between -2147483648 and 2147483647, got "
                   "99999999999 (" + dir_.string() + "/cfg.yaml:2)");
  EXPECT_BAD_INPUT(load("seed: -1\ndata: {train: x}\n"),
                   "key 'seed' must be a non-negative integer, got '-1' (" + dir_.string() +
                       "/cfg.yaml:1)");
  EXPECT_BAD_INPUT(load("seed: 18446744073709551616\ndata: {train: x}\n"),
                   "key 'seed' must be between 0 and 18446744073709551615, got "
                   "18446744073709551616 (" + dir_.string() + "/cfg.yaml:1)");
}

TEST_F(ConfigTest, MissingRequiredKey) {
  const std::string where = "(" + dir_.string() + "/cfg.yaml)";
  EXPECT_BAD_INPUT(load("name: x\n"), "missing required key 'data.train' " + where);
  EXPECT_BAD_INPUT(load("data:\n  test: y\n"), "missing required key 'data.train' " + where);
  EXPECT_BAD_INPUT(load(""), "missing required key 'data.train' " + where);
}

TEST_F(ConfigTest, ValueOutOfRange) {
  struct Case {
    std::string line, key, rule, value;
  };
  const std::vector<Case> cases = {
      {"train: {batch_size: 0}", "train.batch_size", ">= 1", "0"},
      {"train: {epochs: 0}", "train.epochs", ">= 1", "0"},
      {"model: {latent: 0}", "model.latent", ">= 1", "0"},
      {"model: {decoder: [400, 0]}", "model.decoder[1]", ">= 1", "0"},
      {"train: {optimizer: {lr: 0}}", "train.optimizer.lr", "> 0", "0"},
      {"train: {optimizer: {betas: [0.9, 1.0]}}", "train.optimizer.betas[1]", ">= 0 and < 1", "1.0"},
      {"train: {optimizer: {betas: [-0.1, 0.9]}}", "train.optimizer.betas[0]", ">= 0 and < 1", "-0.1"},
      {"train: {optimizer: {eps: -1e-8}}", "train.optimizer.eps", "> 0", "-1e-8"},
      {"train: {optimizer: {weight_decay: -1}}", "train.optimizer.weight_decay", ">= 0", "-1"},
      {"train: {grad_clip: -0.5}", "train.grad_clip", ">= 0", "-0.5"},
      {"train: {beta: -1}", "train.beta", ">= 0", "-1"},
      {"train: {kl_warmup_steps: -1}", "train.kl_warmup_steps", ">= 0", "-1"},
      {"train: {threads: -2}", "train.threads", ">= 0", "-2"},
      {"train: {max_steps: -5}", "train.max_steps", ">= 0", "-5"},
      {"distributed: {timeout_s: 0}", "distributed.timeout_s", "> 0", "0"},
      {"checkpoint: {every_steps: -1}", "checkpoint.every_steps", ">= 0", "-1"},
      {"checkpoint: {keep: 0}", "checkpoint.keep", ">= 1", "0"},
      {"output: {log_every: 0}", "output.log_every", ">= 1", "0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    EXPECT_BAD_INPUT(load("data: {train: x}\n" + c.line + "\n"),
                     "key '" + c.key + "' must be " + c.rule + ", got " + c.value + " (" +
                         dir_.string() + "/cfg.yaml:2)");
  }
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain: {optimizer: {betas: [0.9]}}\n"),
                   "key 'train.optimizer.betas' must be a list of two numbers, got 1 (" +
                       dir_.string() + "/cfg.yaml:2)");
}

TEST_F(ConfigTest, BadEnum) {
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel:\n  latent: 2\n  activation: sigmoid\n"),
                   "key 'model.activation' must be one of relu|tanh, got 'sigmoid' (" +
                       dir_.string() + "/cfg.yaml:4)");
  EXPECT_BAD_INPUT(load("data: {train: x, binarize: static}\n"),
                   "key 'data.binarize' must be one of none|dynamic, got 'static' (" +
                       dir_.string() + "/cfg.yaml:1)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ndevice: tpu\n"),
                   "key 'device' must be one of auto|cpu|cuda, got 'tpu' (" + dir_.string() +
                       "/cfg.yaml:2)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain: {optimizer: {name: sgd}}\n"),
                   "key 'train.optimizer.name' must be one of adam|adamw, got 'sgd' (" +
                       dir_.string() + "/cfg.yaml:2)");
}

// A missing data.train is usually a misspelt key: the unknown key is the error reported.
TEST_F(ConfigTest, UnknownKeyIsReportedBeforeAMissingRequiredKey) {
  EXPECT_BAD_INPUT(load("dat:\n  train: x\n"),
                   "unknown key 'dat' (" + dir_.string() + "/cfg.yaml:1)");
  EXPECT_BAD_INPUT(load("name: n\ndata:\n  trian: x\n"),
                   "unknown key 'data.trian' (" + dir_.string() + "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data:\n  test: t\n", {"data.trian=x"}),
                   "unknown key 'data.trian' (override 'data.trian=x')");
  // Without a misspelling the missing key is still what is reported.
  EXPECT_BAD_INPUT(load("name: n\ndata:\n  test: t\n"),
                   "missing required key 'data.train' (" + dir_.string() + "/cfg.yaml)");
}

// yaml-cpp reads the first document only; the rest of the file would be ignored without a word.
TEST_F(ConfigTest, SecondYamlDocumentIsAnError) {
  const std::string where = "(" + dir_.string() + "/cfg.yaml:";
  EXPECT_BAD_INPUT(load("data: {train: x}\n---\nmodel: {latent: 3}\n"),
                   "a second YAML document starts here; a config is one document " + where + "2)");
  EXPECT_BAD_INPUT(load("# notes\ndata: {train: x}\ntrain: {epochs: 2}\n...\n---\n"),
                   "a second YAML document starts here; a config is one document " + where + "5)");
  EXPECT_BAD_INPUT(load("---\ndata: {train: x}\n---\n---\n"),
                   "a second YAML document starts here; a config is one document " + where + "3)");
  // One document, with or without its markers, is fine.
  EXPECT_EQ(load("---\ndata: {train: x}\ntrain: {epochs: 4}\n...\n").train.epochs, 4);
  EXPECT_EQ(load("%YAML 1.2\n---\ndata: {train: x}\n").data.train, "x");
}

// What the optimizer and the loss compute with is float32: a value that overflows it, or that
// rounds to 0 or to a subnormal, validates as a double but cannot work.
TEST_F(ConfigTest, Float32ValuesMustSurviveTheConversion) {
  const std::string too_big = "<= 3.4028234663852886e+38, the largest float32";
  const std::string too_small =
      ">= 1.1754943508222875e-38, the smallest normal float32 (smaller values round to 0 or lose "
      "precision)";
  struct Case {
    std::string line, key, rule, value;
  };
  const std::vector<Case> cases = {
      {"train: {optimizer: {lr: 1.0e+39}}", "train.optimizer.lr", too_big, "1.0e+39"},
      {"train: {optimizer: {lr: 1.0e-39}}", "train.optimizer.lr", too_small, "1.0e-39"},
      {"train: {optimizer: {eps: 1.0e-50}}", "train.optimizer.eps", too_small, "1.0e-50"},
      {"train: {optimizer: {eps: 1.0e-40}}", "train.optimizer.eps", too_small, "1.0e-40"},
      {"train: {optimizer: {eps: 1e300}}", "train.optimizer.eps", too_big, "1e300"},
      {"train: {optimizer: {weight_decay: 4e38}}", "train.optimizer.weight_decay", too_big, "4e38"},
      {"train: {optimizer: {weight_decay: 1e-45}}", "train.optimizer.weight_decay", too_small,
       "1e-45"},
      {"train: {beta: 1e39}", "train.beta", too_big, "1e39"},
      {"train: {beta: 1e-39}", "train.beta", too_small, "1e-39"},
      {"train: {grad_clip: 1e-40}", "train.grad_clip", too_small, "1e-40"},
      {"train: {optimizer: {betas: [0.9, 0.99999999999]}}", "train.optimizer.betas[1]",
       "<= 0.9999999403953552, the largest float32 below 1", "0.99999999999"},
      {"train: {optimizer: {betas: [0.99999998, 0.999]}}", "train.optimizer.betas[0]",
       "<= 0.9999999403953552, the largest float32 below 1", "0.99999998"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    EXPECT_BAD_INPUT(load("data: {train: x}\n" + c.line + "\n"),
                     "key '" + c.key + "' must be " + c.rule + ", got " + c.value + " (" +
                         dir_.string() + "/cfg.yaml:2)");
  }
  EXPECT_BAD_INPUT(load("data: {train: x}\n",
                        {"train.optimizer.eps=0.0000000000000000000000000000000000000000001"}),
                   "got 0.0000000000000000000000000000000000000000001 (override "
                   "'train.optimizer.eps=0.0000000000000000000000000000000000000000001')");
  // The edges themselves, zero where zero means off, and large but finite values are accepted.
  const Config ok = load(
      "data: {train: x}\ntrain:\n  optimizer: {lr: 1.0e+30, eps: 1.1754943508222875e-38, "
      "weight_decay: 3.4028234663852886e+38, betas: [0, 0.9999999]}\n  beta: 0\n  grad_clip: 0\n");
  EXPECT_EQ(ok.train.optimizer.lr, 1.0e30);
  EXPECT_EQ(static_cast<float>(ok.train.optimizer.eps), std::numeric_limits<float>::min());
  EXPECT_EQ(static_cast<float>(ok.train.optimizer.weight_decay), std::numeric_limits<float>::max());
  EXPECT_LT(static_cast<float>(ok.train.optimizer.beta2), 1.0f);
  EXPECT_EQ(ok.train.beta, 0.0);
}

TEST_F(ConfigTest, YamlSyntaxError) {
  const std::string msg =
      bad_input_message([&] { load("data:\n  train: x\nmodel:\n  encoder: [1, 2\n  latent: 3\n"); });
  EXPECT_TRUE(msg.starts_with("YAML syntax error: ")) << msg;
  EXPECT_NE(msg.find("cfg.yaml:"), std::string::npos) << msg;
  EXPECT_BAD_INPUT(load("data:\n  train: x\n    test: y\n"),
                   "YAML syntax error: illegal map value (" + dir_.string() + "/cfg.yaml:3)");
}

TEST_F(ConfigTest, TopLevelMustBeMap) {
  EXPECT_BAD_INPUT(load("- a\n- b\n"),
                   "config must be a map, got a list (" + dir_.string() + "/cfg.yaml:1)");
}

TEST_F(ConfigTest, MissingFile) {
  const std::string path = (dir_ / "x.yaml").string();
  const std::string msg = bad_input_message([&] { elbo::load_config(path); });
  EXPECT_EQ(msg, "cannot read config file: No such file or directory (" + path + ")");
}

TEST_F(ConfigTest, DirectoryIsNotAConfigFile) {
  const std::string path = dir_.string();
  const std::string msg = bad_input_message([&] { elbo::load_config(path); });
  EXPECT_EQ(msg, "cannot read config file: is a directory (" + path + ")");
}

TEST_F(ConfigTest, EmptyOrNullTestSetMeansNone) {
  EXPECT_EQ(load("data:\n  train: x\n  test:\n").data.test, "");
  EXPECT_EQ(load("data: {train: x, test: ~}\n").data.test, "");
  EXPECT_EQ(load("data: {train: x, test: ''}\n").data.test, "");
  EXPECT_EQ(load("data: {train: x, test: y}\n", {"data.test="}).data.test, "");
  EXPECT_EQ(load("data: {train: x, test: y}\n", {"data.test=''"}).data.test, "");
  // And it round-trips through to_yaml.
  Config c = load("data: {train: x, test: ~}\n");
  expect_same(c, elbo::parse_config(elbo::to_yaml(c), "resolved"));
}

TEST_F(ConfigTest, SizesHaveUpperBounds) {
  struct Case {
    std::string line, key, rule, value;
  };
  const std::vector<Case> cases = {
      {"model: {latent: 1048577}", "model.latent", "<= 1048576", "1048577"},
      {"model: {encoder: [400, 2000000]}", "model.encoder[1]", "<= 1048576", "2000000"},
      {"model: {decoder: [1048577]}", "model.decoder[0]", "<= 1048576", "1048577"},
      {"train: {batch_size: 16777217}", "train.batch_size", "<= 16777216", "16777217"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    EXPECT_BAD_INPUT(load("data: {train: x}\n" + c.line + "\n"),
                     "key '" + c.key + "' must be " + c.rule + ", got " + c.value + " (" +
                         dir_.string() + "/cfg.yaml:2)");
  }
  EXPECT_BAD_INPUT(load("data: {train: x}\n", {"model.latent=2000000"}),
                   "key 'model.latent' must be <= 1048576, got 2000000 (override "
                   "'model.latent=2000000')");
  // At most 64 hidden layers per list: longer is no VAE one could train.
  std::string layers = "[1";
  for (int i = 1; i < 65; ++i) layers += ", 1";
  EXPECT_BAD_INPUT(
      load("data: {train: x}\nmodel: {encoder: " + layers + "]}\n"),
      "key 'model.encoder' must have at most 64 layers, got 65 (" + dir_.string() + "/cfg.yaml:2)");
  const std::string override_text = "model.decoder=" + layers + "]";
  EXPECT_BAD_INPUT(
      load("data: {train: x}\n", {override_text}),
      "key 'model.decoder' must have at most 64 layers, got 65 (override '" + override_text + "')");
  const std::string sixty_four = layers.substr(0, layers.size() - 3) + "]";
  EXPECT_EQ(load("data: {train: x}\nmodel: {decoder: " + sixty_four + "}\n").model.decoder.size(),
            64u);
  Config ok = load("data: {train: x}\nmodel: {latent: 1048576, encoder: [1048576]}\n"
                   "train: {batch_size: 16777216}\n");
  EXPECT_EQ(ok.model.latent, 1048576);
  EXPECT_EQ(ok.model.encoder, (std::vector<int>{1048576}));
  EXPECT_EQ(ok.train.batch_size, 16777216);
}

// ---- overrides ---------------------------------------------------------------------------------------

TEST_F(ConfigTest, OverrideScalarAndList) {
  const Config c = load(kFullConfig, {"train.epochs=3", "model.encoder=[1024, 64, 8]",
                                      "train.optimizer.lr=0.5", "name=other"});
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_EQ(c.model.encoder, (std::vector<int>{1024, 64, 8}));
  EXPECT_EQ(c.train.optimizer.lr, 0.5);
  EXPECT_EQ(c.train.optimizer.name, "adamw");  // siblings of an overridden key stay
  EXPECT_EQ(c.name, "other");
  EXPECT_EQ(c.output.dir, "runs/custom");
}

TEST_F(ConfigTest, OverrideCreatesAbsentKnownKeys) {
  const Config c = load("data: {train: x}\n",
                        {"train.max_steps=5", "output.log_every=7", "data.test=y", "seed=9"});
  EXPECT_EQ(c.train.max_steps, 5);
  EXPECT_EQ(c.output.log_every, 7);
  EXPECT_EQ(c.data.test, "y");
  EXPECT_EQ(c.seed, 9u);
  EXPECT_EQ(c.output.dir, "runs/vae");
}

TEST_F(ConfigTest, LaterOverrideWins) {
  const Config c = load("data: {train: x}\n", {"train.epochs=3", "train.epochs=4"});
  EXPECT_EQ(c.train.epochs, 4);
}

TEST_F(ConfigTest, OverrideUnknownKey) {
  EXPECT_BAD_INPUT(load(kFullConfig, {"train.epochz=3"}),
                   "unknown key 'train.epochz' (override 'train.epochz=3')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"train.epochs.x=3"}),
                   "unknown key 'train.epochs.x' (override 'train.epochs.x=3')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"model.encoder=[1]", "model.encoder.0=3"}),
                   "unknown key 'model.encoder.0' (override 'model.encoder.0=3')");
}

TEST_F(ConfigTest, OverrideMalformed) {
  EXPECT_BAD_INPUT(load(kFullConfig, {"xyz"}),
                   "bad override, expected key=value (override 'xyz')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"=3"}), "bad override, expected key=value (override '=3')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"model.encoder=[1,"}),
                   "(override 'model.encoder=[1,')");
}

TEST_F(ConfigTest, OverrideWrongType) {
  EXPECT_BAD_INPUT(load(kFullConfig, {"train.epochs=ten"}),
                   "key 'train.epochs' must be an integer, got 'ten' (override 'train.epochs=ten')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"model.encoder=[512,x]"}),
                   "key 'model.encoder[1]' must be an integer, got 'x' (override "
                   "'model.encoder=[512,x]')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"train.batch_size=0"}),
                   "key 'train.batch_size' must be >= 1, got 0 (override 'train.batch_size=0')");
  EXPECT_BAD_INPUT(load(kFullConfig, {"train={epochs: 3, epochz: 4}"}),
                   "unknown key 'train.epochz' (override 'train={epochs: 3, epochz: 4}')");
}

TEST_F(ConfigTest, ErrorsOutsideOverridesKeepFileLines) {
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain:\n  epochs: ten\n", {"train.batch_size=4"}),
                   "key 'train.epochs' must be an integer, got 'ten' (" + dir_.string() +
                       "/cfg.yaml:3)");
  EXPECT_BAD_INPUT(load("data: {train: x}\ntrain: 5\n", {"train.epochs=3"}),
                   "key 'train' must be a map, got '5' (" + dir_.string() + "/cfg.yaml:2)");
}

// ---- to_yaml and the core mappings -----------------------------------------------------------------

TEST_F(ConfigTest, ToYamlRoundTrips) {
  Config c;
  c.name = "round trip: yes";
  c.seed = std::numeric_limits<uint64_t>::max();
  c.data.train = "/data/shards/*.h5";
  c.data.test = "";
  c.data.binarize = elbo::Binarize::Dynamic;
  c.data.cache = elbo::DataCache::Always;
  c.model.encoder = {};
  c.model.latent = 3;
  c.model.decoder = {7, 11};
  c.model.activation = elbo::Activation::Tanh;
  c.model.likelihood = elbo::Likelihood::Gaussian;
  c.train.epochs = 2;
  c.train.batch_size = 1;
  // eps and weight_decay at the two ends of the float32 range that the config accepts.
  const double low = std::numeric_limits<float>::min(), high = std::numeric_limits<float>::max();
  c.train.optimizer = {"adamw", 0.1 + 0.2, 1.0 / 3.0, 0.999999, low, high};
  c.train.grad_clip = 123456.789;
  c.train.beta = 2.0 / 7.0;
  c.train.kl_warmup_steps = std::numeric_limits<int64_t>::max();
  c.train.threads = 3;
  c.train.max_steps = 17;
  c.train.cuda_graphs = true;
  c.device = elbo::DeviceChoice::Cuda;
  c.distributed = {elbo::CommBackend::Nccl, 1e-3};
  c.checkpoint = {5, 9};
  c.output = {"out dir/with spaces", 1};

  const std::string yaml = elbo::to_yaml(c);
  const Config back = elbo::parse_config(yaml, "x");
  expect_same(back, c);
  EXPECT_EQ(elbo::to_yaml(back), yaml);
}

TEST_F(ConfigTest, ToYamlWritesEveryKeyAndRoundTripsAParsedFile) {
  const Config c = load("data: {train: x}\n");
  const std::string yaml = elbo::to_yaml(c);
  for (const char* key : {"name:", "seed:", "binarize:", "cache:", "encoder:", "likelihood:", "betas:",
                          "weight_decay:", "kl_warmup_steps:", "threads:", "max_steps:", "cuda_graphs:",
                          "device:", "timeout_s:", "every_steps:", "keep:", "dir:", "log_every:"})
    EXPECT_NE(yaml.find(key), std::string::npos) << key << " missing from\n" << yaml;
  expect_same(elbo::parse_config(yaml, "x"), c);
  expect_same(elbo::parse_config(elbo::to_yaml(load(kFullConfig)), "x"), load(kFullConfig));
}

// What resume mismatches print: values as the config spells them, not enum numbers.
TEST_F(ConfigTest, ConfigValueTextIsTheYamlSpelling) {
  const Config c = load(kFullConfig);
  EXPECT_EQ(elbo::config_value_text(c, "model.activation"), "tanh");
  EXPECT_EQ(elbo::config_value_text(c, "model.likelihood"), "gaussian");
  EXPECT_EQ(elbo::config_value_text(c, "model.encoder"), "[512, 256]");
  EXPECT_EQ(elbo::config_value_text(c, "model.latent"), "16");
  EXPECT_EQ(elbo::config_value_text(c, "train.optimizer.name"), "adamw");
  EXPECT_EQ(elbo::config_value_text(c, "train.optimizer.betas"), "[0.8, 0.95]");
  EXPECT_EQ(elbo::config_value_text(c, "seed"), "7");
  EXPECT_EQ(elbo::config_value_text(load("data: {train: x}\n"), "model.activation"), "relu");
  EXPECT_EQ(
      elbo::config_value_text(load("data: {train: x}\nmodel: {decoder: []}\n"), "model.decoder"),
      "[]");
  EXPECT_THROW(elbo::config_value_text(c, "model.depth"), Error);
}

TEST_F(ConfigTest, ModelSpecAndAdamConfig) {
  const Config c = load(kFullConfig);
  const elbo::ModelSpec spec = elbo::model_spec(c, 784);
  EXPECT_EQ(spec.input_dim, 784);
  EXPECT_EQ(spec.encoder, (std::vector<int>{512, 256}));
  EXPECT_EQ(spec.latent, 16);
  EXPECT_EQ(spec.decoder, (std::vector<int>{256, 512}));
  EXPECT_EQ(spec.activation, elbo::Activation::Tanh);
  EXPECT_EQ(spec.likelihood, elbo::Likelihood::Gaussian);

  const elbo::AdamConfig adamw = elbo::adam_config(c);
  EXPECT_FLOAT_EQ(adamw.lr, 3.0e-4f);
  EXPECT_FLOAT_EQ(adamw.beta1, 0.8f);
  EXPECT_FLOAT_EQ(adamw.beta2, 0.95f);
  EXPECT_FLOAT_EQ(adamw.eps, 1.0e-6f);
  EXPECT_FLOAT_EQ(adamw.weight_decay, 0.01f);
  EXPECT_TRUE(adamw.decoupled_weight_decay);

  EXPECT_FALSE(elbo::adam_config(load(kFullConfig, {"train.optimizer.name=adam"}))
                   .decoupled_weight_decay);
}

TEST_F(ConfigTest, ConvModel) {
  const std::string text =
      "data: {train: x}\nmodel:\n  type: conv\n  conv: {channels: [8, 16], kernel: 3, stride: 2, "
      "padding: 1}\n"
      "  encoder: [32]\n  likelihood: gaussian_learned\n";
  const Config c = load(text);
  EXPECT_EQ(c.model.type, elbo::ModelType::Conv);
  EXPECT_EQ(c.model.conv.channels, (std::vector<int>{8, 16}));
  EXPECT_EQ(c.model.conv.kernel, 3);
  EXPECT_EQ(c.model.likelihood, elbo::Likelihood::GaussianLearned);
  expect_same(c, elbo::parse_config(elbo::to_yaml(c), "resolved.yaml"));
  // mlp stays the default, and its resolved config has no conv section.
  const Config mlp = load("data: {train: x}\n");
  EXPECT_EQ(mlp.model.type, elbo::ModelType::Mlp);
  EXPECT_EQ(elbo::to_yaml(mlp).find("conv"), std::string::npos);
  // Overrides reach the conv keys; the defaults are the peer's (channels [32, 64], 4, 2, 1).
  const Config o = load("data: {train: x}\nmodel: {type: conv}\n", {"model.conv.kernel=5"});
  EXPECT_EQ(o.model.conv.kernel, 5);
  EXPECT_EQ(o.model.conv.channels, (std::vector<int>{32, 64}));

  // The data's shape: [H, W] is one channel, [C, H, W] is C channels.
  const elbo::ModelSpec spec = elbo::model_spec(c, {3, 9, 7}, "d.h5");
  EXPECT_EQ(spec.input_dim, 189);
  EXPECT_EQ(spec.channels, 3);
  EXPECT_EQ(spec.height, 9);
  EXPECT_EQ(spec.width, 7);
  EXPECT_EQ(elbo::model_spec(c, {28, 28}, "d.h5").channels, 1);
  EXPECT_EQ(elbo::model_spec(mlp, {28, 28}, "d.h5").input_dim, 784);

  const std::string where = dir_.string() + "/cfg.yaml";
  EXPECT_BAD_INPUT(elbo::model_spec(c, {784}, "d.h5"),
                   "model.type conv needs images, /x of shape [N, H, W] or [N, C, H, W], got "
                   "samples of shape [784] (d.h5)");
  const Config unpadded = load(
      "data: {train: x}\nmodel:\n  type: conv\n  conv: {channels: [4, 4], kernel: 3, padding: "
      "0}\n");
  EXPECT_BAD_INPUT(
      elbo::model_spec(unpadded, {5, 5}, "d.h5"),
      "key 'model.conv' does not fit images of shape [5, 5]: encoder.conv.1: kernel 3 is "
      "larger than the padded input 2x2 (input 2x2, padding 0) (" +
          where + ":4)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel:\n  conv: {kernel: 3}\n"),
                   "key 'model.conv' is for model.type conv only (" + where + ":3)");
  EXPECT_BAD_INPUT(
      load("data: {train: x}\nmodel: {type: conv, conv: {channels: []}}\n"),
      "key 'model.conv.channels' must name at least one layer's channels (" + where + ":2)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel: {type: conv, conv: {stride: 0}}\n"),
                   "key 'model.conv.stride' must be >= 1, got 0 (" + where + ":2)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel: {type: conv, conv: {dilation: 2}}\n"),
                   "unknown key 'model.conv.dilation' (" + where + ":2)");
  EXPECT_BAD_INPUT(load("data: {train: x}\nmodel: {type: resnet}\n"),
                   "key 'model.type' must be one of mlp|conv, got 'resnet' (" + where + ":2)");
}

TEST_F(ConfigTest, BooleansAreTrueOrFalse) {
  EXPECT_FALSE(elbo::parse_config("data: {train: x}\n", "b.yaml").train.cuda_graphs);
  EXPECT_TRUE(elbo::parse_config("data: {train: x}\n", "b.yaml", {"train.cuda_graphs=true"})
                  .train.cuda_graphs);
  for (const char* bad : {"yes", "1", "[true]"}) {
    try {
      elbo::parse_config("data: {train: x}\ntrain: {cuda_graphs: " + std::string(bad) + "}\n", "b.yaml");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const elbo::Error& e) {
      EXPECT_EQ(e.kind(), elbo::ErrorKind::BadInput);
      EXPECT_NE(std::string(e.what()).find("key 'train.cuda_graphs' must be true or false"),
                std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("(b.yaml:2)"), std::string::npos) << e.what();
    }
  }
}

// Every config we ship loads, and the ones documents quote say what the documents say.
TEST(ShippedConfigs, AllLoad) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(ELBO_CONFIGS_DIR)) {
    if (entry.path().extension() != ".yaml") continue;
    ++n;
    EXPECT_NO_THROW(elbo::load_config(entry.path().string())) << entry.path();
  }
  EXPECT_GE(n, 3);
  const elbo::Config bin =
      elbo::load_config(std::string(ELBO_CONFIGS_DIR) + "/fashion_mnist_binarized.yaml");
  EXPECT_EQ(bin.data.binarize, elbo::Binarize::Dynamic);
  EXPECT_EQ(bin.model.likelihood, elbo::Likelihood::Bernoulli);
  EXPECT_EQ(bin.model.encoder, (std::vector<int>{512, 512}));
  EXPECT_EQ(bin.model.latent, 32);
  EXPECT_EQ(bin.train.kl_warmup_steps, 4690);  // as docs/LIKELIHOOD.md says
}

}  // namespace
