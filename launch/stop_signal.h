// SIGTERM / SIGINT ask training to stop at the next step boundary (with a checkpoint) instead of
// killing the process mid-step.
#pragma once

namespace elbo {

void install_stop_signal_handlers();
bool stop_requested();

}  // namespace elbo
