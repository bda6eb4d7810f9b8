/* The probe with a semaphore (see usdt_targets.h), in a file of its own: with
   _SDT_HAS_SEMAPHORES, every probe of a file has one. */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

#include "targets/usdt_targets.h"

/* <sys/sdt.h> names it PROVIDER_NAME_semaphore; tracers find it through the note. */
__attribute__((section(".probes"))) unsigned short usprobe_test_gated_semaphore = 0;

int ust_fire_gated(long x) {
  if (!__builtin_expect(usprobe_test_gated_semaphore, 0)) return 0;
  STAP_PROBE1(usprobe_test, gated, x);
  return 1;
}
