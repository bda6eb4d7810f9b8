// The library tests/e2e/dlopen_target.c loads with dlopen after it started (follow_test.cc): the
// command is not linked with it, so its probes wait for the dlopen.
#define DLOPEN_PROBED __attribute__((noipa, used, visibility("default")))

volatile long dlopen_lib_sink;

DLOPEN_PROBED int dlopen_lib_work(int i) {
  dlopen_lib_sink += i;
  return i + 1;
}

// Never called: a second probe on the library that must stay at 0 hits.
DLOPEN_PROBED void dlopen_lib_idle(void) {
  dlopen_lib_sink = 0;
}
