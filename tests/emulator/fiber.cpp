// Fibers (fiber.h): a per-OS-thread pool of mmap'ed stacks with guard pages, switched by a minimal
// x86-64 context switch (ucontext elsewhere), with the switches announced to AddressSanitizer.
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && !defined(ELBO_EMU_UCONTEXT)
#define ELBO_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if ELBO_EMU_ASM_SWITCH
// elbo_emu_switch(save, load): pushes the callee-saved registers and the MXCSR and x87 control
// words (the ABI makes them callee-saved too), stores rsp in *save, and pops the same from `load`.
// glibc's swapcontext would also save the signal mask, a system call on every switch.
// elbo_emu_trampoline starts a fresh stack: r12 = the fiber, r13 = its main function; its CFI
// marks the outermost frame so that unwinders stop there.
extern "C" void elbo_emu_switch(void** save, void* load);
extern "C" void elbo_emu_trampoline();
asm(R"(
  .pushsection .text
  .p2align 4
  .globl elbo_emu_switch
  .hidden elbo_emu_switch
  .type elbo_emu_switch, @function
elbo_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size elbo_emu_switch, .-elbo_emu_switch

  .p2align 4
  .globl elbo_emu_trampoline
  .hidden elbo_emu_trampoline
  .type elbo_emu_trampoline, @function
elbo_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size elbo_emu_trampoline, .-elbo_emu_trampoline
  .popsection
)");
#endif

namespace elbo_emu::fiber {

class Fiber {
 public:
#if ELBO_EMU_ASM_SWITCH
  void* sp = nullptr;  // saved while switched out
#else
  ucontext_t context;
#endif
  char* mapping = nullptr;
  size_t mapping_bytes = 0;
  char* stack = nullptr;  // above the guard page
  size_t stack_bytes = 0;
  Job job = nullptr;  // null while idle
  void* arg = nullptr;
  bool started = false;
  bool quit = false;
  void* fake_stack = nullptr;  // ASan's use-after-return frames, kept while switched out
};

namespace {

// ASan-instrumented frames are several times larger than plain ones; kernels are shallow.
constexpr size_t kStackBytes = 256 * 1024;
// Stack tops at the same address modulo the cache's way size would all compete for a few cache
// sets (a block of waiting threads touches every top at each barrier), so each stack's top moves
// down by its own multiple of a cache line, in up to 64 KiB more per stack.
constexpr size_t kColours = 1024;
constexpr size_t kColourBytes = 64 * 1024;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "elbo-emu: fiber: %s\n", what);
  std::abort();
}

void destroy(Fiber* f);

// The OS thread's side: its own context and stack (for ASan), the running fiber, the idle ones.
struct Pool {
#if ELBO_EMU_ASM_SWITCH
  void* main_sp = nullptr;
#else
  ucontext_t main_context;
#endif
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  void* main_fake_stack = nullptr;
  Fiber* current = nullptr;
  Fiber* switching_from = nullptr;  // the context that made the switch in progress
  std::vector<Fiber*> idle;
  ~Pool() {
    for (Fiber* f : idle) destroy(f);
  }
};
thread_local Pool pool;

void raw_switch(Fiber* from, Fiber* to) {
#if ELBO_EMU_ASM_SWITCH
  elbo_emu_switch(from != nullptr ? &from->sp : &pool.main_sp,
                  to != nullptr ? to->sp : pool.main_sp);
#else
  swapcontext(from != nullptr ? &from->context : &pool.main_context,
              to != nullptr ? &to->context : &pool.main_context);
#endif
}

// On arrival in a fiber: ASan restores its frames, and says whose stack we left; the OS thread's
// own stack is only known this way.
void arrived(void* fake_stack) {
#if defined(__SANITIZE_ADDRESS__)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
  if (pool.switching_from == nullptr) {
    pool.main_bottom = bottom;
    pool.main_size = size;
  }
#else
  (void)fake_stack;
#endif
}

