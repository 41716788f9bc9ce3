// One fault of each kind the sanitized builds must catch, for sanitizers/self_test.sh: a heap
// overflow (AddressSanitizer), a signed overflow (UndefinedBehaviorSanitizer) or a leak
// (LeakSanitizer). Usage: sanitizer_faults overflow|ub|leak|none; exits 0 when the fault goes
// unnoticed.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

int main(int argc, char** argv) {
  const char* kind = argc > 1 ? argv[1] : "none";
  volatile int index = 4;  // volatile: the compiler cannot see the fault coming
  if (std::strcmp(kind, "overflow") == 0) {
    // Through memset, which only AddressSanitizer checks.
    int* a = new int[4];
    std::memset(a, 0, (index + 1) * sizeof(int));
    std::printf("%d\n", a[0]);
    delete[] a;
  } else if (std::strcmp(kind, "ub") == 0) {
    volatile int big = std::numeric_limits<int>::max();
    std::printf("%d\n", big + index);
  } else if (std::strcmp(kind, "leak") == 0) {
    int* volatile lost = new int[index];
    lost[0] = 1;
    lost = nullptr;
  } else if (std::strcmp(kind, "none") != 0) {
    std::fprintf(stderr, "usage: %s overflow|ub|leak|none\n", argv[0]);
    return 2;
  }
  return 0;
}
