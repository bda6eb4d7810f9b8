// dispatch: the C++ function every trampoline calls. It runs the consumers of one probe.
#pragma once

#include "core/arch.h"

namespace usprobe {
struct Probe;
}

// Called by trampolines with the saved registers and the site's probe (arch ABI: first two args).
extern "C" void usprobe_dispatch(usprobe::arch::Regs *regs, const usprobe::Probe *probe);
