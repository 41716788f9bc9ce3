// Fibers for the kernel executor (kernel.cpp): cooperative stacks that switch only when the code on
// them asks, so a CUDA thread can wait at __syncthreads while the rest of its block runs.
#pragma once

namespace elbo_emu::fiber {

class Fiber;
// Runs on a fiber; returns where to switch when it is done (nullptr: the OS thread's own stack),
// and the fiber goes back to the pool. It must not let an exception escape.
using Job = Fiber* (*)(void* arg);

// An idle fiber from the calling OS thread's pool (stacks are reused), set to run job(arg) when
// first switched to. At most as many exist as were ever busy at once.
Fiber* acquire(Job job, void* arg);

// Switches from the running context (a fiber, or the OS thread's own stack when outside any) to
// `to` (nullptr: the OS thread's own stack); returns when something switches back. Fibers hand
// over to each other directly, so one switch, not two, passes control from one to the next.
void switch_to(Fiber* to);

// The running fiber, nullptr outside any.
Fiber* current();

}  // namespace elbo_emu::fiber
