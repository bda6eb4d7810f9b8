/* The AttachBlock: what the CLI's injector (inject.cc) and the bootstrap it runs in the target
 * (bootstrap.c) share. The CLI writes the block into a page it has the target map, starts the
 * bootstrap on a thread of the target's own (pthread_create) and reads the answer back through
 * /proc/PID/mem. The bootstrap has no data and no relocations of its own: every function it calls
 * and every string it passes is in here. Plain C, fixed-width fields, so both compilers agree on
 * the layout; the CLI treats everything the target wrote here as untrusted. */
#ifndef USPROBE_TARGET_ATTACH_BLOCK_H
#define USPROBE_TARGET_ATTACH_BLOCK_H

#include <stdint.h>

#define USPROBE_ATTACH_PATH_SIZE 64
#define USPROBE_ATTACH_SYMBOL_SIZE 32
#define USPROBE_ATTACH_MESSAGE_SIZE 512

/* Where the bootstrap stopped (AttachBlock.stage). */
#define USPROBE_STAGE_DLOPEN 1 /* dlopen() failed: message holds dlerror() */
#define USPROBE_STAGE_DLSYM 2  /* the agent has no usprobe_agent_attach: message holds dlerror() */
#define USPROBE_STAGE_ATTACH                                           \
  3 /* usprobe_agent_attach returned `result` (0, or -errno + message) \
     */

struct AttachBlock {
  /* Filled in by the CLI: addresses in the target. `attach` is the loaded agent's
   * usprobe_agent_attach when the agent is there already (then dlopen is skipped), else 0. */
  uint64_t dlopen;         /* void *(*)(const char *, int) */
  uint64_t dlsym;          /* void *(*)(void *, const char *) */
  uint64_t dlerror;        /* char *(*)(void) */
  uint64_t attach;         /* int (*)(int, int, char *, unsigned long) */
  uint64_t close;          /* int (*)(int) */
  uint64_t nanosleep;      /* int (*)(const struct timespec *, struct timespec *) */
  uint64_t munmap;         /* int (*)(void *, size_t): the bootstrap's last call, a tail call */
  uint64_t pthread_self;   /* pthread_t (*)(void) */
  uint64_t pthread_detach; /* int (*)(pthread_t) */
  uint64_t mapping;        /* the code page and this block: unmapped by the bootstrap at its end */
  uint64_t mapping_size;
  int64_t poll_sec;   /* how long one wait for `ack` sleeps: a struct timespec, passed to */
  int64_t poll_ns;    /* nanosleep as is */
  uint32_t max_polls; /* after this many waits without `ack` the bootstrap ends anyway */
  int32_t agent_fd;   /* the agent memfd, closed once dlopen is done; -1 when none */
  int32_t region_fd;  /* handed to usprobe_agent_attach */
  int32_t control_fd; /* handed to usprobe_agent_attach */
  char agent_path[USPROBE_ATTACH_PATH_SIZE]; /* "/proc/self/fd/N" */
  char symbol[USPROBE_ATTACH_SYMBOL_SIZE];   /* "usprobe_agent_attach" */

  /* Written by the bootstrap; `done` last. */
  uint64_t thread; /* pthread_create's pthread_t (written by pthread_create itself) */
  int32_t stage;
  int32_t result;
  char message[USPROBE_ATTACH_MESSAGE_SIZE]; /* NUL-terminated (in a well-behaved target) */
  /* 1 once stage, result and message are written: stored with release ordering, paired with the
   * CLI's read of the block through /proc/PID/mem after it sees the flag. */
  uint32_t done;
  /* Set to 1 by the CLI once it has read the answer; the bootstrap then unmaps `mapping`. */
  uint32_t ack;
  /* Before the attach: the agent's usprobe_agent_prepare (its address when the agent is loaded
   * already, else 0 and found by dlsym under prepare_symbol) gives the round's signal, which the
   * bootstrap stores in round_signal (0 when the agent has no such function) before it sets
   * `prepared` (release). It then waits, boundedly, for the CLI to set `go`: meanwhile the CLI
   * makes SIGTRAP and that signal deliverable in the threads that block them. */
  uint64_t prepare; /* int (*)(void) */
  char prepare_symbol[USPROBE_ATTACH_SYMBOL_SIZE];
  int32_t round_signal;
  uint32_t prepared;
  uint32_t go;
  /* Set by the CLI (release) once the agent's bytes are in its memfd, which it writes after it has
   * let the seized thread go: 1, or 2 when it could not (the bootstrap then ends as a failed
   * dlopen would). The bootstrap waits for it, boundedly, before its dlopen. */
  uint32_t agent_written;
};

#endif
