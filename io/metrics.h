// Metrics as JSON lines: one object per line, appended and flushed as training goes, so a crash
// loses at most the line being written.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace elbo {

// Builds one JSON object; numbers that are not finite are written as null (JSON has no NaN).
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double v);
  JsonLine& add(const std::string& key, int64_t v);
  JsonLine& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  JsonLine& add(const std::string& key, const std::string& v);
  JsonLine& add(const std::string& key, bool v) { return add_json(key, v ? "true" : "false"); }
  JsonLine& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  // A value that is JSON already: an object or an array built with JsonLine, or null.
  JsonLine& add_json(const std::string& key, const std::string& json);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

class MetricsWriter {
 public:
  MetricsWriter() = default;                         // writes nothing
  explicit MetricsWriter(const std::string& path);  // appends
  MetricsWriter(MetricsWriter&&) = default;
  MetricsWriter& operator=(MetricsWriter&&) = default;
  void write(const JsonLine& line);

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace elbo
