// Fuzz target: IDX import (read_idx), raw and gzip. The input is read as a file. Unless it is gzip
// data itself, it must hold what the format says when it is accepted (the header's dimensions,
// then exactly their product of bytes), a well-formed file small enough to read must be accepted,
// and its gzip compression must read the same.
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/idx.h"
#include "tests/fuzz/fuzz.h"

using elbo::fuzz::accepts;
using elbo::fuzz::BytesFile;
using elbo::fuzz::check;

namespace {

std::vector<uint8_t> gzip(const uint8_t* data, size_t size) {
  z_stream z{};
  check(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK, "deflateInit2");
  std::vector<uint8_t> out(deflateBound(&z, size) + 32);
  z.next_in = const_cast<uint8_t*>(data);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  check(deflate(&z, Z_FINISH) == Z_STREAM_END, "deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// What the IDX format makes of the bytes (unsigned-byte arrays only), independently of read_idx:
// false when they are not such a file.
bool parse_idx(const uint8_t* data, size_t size, elbo::IdxArray& a) {
  if (size < 4 || data[0] != 0 || data[1] != 0 || data[2] != 0x08 || data[3] == 0) return false;
  const size_t rank = data[3];
  if (size < 4 + 4 * rank) return false;
  uint64_t count = 1;
  for (size_t d = 0; d < rank; ++d) {
    const uint8_t* b = data + 4 + 4 * d;
    const uint64_t dim = uint64_t{b[0]} << 24 | uint64_t{b[1]} << 16 | uint64_t{b[2]} << 8 | b[3];
    a.shape.push_back(static_cast<int64_t>(dim));
    count = dim == 0 ? 0 : (count > size / dim ? size + 1 : count * dim);  // saturates past size
  }
  if (count != size - 4 - 4 * rank) return false;
  a.data.assign(data + 4 + 4 * rank, data + size);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  elbo::IdxArray got;
  bool accepted = false;
  {
    const BytesFile file(data, size);
    accepted = accepts([&] { got = elbo::read_idx(file.path()); });
  }
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) return 0;  // gzip data: read as such

  elbo::IdxArray want;
  const bool valid = parse_idx(data, size, want);
  if (accepted) {
    check(valid, "read_idx accepted bytes that are not an IDX file");
    check(got.shape == want.shape && got.data == want.data, "read_idx misread the file");
  } else {
    // A zero dimension may follow dimensions whose product read_idx finds implausibly large.
    check(!valid || want.data.empty(), "read_idx refused a well-formed IDX file");
  }

  const std::vector<uint8_t> gz = gzip(data, size);
  const BytesFile file(gz.data(), gz.size());
  elbo::IdxArray unzipped;
  const bool gz_accepted = accepts([&] { unzipped = elbo::read_idx(file.path()); });
  check(gz_accepted == accepted, "the gzipped file is read differently");
  if (accepted)
    check(unzipped.shape == got.shape && unzipped.data == got.data,
          "the gzipped file reads different contents");
  return 0;
}
