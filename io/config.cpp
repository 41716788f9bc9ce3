// Strict YAML config: every value is read through one small reader that knows the key path and
// where the value came from (file line or override), so every error is one line naming both.
#include "io/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "io/location.h"

namespace elbo {
namespace {

// ---- names of enum values, shared by parsing and to_yaml -----------------------------------------

template <class E>
using NameTable = std::span<const std::pair<const char*, E>>;

constexpr std::pair<const char*, Binarize> kBinarize[] = {{"none", Binarize::None},
                                                          {"dynamic", Binarize::Dynamic}};
constexpr std::pair<const char*, DataCache> kDataCache[] = {
    {"auto", DataCache::Auto}, {"always", DataCache::Always}, {"never", DataCache::Never}};
constexpr std::pair<const char*, Activation> kActivation[] = {{"relu", Activation::Relu},
                                                              {"tanh", Activation::Tanh}};
constexpr std::pair<const char*, Likelihood> kLikelihood[] = {
    {"bernoulli", Likelihood::Bernoulli},
    {"gaussian", Likelihood::Gaussian},
    {"gaussian_learned", Likelihood::GaussianLearned}};
constexpr std::pair<const char*, ModelType> kModelType[] = {{"mlp", ModelType::Mlp},
                                                            {"conv", ModelType::Conv}};
constexpr std::pair<const char*, DeviceChoice> kDevice[] = {
    {"auto", DeviceChoice::Auto}, {"cpu", DeviceChoice::Cpu}, {"cuda", DeviceChoice::Cuda}};
constexpr std::pair<const char*, CommBackend> kBackend[] = {{"auto", CommBackend::Auto},
                                                            {"nccl", CommBackend::Nccl},
                                                            {"mpi", CommBackend::Mpi},
                                                            {"none", CommBackend::None}};
constexpr std::pair<const char*, GradCompression> kCompression[] = {
    {"none", GradCompression::None}, {"bf16", GradCompression::Bf16}};
constexpr std::pair<const char*, int> kOptimizer[] = {{"adam", 0}, {"adamw", 1}};

template <class E>
const char* name_of(NameTable<E> table, E value) {
  for (const auto& [name, v] : table)
    if (v == value) return name;
  throw_internal("enum value without a name", __FILE__, __LINE__);
}

// ---- where values came from ----------------------------------------------------------------------

// Overrides replace whole subtrees, so a value's origin is the latest override at its path or above
// it; otherwise the line in the file.
class Locator {
 public:
  explicit Locator(std::string origin) : origin_(std::move(origin)) {}

  const std::string& origin() const { return origin_; }

  void add_override(const std::string& path, const std::string& text) {
    for (auto it = overrides_.begin(); it != overrides_.end();)
      it = is_within(it->first, path) ? overrides_.erase(it) : std::next(it);
    overrides_[path] = text;
  }

  std::string where(const std::string& path, const YAML::Node& node) const {
    const std::string* best = nullptr;
    size_t best_len = 0;
    for (const auto& [p, text] : overrides_)
      if (is_within(path, p) && p.size() >= best_len) best = &text, best_len = p.size();
    if (best) return "override '" + *best + "'";
    const YAML::Mark mark = node.Mark();
    if (mark.is_null() || mark.line < 0) return origin_;
    return origin_ + ":" + std::to_string(mark.line + 1);
  }

 private:
  // True when `path` is `prefix` or lies below it (a child key or a list element).
  static bool is_within(const std::string& path, const std::string& prefix) {
    if (path.compare(0, prefix.size(), prefix) != 0) return false;
    return path.size() == prefix.size() || path[prefix.size()] == '.' || path[prefix.size()] == '[';
  }

