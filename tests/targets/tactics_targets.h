// The functions of tactics_targets.S (what each computes, and why its shape matters, is said
// there), linked into the test executables that probe them as "exe:NAME".
#pragma once

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
