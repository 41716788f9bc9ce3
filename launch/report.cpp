// The training report (launch/report.h). It is rebuilt from the files of the run directory, not
// from the training loop's memory, so that a resumed run's page covers the whole run.
#include "launch/report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "io/files.h"

namespace elbo {
namespace fs = std::filesystem;
namespace {

// One number of a metrics line as io/metrics.cpp writes it (`"key": value`); nullopt when the
// key is missing or null.
std::optional<double> number(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  const size_t at = line.find(k);
  if (at == std::string::npos) return std::nullopt;
  const char* p = line.c_str() + at + k.size();
  char* end = nullptr;
  const double v = std::strtod(p, &end);
  if (end == p || !std::isfinite(v)) return std::nullopt;
  return v;
}

bool is_type(const std::string& line, const std::string& type) {
  return line.find("\"type\": \"" + type + "\"") != std::string::npos;
}

std::string escape_html(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (x, y)
};

// An SVG line chart: axes with their ranges, one polyline (and dots) per series, a legend.
std::string svg_chart(const std::string& title, const std::string& x_label,
                      const std::vector<Series>& series) {
  constexpr double W = 460, H = 260, left = 56, right = 12, top = 28, bottom = 36;
  double x0 = std::numeric_limits<double>::max(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const Series& s : series)
    for (const auto& [x, y] : s.points) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  std::ostringstream o;
  o << "<svg width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H
    << "\" role=\"img\"><title>" << escape_html(title)
    << "</title><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>"
    << "<text x=\"" << left << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">"
    << escape_html(title) << "</text>";
  if (x0 > x1) return o.str() + "<text x=\"60\" y=\"130\">no records yet</text></svg>";
  if (x1 == x0) x0 -= 1, x1 += 1;
  if (y1 == y0) y0 -= 1, y1 += 1;
  const double pad = 0.05 * (y1 - y0);
  y0 = y0 >= 0 ? std::max(0.0, y0 - pad) : y0 - pad;  // losses and KL are not negative
  y1 += pad;
  const auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (W - left - right); };
  const auto py = [&](double y) { return H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom); };
  o << "<g stroke=\"#888\" stroke-width=\"1\"><line x1=\"" << left << "\" y1=\"" << H - bottom
    << "\" x2=\"" << W - right << "\" y2=\"" << H - bottom << "\"/><line x1=\"" << left
    << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << H - bottom << "\"/></g>"
    << "<g font-size=\"11\" fill=\"#444\"><text x=\"" << left << "\" y=\"" << H - bottom + 14
    << "\">" << fixed(x0, 0) << "</text><text x=\"" << W - right << "\" y=\"" << H - bottom + 14
    << "\" text-anchor=\"end\">" << fixed(x1, 0) << "</text><text x=\"" << (left + W - right) / 2
    << "\" y=\"" << H - 6 << "\" text-anchor=\"middle\">" << escape_html(x_label)
    << "</text><text x=\"" << left - 4 << "\" y=\"" << top + 4 << "\" text-anchor=\"end\">"
    << fixed(y1, 1) << "</text><text x=\"" << left - 4 << "\" y=\"" << H - bottom
    << "\" text-anchor=\"end\">" << fixed(y0, 1) << "</text></g>";
  double legend_x = left + 8;
  for (const Series& s : series) {
    if (s.points.empty()) continue;
    o << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"2.5\" points=\"";
    for (const auto& [x, y] : s.points) o << fixed(px(x), 1) << "," << fixed(py(y), 1) << " ";
    o << "\"/>";
    for (const auto& [x, y] : s.points)
      if (s.points.size() <= 50)
        o << "<circle cx=\"" << fixed(px(x), 1) << "\" cy=\"" << fixed(py(y), 1)
          << "\" r=\"3.5\" fill=\"" << s.color << "\"/>";
    o << "<rect x=\"" << legend_x << "\" y=\"" << top + 4 << "\" width=\"12\" height=\"4\" fill=\""
      << s.color << "\"/><text x=\"" << legend_x + 16 << "\" y=\"" << top + 10
      << "\" font-size=\"11\">" << escape_html(s.name) << "</text>";
    legend_x += 24 + 6.5 * static_cast<double>(s.name.size());
  }
  return o.str() + "</svg>";
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The newest images/epoch-NNN-<kind>.png, or "" when there is none.
fs::path newest_image(const fs::path& dir, const std::string& kind) {
  fs::path best;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("epoch-", 0) == 0 && name.size() > kind.size() + 5 &&
        name.compare(name.size() - kind.size() - 5, std::string::npos, "-" + kind + ".png") == 0 &&
        (best.empty() || name > best.filename().string()))
      best = e.path();
  }
  return best;
}

}  // namespace