  std::string origin_;
  std::map<std::string, std::string> overrides_;  // key path -> override text
};

// ---- one value and the checks on it -------------------------------------------------------------

struct Field {
  YAML::Node node;
  std::string path;   // e.g. "train.optimizer.lr" or "model.encoder[1]"
  std::string where;  // e.g. "cfg.yaml:7" or "override 'train.epochs=3'"
};

[[noreturn]] void fail(const Field& f, const std::string& what) {
  throw_bad_input("key '" + f.path + "' " + what + " (" + f.where + ")");
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return "null";
}

void check(const Field& f, bool ok, const std::string& rule) {
  if (!ok) fail(f, "must be " + rule + ", got " + f.node.Scalar());
}

// Names and paths; without control characters, which a path never needs and which the resolved
// config could not carry (yaml-cpp writes a carriage return as it is, and reads it back as a
// line break).
std::string text(const Field& f, bool allow_empty = false) {
  if (!f.node.IsScalar()) fail(f, "must be a string, got " + describe(f.node));
  const std::string& s = f.node.Scalar();
  if (s.empty() && !allow_empty) fail(f, "must not be empty");
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F)
      fail(f, "must not contain control characters, got '" + s + "'");
  return s;
}

// Decimal only: yaml-cpp's own conversion reads "010" as octal 8.
template <class T>
T integer(const Field& f) {
  const char* kind = std::is_signed_v<T> ? "an integer" : "a non-negative integer";
  if (!f.node.IsScalar()) fail(f, std::string("must be ") + kind + ", got " + describe(f.node));
  const std::string& s = f.node.Scalar();
  T value{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec == std::errc::result_out_of_range)
    fail(f, "must be between " + std::to_string(std::numeric_limits<T>::min()) + " and " +
                std::to_string(std::numeric_limits<T>::max()) + ", got " + s);
  if (ec != std::errc() || end != s.data() + s.size())
    fail(f, std::string("must be ") + kind + ", got '" + s + "'");
  return value;
}

double number(const Field& f) {
  if (!f.node.IsScalar()) fail(f, "must be a number, got " + describe(f.node));
  const std::string& s = f.node.Scalar();
  double value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(value))
    fail(f, "must be a finite number, got '" + s + "'");
  return value;
}

bool boolean(const Field& f) {
  if (f.node.IsScalar()) {
    const std::string& s = f.node.Scalar();
    if (s == "true") return true;
    if (s == "false") return false;
  }
  fail(f, "must be true or false, got " + describe(f.node));
  return false;
}

template <class T>
T integer_at_least(const Field& f, T lo) {
  const T value = integer<T>(f);
  check(f, value >= lo, ">= " + std::to_string(lo));
  return value;
}

// Sizes that become int element counts must stay far from overflow.
constexpr int kMaxWidth = 1 << 20;       // model.latent and every hidden width
constexpr size_t kMaxLayers = 64;        // hidden layers in model.encoder and in model.decoder
constexpr int kMaxBatchSize = 1 << 24;   // train.batch_size

template <class T>
T integer_between(const Field& f, T lo, T hi) {
  const T value = integer_at_least<T>(f, lo);
  check(f, value <= hi, "<= " + std::to_string(hi));
  return value;
}

double non_negative(const Field& f) {
  const double value = number(f);
  check(f, value >= 0, ">= 0");
  return value;
}

double positive(const Field& f) {
  const double value = number(f);
  check(f, value > 0, "> 0");
  return value;
}

// Values the step computes with in float32 must survive the conversion: not overflow to infinity,
// and not round to 0 or become subnormal (which devices flush to 0) unless they are 0.
std::string number_text(double v);

double float32(const Field& f, double value) {
  constexpr double kMax = std::numeric_limits<float>::max(),
                   kMin = std::numeric_limits<float>::min();
  check(f, value <= kMax, "<= " + number_text(kMax) + ", the largest float32");
  check(f, value == 0 || value >= kMin,
        ">= " + number_text(kMin) +
            ", the smallest normal float32 (smaller values round to 0 or lose precision)");
  return value;
}

double float32_positive(const Field& f) { return float32(f, positive(f)); }
double float32_non_negative(const Field& f) { return float32(f, non_negative(f)); }

template <class E>
E choice(const Field& f, NameTable<E> table) {
  std::string names;
  for (const auto& [name, v] : table) names += (names.empty() ? "" : "|") + std::string(name);
  if (f.node.IsScalar())
    for (const auto& [name, v] : table)
      if (f.node.Scalar() == name) return v;
  fail(f, "must be one of " + names + ", got " + describe(f.node));
}

// ---- maps: every key must be read, so anything left over is unknown --------------------------------

class MapReader {
 public:
  MapReader(const Field& f, const Locator& loc) : node_(f.node), path_(f.path), loc_(loc) {
    if (!node_.IsMap()) fail(f, "must be a map, got " + describe(node_));
  }

