// AddressSanitizer poisoning for the emulator's memory that code may not touch (device memory
// outside device work, shared memory gaps); no-ops in builds without AddressSanitizer.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ELBO_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define ELBO_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define ELBO_EMU_POISON(p, n) ((void)(p), (void)(n))
#define ELBO_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