std::string base64(std::string_view bytes) {
  static const char kDigits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t v = 0;
    for (size_t k = 0; k < 3; ++k)
      v = v << 8 | (k < n ? static_cast<unsigned char>(bytes[i + k]) : 0u);
    for (size_t k = 0; k < 4; ++k) out += k <= n ? kDigits[(v >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

std::string report_html(const fs::path& run_dir, const std::string& config_yaml) {
  Series loss{"loss", "#1f77b4", {}}, recon{"recon", "#ff7f0e", {}}, kl{"kl", "#2ca02c", {}};
  Series train{"train loss", "#1f77b4", {}}, test{"test -ELBO", "#d62728", {}},
      test_recon{"test recon", "#ff7f0e", {}}, test_kl{"test kl", "#2ca02c", {}};
  struct EpochRow {
    double epoch, step, samples_per_s, epoch_s, wait = 0;
  };
  std::vector<EpochRow> epochs;
  std::map<int64_t, double> wait_by_epoch;  // data wait (slowest rank) summed over log points
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const std::optional<double> step = number(line, "step"), epoch = number(line, "epoch");
    if (!step || !epoch) continue;
    if (is_type(line, "step")) {
      if (auto v = number(line, "loss")) loss.points.emplace_back(*step, *v);
      if (auto v = number(line, "recon")) recon.points.emplace_back(*step, *v);
      if (auto v = number(line, "kl")) kl.points.emplace_back(*step, *v);
      wait_by_epoch[static_cast<int64_t>(*epoch)] += number(line, "data_wait_s_max").value_or(0);
    } else if (is_type(line, "epoch")) {
      if (auto v = number(line, "train_loss")) train.points.emplace_back(*epoch, *v);
      if (auto v = number(line, "test_neg_elbo")) test.points.emplace_back(*epoch, *v);
      if (auto v = number(line, "test_recon")) test_recon.points.emplace_back(*epoch, *v);
      if (auto v = number(line, "test_kl")) test_kl.points.emplace_back(*epoch, *v);
      epochs.push_back({*epoch, *step, number(line, "samples_per_s").value_or(0),
                        number(line, "epoch_s").value_or(0)});
    }
  }
  for (EpochRow& r : epochs) r.wait = wait_by_epoch[static_cast<int64_t>(r.epoch)];

  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>elbo run "
    << escape_html(run_dir.filename().string()) << "</title><style>"
    << "body{font-family:sans-serif;margin:16px;color:#222;background:#fff}"
    << "h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:14px 0 6px}"
    << ".row{display:flex;gap:16px;flex-wrap:wrap}"
    << "figure{margin:0}figcaption{font-size:13px;margin-bottom:4px}"
    << "img{image-rendering:pixelated;border:3px solid;display:block}"
    << "#reconstructions{border-color:#9467bd}#samples{border-color:#17becf}"
    << "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px;"
    << "text-align:right}pre{font-size:12px;background:#f4f4f4;padding:8px}"
    << "</style></head><body>\n<h1>elbo run " << escape_html(run_dir.string()) << "</h1>\n";
  o << "<div class=\"row\">" << svg_chart("Training loss per sample", "step", {loss, recon, kl})
    << svg_chart("Per epoch", "epoch", {train, test, test_recon, test_kl}) << "</div>\n";
  o << "<h2>Images of the newest epoch</h2><div class=\"row\">";
  for (const char* kind : {"reconstructions", "samples"}) {
    const fs::path p = newest_image(run_dir / "images", kind);
    if (p.empty()) continue;
    // Shown at twice their size (from the PNG header's width and height): a 28x28 tile is too
    // small to judge at 1:1.
    const std::string png = read_all(p);
    if (png.size() < 24) continue;
    const auto header_int = [&png](size_t at) {
      uint32_t v = 0;
      for (size_t k = 0; k < 4; ++k) v = v << 8 | static_cast<unsigned char>(png[at + k]);
      return v;
    };
    o << "<figure><figcaption>" << kind << " (" << escape_html(p.filename().string())
      << ")</figcaption><img id=\"" << kind << "\" alt=\"" << kind << "\" width=\""
      << 2 * header_int(16) << "\" height=\"" << 2 * header_int(20)
      << "\" src=\"data:image/png;base64," << base64(png) << "\"></figure>";
  }
  o << "</div>\n<h2>Throughput</h2><table><tr><th>epoch</th><th>step</th><th>samples/s</th>"
    << "<th>epoch s</th><th>data wait s</th></tr>";
  for (const EpochRow& r : epochs)
    o << "<tr><td>" << fixed(r.epoch, 0) << "</td><td>" << fixed(r.step, 0) << "</td><td>"
      << fixed(r.samples_per_s, 0) << "</td><td>" << fixed(r.epoch_s, 2) << "</td><td>"
      << fixed(r.wait, 3) << "</td></tr>";
  o << "</table>\n<h2>Config</h2><pre>" << escape_html(config_yaml) << "</pre>\n</body></html>\n";
  return o.str();
}

void write_report(const fs::path& run_dir, const std::string& config_yaml) {
  write_file_atomically((run_dir / "report.html").string(), report_html(run_dir, config_yaml),
                        "the report");
}

}  // namespace elbo