  // The value at `key`, if present; remembers that the key is known.
  std::optional<Field> take(const std::string& key) {
    known_.push_back(key);
    for (const auto& kv : node_) {
      if (!kv.first.IsScalar() || kv.first.Scalar() != key) continue;
      const std::string path = child_path(key);
      // An empty value has no line of its own (yaml-cpp marks the next token), so use the key's.
      const YAML::Node& located = kv.second.IsNull() ? kv.first : kv.second;
      return Field{kv.second, path, loc_.where(path, located)};
    }
    return std::nullopt;
  }

  std::optional<MapReader> section(const std::string& key) {
    if (auto f = take(key)) return MapReader(*f, loc_);
    return std::nullopt;
  }

  // Call after every take(): unknown and repeated keys are errors.
  void finish() const {
    std::vector<std::string> seen;
    for (const auto& kv : node_) {
      const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : describe(kv.first);
      const std::string path = child_path(key);
      const std::string where = loc_.where(path, kv.first);
      if (std::find(known_.begin(), known_.end(), key) == known_.end())
        throw_bad_input("unknown key '" + path + "' (" + where + ")");
      if (std::find(seen.begin(), seen.end(), key) != seen.end())
        throw_bad_input("duplicate key '" + path + "' (" + where + ")");
      seen.push_back(key);
    }
  }

