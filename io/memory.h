// How much memory the machine can still give, for the checks that refuse a model, a data cache
// or a checkpoint too large for it before allocating (instead of std::bad_alloc or the OOM killer).
#pragma once

#include <string>

namespace elbo {

// MemAvailable from /proc/meminfo; without it, the free physical pages (sysconf).
double available_memory_bytes();

// "1.5 GiB", "12 MiB", "512 bytes": a size in messages.
std::string bytes_text(double bytes);

}  // namespace elbo
