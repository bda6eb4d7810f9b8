// A small program for the entry point and raw offset tests (entry_point_test.cc,
// raw_offset_test.cc). Built three ways: as is; stripped (entry_target_stripped: only .eh_frame
// knows where its functions are); and without unwind tables, stripped (entry_target_bare: nothing
// gives the bounds of entry_work). Its functions are not exported, so a stripped copy has no
// symbol for them.
//
//   entry_target N [ARGS...]   prints "argc ARGC", calls entry_work(0..N-1), prints "sum S"
#include <stdio.h>
#include <stdlib.h>

__attribute__((noipa)) long entry_work(long x) {
  return x * 7 + 3;
}

int main(int argc, char **argv) {
  printf("argc %d\n", argc);
  long n = argc > 1 ? atol(argv[1]) : 0, sum = 0;
  for (long i = 0; i < n; ++i) sum += entry_work(i);
  printf("sum %ld\n", sum);
  return 0;
}