 private:
  std::string child_path(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  YAML::Node node_;
  std::string path_;
  const Locator& loc_;
  std::vector<std::string> known_;
};

std::vector<Field> list(const Field& f, const Locator& loc) {
  if (!f.node.IsSequence()) fail(f, "must be a list, got " + describe(f.node));
  std::vector<Field> items;
  for (size_t i = 0; i < f.node.size(); ++i) {
    const std::string path = f.path + "[" + std::to_string(i) + "]";
    items.push_back(Field{f.node[i], path, loc.where(path, f.node[i])});
  }
  return items;
}

std::vector<int> widths(const Field& f, const Locator& loc) {
  const std::vector<Field> items = list(f, loc);
  if (items.size() > kMaxLayers)
    fail(f, "must have at most " + std::to_string(kMaxLayers) + " layers, got " +
                std::to_string(items.size()));
  std::vector<int> out;
  for (const Field& item : items) out.push_back(integer_between(item, 1, kMaxWidth));
  return out;
}

// ---- sections -----------------------------------------------------------------------------------

[[noreturn]] void missing_data_train(const Locator& loc) {
  throw_bad_input("missing required key 'data.train' (" + loc.origin() + ")");
}

// A missing required key is reported after the unknown keys of its map: a misspelt key is the
// usual cause of both, and its name is the more useful message.
DataConfig read_data(MapReader m, const Locator& loc) {
  DataConfig d;
  auto train = m.take("train");
  if (train) d.train = text(*train);
  // Empty, null (`test:`) or `data.test=` all mean no test set, hence no evaluation.
  if (auto f = m.take("test")) d.test = f->node.IsNull() ? "" : text(*f, /*allow_empty=*/true);
  if (auto f = m.take("binarize")) d.binarize = choice<Binarize>(*f, kBinarize);
  if (auto f = m.take("cache")) d.cache = choice<DataCache>(*f, kDataCache);
  m.finish();
  if (!train) missing_data_train(loc);
  return d;
}

constexpr int kMaxKernel = 1 << 10;  // model.conv.kernel, stride and padding

// `where` becomes the override that set a conv key, if one did: sizes that do not fit the data
// are reported there.
ConvSpec read_conv(MapReader m, const Locator& loc, ConvSpec c, std::string& where) {
  for (const char* key : {"channels", "kernel", "stride", "padding"})
    if (auto f = m.take(key); f && f->where.starts_with("override")) where = f->where;
  if (auto f = m.take("channels")) {
    c.channels = widths(*f, loc);
    if (c.channels.empty()) fail(*f, "must name at least one layer's channels");
  }
  if (auto f = m.take("kernel")) c.kernel = integer_between(*f, 1, kMaxKernel);
  if (auto f = m.take("stride")) c.stride = integer_between(*f, 1, kMaxKernel);
  if (auto f = m.take("padding")) c.padding = integer_between(*f, 0, kMaxKernel);
  m.finish();
  return c;
}

ModelConfig read_model(MapReader m, const Locator& loc) {
  ModelConfig c;
  if (auto f = m.take("type")) c.type = choice<ModelType>(*f, kModelType);
  if (auto f = m.take("conv")) {
    if (c.type != ModelType::Conv) fail(*f, "is for model.type conv only");
    c.conv_where = f->where;
    c.conv = read_conv(MapReader(*f, loc), loc, c.conv, c.conv_where);
  } else {
    c.conv_where = loc.origin();
  }
  if (auto f = m.take("encoder")) c.encoder = widths(*f, loc);
  if (auto f = m.take("latent")) c.latent = integer_between(*f, 1, kMaxWidth);
  if (auto f = m.take("decoder")) c.decoder = widths(*f, loc);
  if (auto f = m.take("activation")) c.activation = choice<Activation>(*f, kActivation);
  if (auto f = m.take("likelihood")) c.likelihood = choice<Likelihood>(*f, kLikelihood);
  m.finish();
  return c;
}

OptimizerConfig read_optimizer(MapReader m, const Locator& loc) {
  OptimizerConfig o;
  if (auto f = m.take("name")) o.name = name_of<int>(kOptimizer, choice<int>(*f, kOptimizer));
  if (auto f = m.take("lr")) o.lr = float32_positive(*f);
  if (auto f = m.take("betas")) {
    const std::vector<Field> b = list(*f, loc);
    if (b.size() != 2) fail(*f, "must be a list of two numbers, got " + std::to_string(b.size()));
    for (const Field& item : b) {
      const double beta = number(item);
      check(item, beta >= 0 && beta < 1, ">= 0 and < 1");
      // Adam divides by 1 - beta^t, which is 0 for a beta that float32 rounds up to 1.
      check(item, static_cast<float>(beta) < 1.0f,
            "<= " + number_text(std::nextafter(1.0f, 0.0f)) + ", the largest float32 below 1");
    }
    o.beta1 = number(b[0]);
    o.beta2 = number(b[1]);
  }
  if (auto f = m.take("eps")) o.eps = float32_positive(*f);
  if (auto f = m.take("weight_decay")) o.weight_decay = float32_non_negative(*f);
  m.finish();
  return o;
}

TrainConfig read_train(MapReader m, const Locator& loc) {
  TrainConfig t;
  if (auto f = m.take("epochs")) t.epochs = integer_at_least(*f, 1);
  if (auto f = m.take("batch_size")) t.batch_size = integer_between(*f, 1, kMaxBatchSize);
  if (auto s = m.section("optimizer")) t.optimizer = read_optimizer(*s, loc);
  if (auto f = m.take("grad_clip")) t.grad_clip = float32_non_negative(*f);
  if (auto f = m.take("beta")) t.beta = float32_non_negative(*f);
  if (auto f = m.take("kl_warmup_steps")) t.kl_warmup_steps = integer_at_least<int64_t>(*f, 0);
  if (auto f = m.take("threads")) t.threads = integer_at_least(*f, 0);
  if (auto f = m.take("max_steps")) t.max_steps = integer_at_least<int64_t>(*f, 0);
  if (auto f = m.take("cuda_graphs")) t.cuda_graphs = boolean(*f);
  m.finish();
  return t;
}

DistributedConfig read_distributed(MapReader m) {
  DistributedConfig d;
  if (auto f = m.take("backend")) d.backend = choice<CommBackend>(*f, kBackend);
  if (auto f = m.take("timeout_s")) d.timeout_s = positive(*f);
  if (auto f = m.take("shard_optimizer")) d.shard_optimizer = boolean(*f);
  if (auto f = m.take("grad_compression"))
    d.grad_compression = choice<GradCompression>(*f, kCompression);
  if (auto f = m.take("bucket_mb")) d.bucket_mb = non_negative(*f);
  if (auto f = m.take("shared_memory")) d.shared_memory = boolean(*f);
  m.finish();
  return d;
}

CheckpointConfig read_checkpoint(MapReader m) {
  CheckpointConfig c;
  if (auto f = m.take("every_steps")) c.every_steps = integer_at_least<int64_t>(*f, 0);
  if (auto f = m.take("keep")) c.keep = integer_at_least(*f, 1);
  m.finish();
  return c;
}

OutputConfig read_output(MapReader m) {
  OutputConfig o;
  if (auto f = m.take("dir")) o.dir = text(*f);
  if (auto f = m.take("log_every")) o.log_every = integer_at_least(*f, 1);
  m.finish();
  return o;
}

Config read_config(const YAML::Node& root, const Locator& loc) {
  MapReader m(Field{root, "", loc.where("", root)}, loc);
  Config c;
  if (auto f = m.take("name")) c.name = text(*f);
  if (auto f = m.take("seed")) c.seed = integer<uint64_t>(*f);
  auto data = m.section("data");
  if (data) c.data = read_data(*data, loc);
  if (auto s = m.section("model")) c.model = read_model(*s, loc);
  if (auto s = m.section("train")) c.train = read_train(*s, loc);
  if (auto f = m.take("device")) c.device = choice<DeviceChoice>(*f, kDevice);
  if (auto s = m.section("distributed")) c.distributed = read_distributed(*s);
  if (auto s = m.section("checkpoint")) c.checkpoint = read_checkpoint(*s);
  if (auto s = m.section("output")) c.output = read_output(*s);
  m.finish();
  if (!data) missing_data_train(loc);
  if (c.output.dir.empty()) c.output.dir = "runs/" + c.name;
  return c;
}

// ---- YAML text and overrides ------------------------------------------------------------------------

std::string one_line(std::string s) {
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

// Notes where a text's second YAML document starts (its `---` line).
class SecondDocument final : public YAML::EventHandler {
 public:
  std::optional<YAML::Mark> start;

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents_ == 1) first_ = mark;
    if (documents_ == 2) start = mark;
  }
  // The second document starts where the first did: the parser made no progress (invalid text).
  bool stuck() const { return start && start->pos == first_.pos; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  int documents_ = 0;
  YAML::Mark first_;
};

// `where` names the text in messages; `line_numbers` says whether its lines mean anything there.
// Only one document is read, so a second one (after `---`) would be ignored without a word.
YAML::Node load_yaml(const std::string& text, const std::string& where, bool line_numbers) {
  try {
    // Not YAML::LoadAll: on some invalid texts (a lone ",") yaml-cpp 0.7's parser never moves
    // past a token, and LoadAll collects empty documents until memory runs out. So the first
    // document is read alone, and a parser is asked for at most one more.
    YAML::Node first = YAML::Load(text);
    std::istringstream in(text);
    YAML::Parser parser(in);
    SecondDocument second;
    for (int i = 0; i < 2 && !second.start && parser.HandleNextDocument(second); ++i) {
    }
    if (second.start) {
      const bool has_line = line_numbers && !second.start->is_null();
      const std::string line = has_line ? ":" + std::to_string(second.start->line + 1) : "";
      if (second.stuck())
        throw_bad_input("YAML syntax error: the text cannot be parsed past this point (" + where +
                        line + ")");
      throw_bad_input("a second YAML document starts here; a config is one document (" + where +
                      line + ")");
    }
    return first;
  } catch (const YAML::ParserException& e) {
    const bool has_line = line_numbers && !e.mark.is_null();
    const std::string line = has_line ? ":" + std::to_string(e.mark.line + 1) : "";
    throw_bad_input("YAML syntax error: " + one_line(e.msg) + " (" + where + line + ")");
  }
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> keys;
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1)
    keys.push_back(path.substr(start, dot - start));
  keys.push_back(path.substr(start));
  return keys;
}

