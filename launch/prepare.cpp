// `elbo prepare --from idx`: IDX images (and labels) to uint8 HDF5 shards.
#include "launch/prepare.h"

#include <cstdio>

#include "core/error.h"
#include "io/idx.h"

namespace elbo {

int run_prepare(const PrepareOptions& o) {
  if (o.from != "idx") throw_bad_input("unknown --from '" + o.from + "' (supported: idx)");
  const PrepareResult r = prepare_from_idx(o.images, o.labels, o.out, o.shards);
  std::printf("elbo: wrote %lld samples into %zu shard(s) under %s\n",
              static_cast<long long>(r.rows), r.shard_paths.size(), o.out.c_str());
  return 0;
}

}  // namespace elbo
