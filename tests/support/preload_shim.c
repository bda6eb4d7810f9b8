// A library that a user preloads into a program (LD_PRELOAD) and that links libusprobe: the dynamic
// linker then puts libusprobe after libc in the search order, where dlsym(RTLD_NEXT) finds nothing
// of libc's (tests/api/preload_test.cc). It counts the returns of malloc and, at exit, says how
// many on stderr: "shim: malloc returned N times", or why it could not attach.
#include <stdio.h>

#include "usprobe/usprobe.h"

static usprobe_link *g_link;

__attribute__((constructor)) static void start(void) {
  if (usprobe_attach("uretprobe:libc.so.6:malloc", NULL, &g_link) != 0)
    fprintf(stderr, "shim: %s\n", usprobe_last_error());
}

__attribute__((destructor)) static void stop(void) {
  if (g_link)
    fprintf(stderr, "shim: malloc returned %llu times\n",
            (unsigned long long)usprobe_link_return_hits(g_link));
}