bool has_path(const YAML::Node& node, std::span<const std::string> keys) {
  if (keys.empty()) return true;
  if (!node.IsMap()) return false;
  const YAML::Node child = node[keys[0]];
  return child.IsDefined() && has_path(child, keys.subspan(1));
}

// The known key paths are exactly those of a fully resolved default config (of a conv model,
// so that its keys are there too).
bool is_known_key(std::span<const std::string> keys) {
  static const YAML::Node defaults = [] {
    Config c;
    c.model.type = ModelType::Conv;
    return YAML::Load(to_yaml(c));
  }();
  return has_path(defaults, keys);
}

// Sets `map`.keys = value, creating the maps on the way; a non-map on the way is the file's error.
void set_path(YAML::Node map, std::span<const std::string> keys, const std::string& walked,
              const YAML::Node& value, const Locator& loc) {
  if (keys.size() == 1) {
    map[keys[0]] = value;
    return;
  }
  if (!map[keys[0]].IsDefined()) map[keys[0]] = YAML::Node(YAML::NodeType::Map);
  YAML::Node child = map[keys[0]];
  const std::string path = walked.empty() ? keys[0] : walked + "." + keys[0];
  if (!child.IsMap())
    fail(Field{child, path, loc.where(path, child)}, "must be a map, got " + describe(child));
  set_path(child, keys.subspan(1), path, value, loc);
}

