// The agent links the C++ runtime in (agent/CMakeLists.txt), and the runtime's exception
// allocator (libstdc++'s eh_alloc.o) would bring a constructor that mallocs its emergency pool in
// every process: after the agent's own constructor has placed the probes, since it comes later in
// the link, so that a probe on malloc counted one call the program never made. Nothing in the
// agent catches an exception (the engine reports errors as values): a throw there ends the
// process as an uncaught one would, and these, defined here, keep eh_alloc.o out of the link.
#include <unistd.h>

#include <cstddef>
#include <cstdlib>

namespace {

[[noreturn]] void thrown() {
  static const char kWhy[] =
      "usprobe agent: a C++ exception was thrown inside the agent (out of memory?); aborting\n";
  (void)!::write(2, kWhy, sizeof kWhy - 1);
  std::abort();
}

}  // namespace

extern "C" {
void *__cxa_allocate_exception(std::size_t) noexcept {
  thrown();
}
void __cxa_free_exception(void *) noexcept {
  thrown();
}
void *__cxa_allocate_dependent_exception() noexcept {
  thrown();
}
void __cxa_free_dependent_exception(void *) noexcept {
  thrown();
}
}
