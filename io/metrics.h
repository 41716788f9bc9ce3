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
