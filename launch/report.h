// `<run dir>/report.html`: one self-contained page (no network, no other files) on a training
// run, rebuilt from the run directory at each epoch end: SVG curves of the losses from
// metrics.jsonl, the newest image grids of images/ as data: URIs, throughput and data wait per
// epoch, and the resolved config.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace elbo {

// The page for the run in `run_dir` (metrics.jsonl and images/ as they are now).
std::string report_html(const std::filesystem::path& run_dir, const std::string& config_yaml);
// Writes it to run_dir/report.html atomically.
void write_report(const std::filesystem::path& run_dir, const std::string& config_yaml);

// Base64 (RFC 4648, padded), for data: URIs.
std::string base64(std::string_view bytes);

}  // namespace elbo
