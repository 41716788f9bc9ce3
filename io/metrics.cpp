// JSON-lines metrics writer.
#include "io/metrics.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace elbo {
namespace {

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace

void JsonLine::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  // Appended piecewise: `"\"" + s + ...` trips a false -Wrestrict in GCC 12 (bug 105651).
  body_ += '"';
  body_ += json_escape(k);
  body_ += "\": ";
}

JsonLine& JsonLine::add(const std::string& k, double v) {
  key(k);
  if (!std::isfinite(v)) {
    body_ += "null";
  } else {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    body_ += buf;
  }
  return *this;
}

JsonLine& JsonLine::add_json(const std::string& k, const std::string& json) {
  key(k);
  body_ += json;
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, int64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += '"';
  body_ += json_escape(v);
  body_ += '"';
  return *this;
}

MetricsWriter::MetricsWriter(const std::string& path) : out_(path, std::ios::app), path_(path) {
  if (!out_) throw_bad_input("cannot open the metrics file for writing (" + path + ")");
}

void MetricsWriter::write(const JsonLine& line) {
  if (!out_.is_open()) return;  // ranks other than 0 hold a closed writer
  out_ << line.str() << '\n';
  out_.flush();
  if (!out_) throw_internal("writing '" + path_ + "' failed", __FILE__, __LINE__);
}

}  // namespace elbo
