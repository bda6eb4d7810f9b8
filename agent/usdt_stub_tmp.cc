// TEMPORARY weak stand-ins for the engine's USDT argument calls (see usdt_stub_tmp.h), so that the
// agent links before they land. Deleted when main has them.
#include "agent/usdt_stub_tmp.h"

extern "C" {
__attribute__((weak)) uint64_t usprobe_usdt_arg(const usprobe_hit *, unsigned) {
  return 0;
}
__attribute__((weak)) int usprobe_usdt_arg_count(const usprobe_hit *) {
  return -1;
}
}
