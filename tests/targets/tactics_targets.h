// The functions of tactics_targets.S (what each computes, and why its shape matters, is said
// there), linked into the test executables that probe them as "exe:NAME".
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

extern "C" {
long tac_loop_head(long n);
int tac_switch(long x);
int tac_tiny();
int tac_nop_jmp(int x);
extern const char tac_switch_case0[], tac_switch_case1[], tac_switch_tail[], tac_nop_jmp_site[];
}

// What tac_switch(x) returns.
inline long switch_value(long x) {
  switch (x) {
    case 0:
      return 10 + 1;
    case 1:
      return x + 20 + 1;
    case 2:
      return 2 * x + 1;
    case 3:
      return 7 + 1;
    default:
      return -1 + 1;
  }
}

// The location of a label inside tac_switch ("exe:tac_switch+0x..."), and of tac_nop_jmp's site.
inline std::string offset_of(const char *label) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "exe:tac_switch+%#" PRIxPTR,
                reinterpret_cast<uintptr_t>(label) - reinterpret_cast<uintptr_t>(&tac_switch));
  return buf;
}
inline std::string nop_jmp_site() {
  char buf[64];
  std::snprintf(
      buf, sizeof buf, "exe:tac_nop_jmp+%#" PRIxPTR,
      reinterpret_cast<uintptr_t>(tac_nop_jmp_site) - reinterpret_cast<uintptr_t>(&tac_nop_jmp));
  return buf;
}
