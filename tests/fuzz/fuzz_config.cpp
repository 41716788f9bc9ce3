// Fuzz target: the strict YAML config with overrides (parse_config). The input up to the first NUL
// byte is the YAML text; each further NUL-separated piece is a `key.path=value` override. A config
// that parses must round-trip, as config.h promises: its to_yaml parses to the same config.
#include <cstdint>
#include <string>
#include <vector>

#include "io/config.h"
#include "tests/fuzz/fuzz.h"

using elbo::fuzz::accepts;
using elbo::fuzz::bug;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> pieces;
  size_t start = 0;
  for (size_t nul; (nul = bytes.find('\0', start)) != std::string::npos; start = nul + 1)
    pieces.push_back(bytes.substr(start, nul - start));
  pieces.push_back(bytes.substr(start));
  const std::vector<std::string> overrides(pieces.begin() + 1, pieces.end());

  elbo::Config config;
  if (!accepts([&] { config = elbo::parse_config(pieces[0], "fuzz.yaml", overrides); })) return 0;
  std::string resolved;
  if (!accepts([&] { resolved = elbo::to_yaml(config); }))
    bug("to_yaml refused a config that parsed");
  elbo::Config again;
  if (!accepts([&] { again = elbo::parse_config(resolved, "resolved.yaml"); }))
    bug("the resolved config does not parse:\n" + resolved);
  if (elbo::to_yaml(again) != resolved)
    bug("the resolved config does not round-trip:\n" + resolved + "---\n" + elbo::to_yaml(again));
  return 0;
}
