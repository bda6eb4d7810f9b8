// A C++ program whose exceptions go through a landing pad that a probe's 5-byte window would
// cover (tests/e2e/landing_pad_test.cc): lp_run catches what lp_step throws for odd inputs.
//
//   landing_pad_target N          calls lp_run N times, then prints "caught C sum S"
//   landing_pad_target nothrow N  N times operator new(16, nothrow) and operator new(huge,
//                                 nothrow), which catches the bad_alloc of operator new(huge) in
//                                 libstdc++; prints "ok N null N"
//
// Built with -fno-reorder-blocks-and-partition so that the landing pad stays in lp_run, right after
// its return, instead of moving to a separate lp_run.cold part.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

static int g_caught = 0;

extern "C" __attribute__((noinline)) int lp_step(int x) {
  if (x < 0) throw x;
  return x;
}

extern "C" __attribute__((noinline)) int lp_run(int x) {
  try {
    return lp_step(x) * 3;
  } catch (int e) {
    ++g_caught;
    return e - 1;
  }
}

int nothrow_news(int n) {
  int ok = 0, null = 0;
  for (int i = 0; i < n; ++i) {
    if (void *p = ::operator new(16, std::nothrow)) {
      ++ok;
      ::operator delete(p);
    }
    if (!::operator new(SIZE_MAX / 2, std::nothrow)) ++null;
  }
  std::printf("ok %d null %d\n", ok, null);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 2 && std::strcmp(argv[1], "nothrow") == 0) return nothrow_news(std::atoi(argv[2]));
  int n = argc > 1 ? std::atoi(argv[1]) : 10;
  long sum = 0;
  for (int i = 1; i <= n; ++i) sum += lp_run(i % 2 ? -i : i);
  std::printf("caught %d sum %ld\n", g_caught, sum);
  return 0;
}
