// The fault fixup: SIGSEGV and SIGBUS handlers that turn a fault at the string copy's load
// (safe_copy.h) into the copy's failure return. Every other fault goes where it would have gone
// without usprobe: to the handler installed before ours, or to the default action.
#pragma once

#include <expected>
#include <string>

namespace usprobe::agent {

// Installs the handlers (once per process image). Not for the hit path.
std::expected<void, std::string> install_fault_fixup();

}  // namespace usprobe::agent
