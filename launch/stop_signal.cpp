// Signal handlers that only set a flag; the training loop polls it once per step.
#include "launch/stop_signal.h"

#include <csignal>
#include <cstdlib>

namespace elbo {
namespace {

volatile std::sig_atomic_t g_stop = 0;

// The first signal asks for a clean stop; a second one (an impatient user) ends the process now.
// stdout is line-buffered (main), so what was printed is not lost with it.
extern "C" void on_stop_signal(int sig) {
  if (g_stop) std::_Exit(128 + sig);
  g_stop = 1;
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // reads and writes in progress carry on
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

bool stop_requested() { return g_stop != 0; }

}  // namespace elbo