void apply_override(YAML::Node& root, const std::string& override_text, Locator& loc) {
  const size_t eq = override_text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw_bad_input("bad override, expected key=value (override '" + override_text + "')");
  const std::string path = override_text.substr(0, eq);
  const std::vector<std::string> keys = split_path(path);
  const std::string where = "override '" + override_text + "'";
  if (!is_known_key(keys)) throw_bad_input("unknown key '" + path + "' (" + where + ")");
  const YAML::Node value = load_yaml(override_text.substr(eq + 1), where, false);
  set_path(root, keys, "", value, loc);
  loc.add_override(path, override_text);
}

// Shortest text that reads back as exactly the same double.
std::string number_text(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  ELBO_CHECK(ec == std::errc(), "to_chars failed");
  return std::string(buf, end);
}

YAML::Emitter& emit_widths(YAML::Emitter& out, const std::vector<int>& widths) {
  out << YAML::Flow << YAML::BeginSeq;
  for (int w : widths) out << w;
  return out << YAML::EndSeq;
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& origin,
                    const std::vector<std::string>& overrides) {
  Locator loc(origin);
  YAML::Node root = load_yaml(yaml_text, origin, true);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);  // an empty file
  if (!root.IsMap())
    throw_bad_input("config must be a map, got " + describe(root) + " (" + loc.where("", root) + ")");
  for (const std::string& o : overrides) apply_override(root, o, loc);
  return read_config(root, loc);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  const auto cannot_read = [&path] {
    throw_bad_input(std::string("cannot read config file: ") + std::strerror(errno) + at(path));
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw_bad_input("cannot read config file: is a directory" + at(path));
  std::ifstream in(path);
  if (!in) cannot_read();
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) cannot_read();
  return parse_config(text.str(), path, overrides);
}