// Leaves `from` (nullptr: the OS thread's stack) for `to`; `last`: `from` never runs again, so ASan
// may drop its frames.
void leave(Fiber* from, Fiber* to, bool last) {
#if defined(__SANITIZE_ADDRESS__)
  void** fake_stack_save = from != nullptr ? &from->fake_stack : &pool.main_fake_stack;
  __sanitizer_start_switch_fiber(last ? nullptr : fake_stack_save,
                                 to != nullptr ? to->stack : pool.main_bottom,
                                 to != nullptr ? to->stack_bytes : pool.main_size);
#else
  (void)last;
#endif
  pool.switching_from = from;
  pool.current = to;
  raw_switch(from, to);
}

// A fiber runs one job, parks in the pool until given the next, and so on.
[[noreturn]] void fiber_main(Fiber* f) {
  arrived(nullptr);
  f->started = true;
  for (;;) {
    Fiber* next = f->job(f->arg);
    f->job = nullptr;
    pool.idle.push_back(f);
    switch_to(next);
    if (f->quit) break;
  }
  leave(f, nullptr, true);
  die("a retired fiber was resumed");
}

#if !ELBO_EMU_ASM_SWITCH
void ucontext_main(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void prepare(Fiber* f) {
#if ELBO_EMU_ASM_SWITCH
  // The frame elbo_emu_switch pops: control words, r15, r14, r13, r12, rbx, rbp, return address,
  // placed so that the trampoline starts with rsp 16-byte aligned, as at a call.
  const uintptr_t top = reinterpret_cast<uintptr_t>(f->stack + f->stack_bytes) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uint64_t*>(top) - 11;
  std::memset(frame, 0, 11 * sizeof(uint64_t));
  uint32_t mxcsr = 0;
  uint16_t fpu_control = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  std::memcpy(&frame[0], &fpu_control, sizeof fpu_control);
  std::memcpy(&frame[1], &mxcsr, sizeof mxcsr);
  frame[4] = reinterpret_cast<uint64_t>(&fiber_main);  // r13
  frame[5] = reinterpret_cast<uint64_t>(f);            // r12
  frame[8] = reinterpret_cast<uint64_t>(&elbo_emu_trampoline);
  f->sp = frame;
#else
  if (getcontext(&f->context) != 0) die("getcontext failed");
  f->context.uc_stack.ss_sp = f->stack;
  f->context.uc_stack.ss_size = f->stack_bytes;
  f->context.uc_link = nullptr;
  const auto p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->context, reinterpret_cast<void (*)()>(&ucontext_main), 2,
              static_cast<unsigned>(p >> 32), static_cast<unsigned>(p & 0xffffffffu));
#endif
}

Fiber* create() {
  static thread_local size_t created = 0;
  const size_t colour = created++ % kColours;
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  auto* f = new Fiber;
  f->mapping_bytes = page + kStackBytes + kColourBytes;
  void* m = mmap(nullptr, f->mapping_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) die("cannot map a fiber stack");
  // The guard page turns a stack overflow into a fault instead of a write into another stack.
  if (mprotect(m, page, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
  f->mapping = static_cast<char*>(m);
  f->stack = f->mapping + page;
  f->stack_bytes = kStackBytes + kColourBytes - colour * 64;  // the top moves, not the bottom
  prepare(f);
  return f;
}

void destroy(Fiber* f) {
  if (f->started) {  // let it leave for the last time, so ASan releases its fake stack
    f->quit = true;
    switch_to(f);
  }
  munmap(f->mapping, f->mapping_bytes);
  delete f;
}

}  // namespace

Fiber* acquire(Job job, void* arg) {
  Fiber* f = nullptr;
  if (pool.idle.empty()) {
    f = create();
  } else {
    f = pool.idle.back();
    pool.idle.pop_back();
  }
  f->job = job;
  f->arg = arg;
  return f;
}

void switch_to(Fiber* to) {
  Fiber* const from = pool.current;
  if (to == from) die("a fiber switched to itself");
  if (to != nullptr && to->job == nullptr && !to->quit) die("switch to an idle fiber");
  leave(from, to, false);
  if (from != nullptr) {
    arrived(from->fake_stack);
  } else {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(pool.main_fake_stack, nullptr, nullptr);
#endif
  }
}

Fiber* current() { return pool.current; }

}  // namespace elbo_emu::fiber