std::string to_yaml(const Config& c) {
  using YAML::BeginMap, YAML::EndMap, YAML::Key, YAML::Value;
  YAML::Emitter out;
  out << BeginMap;
  out << Key << "name" << Value << c.name;
  out << Key << "seed" << Value << c.seed;
  out << Key << "data" << Value << BeginMap;
  out << Key << "train" << Value << c.data.train;
  out << Key << "test" << Value << c.data.test;
  out << Key << "binarize" << Value << name_of<Binarize>(kBinarize, c.data.binarize);
  out << Key << "cache" << Value << name_of<DataCache>(kDataCache, c.data.cache);
  out << EndMap;
  out << Key << "model" << Value << BeginMap;
  out << Key << "type" << Value << name_of<ModelType>(kModelType, c.model.type);
  if (c.model.type == ModelType::Conv) {
    out << Key << "conv" << Value << BeginMap;
    emit_widths(out << Key << "channels" << Value, c.model.conv.channels);
    out << Key << "kernel" << Value << c.model.conv.kernel;
    out << Key << "stride" << Value << c.model.conv.stride;
    out << Key << "padding" << Value << c.model.conv.padding;
    out << EndMap;
  }
  emit_widths(out << Key << "encoder" << Value, c.model.encoder);
  out << Key << "latent" << Value << c.model.latent;
  emit_widths(out << Key << "decoder" << Value, c.model.decoder);
  out << Key << "activation" << Value << name_of<Activation>(kActivation, c.model.activation);
  out << Key << "likelihood" << Value << name_of<Likelihood>(kLikelihood, c.model.likelihood);
  out << EndMap;
  const TrainConfig& t = c.train;
  out << Key << "train" << Value << BeginMap;
  out << Key << "epochs" << Value << t.epochs;
  out << Key << "batch_size" << Value << t.batch_size;
  out << Key << "optimizer" << Value << BeginMap;
  out << Key << "name" << Value << t.optimizer.name;
  out << Key << "lr" << Value << number_text(t.optimizer.lr);
  out << Key << "betas" << Value << YAML::Flow << YAML::BeginSeq;
  out << number_text(t.optimizer.beta1) << number_text(t.optimizer.beta2) << YAML::EndSeq;
  out << Key << "eps" << Value << number_text(t.optimizer.eps);
  out << Key << "weight_decay" << Value << number_text(t.optimizer.weight_decay);
  out << EndMap;
  out << Key << "grad_clip" << Value << number_text(t.grad_clip);
  out << Key << "beta" << Value << number_text(t.beta);
  out << Key << "kl_warmup_steps" << Value << t.kl_warmup_steps;
  out << Key << "threads" << Value << t.threads;
  out << Key << "max_steps" << Value << t.max_steps;
  out << Key << "cuda_graphs" << Value << (t.cuda_graphs ? "true" : "false");
  out << EndMap;
  out << Key << "device" << Value << name_of<DeviceChoice>(kDevice, c.device);
  out << Key << "distributed" << Value << BeginMap;
  out << Key << "backend" << Value << name_of<CommBackend>(kBackend, c.distributed.backend);
  out << Key << "timeout_s" << Value << number_text(c.distributed.timeout_s);
  out << Key << "shard_optimizer" << Value << (c.distributed.shard_optimizer ? "true" : "false");
  out << Key << "grad_compression" << Value
      << name_of<GradCompression>(kCompression, c.distributed.grad_compression);
  out << Key << "bucket_mb" << Value << number_text(c.distributed.bucket_mb);
  out << Key << "shared_memory" << Value << (c.distributed.shared_memory ? "true" : "false");
  out << EndMap;
  out << Key << "checkpoint" << Value << BeginMap;
  out << Key << "every_steps" << Value << c.checkpoint.every_steps;
  out << Key << "keep" << Value << c.checkpoint.keep;
  out << EndMap;
  out << Key << "output" << Value << BeginMap;
  out << Key << "dir" << Value << c.output.dir;
  out << Key << "log_every" << Value << c.output.log_every;
  out << EndMap;
  out << EndMap;
  ELBO_CHECK(out.good(), "YAML emitter: " + out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

std::string config_value_text(const Config& c, const std::string& key_path) {
  YAML::Node node = YAML::Load(to_yaml(c));
  for (const std::string& key : split_path(key_path)) {
    ELBO_CHECK(node.IsMap() && node[key].IsDefined(), "no config key '" + key_path + "'");
    node = node[key];
  }
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

ModelSpec model_spec(const Config& c, int input_dim) {
  ModelSpec spec;
  spec.type = c.model.type;
  spec.conv = c.model.conv;
  spec.input_dim = input_dim;
  if (spec.type == ModelType::Conv)
    spec.width = input_dim;  // a 1 x 1 x D image until the shape is known
  spec.encoder = c.model.encoder;
  spec.latent = c.model.latent;
  spec.decoder = c.model.decoder;
  spec.activation = c.model.activation;
  spec.likelihood = c.model.likelihood;
  return spec;
}

ModelSpec model_spec(const Config& c, const std::vector<int64_t>& sample_shape,
                     const std::string& data) {
  int64_t features = 1;
  for (int64_t d : sample_shape) features *= d;
  auto shape_text = [&] {
    std::string t;
    for (int64_t d : sample_shape) t += (t.empty() ? "" : ", ") + std::to_string(d);
    return "[" + t + "]";
  };
  if (sample_shape.empty() || features <= 0 || features > kMaxWidth)
    throw_bad_input("samples of shape " + shape_text() + " cannot be modelled" + at(data));
  ModelSpec spec = model_spec(c, static_cast<int>(features));
  if (c.model.type == ModelType::Mlp) return spec;
  if (sample_shape.size() != 2 && sample_shape.size() != 3)
    throw_bad_input(
        "model.type conv needs images, /x of shape [N, H, W] or [N, C, H, W], got samples of "
        "shape " +
        shape_text() + at(data));
  const size_t n = sample_shape.size();
  spec.channels = n == 3 ? static_cast<int>(sample_shape[0]) : 1;
  spec.height = static_cast<int>(sample_shape[n - 2]);
  spec.width = static_cast<int>(sample_shape[n - 1]);
  const std::string why = conv_geometry_error(spec);
  if (!why.empty())
    throw_bad_input("key 'model.conv' does not fit images of shape " + shape_text() + ": " + why +
                    " (" + c.model.conv_where + ")");
  return spec;
}

AdamConfig adam_config(const Config& c) {
  const OptimizerConfig& o = c.train.optimizer;
  AdamConfig a;
  a.lr = static_cast<float>(o.lr);
  a.beta1 = static_cast<float>(o.beta1);
  a.beta2 = static_cast<float>(o.beta2);
  a.eps = static_cast<float>(o.eps);
  a.weight_decay = static_cast<float>(o.weight_decay);
  a.decoupled_weight_decay = o.name == "adamw";
  return a;
}

}  // namespace elbo
