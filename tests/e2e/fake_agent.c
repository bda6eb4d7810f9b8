// A stand-in for libusprobe-agent.so's attach mode (protocol/attach.h), for inject_test.cc: it
// exports usprobe_agent_attach and does what the region's first bytes ask, so the test sees that
// the CLI filled the region before the agent ran, and that the session pipe works.
//   "ok"     writes "attached <n> by <pid> build <FAKE_BUILD>" at offset 64 of the region (n
//            counts the calls into this loaded copy), and starts a thread that reads the control
//            pipe and, at end of file, writes "session <n> ended" to stderr;
//   "hold"   the same, and keeps the region mapped (a session that holds the process);
//   "refuse" refuses with -EBUSY and a message, closing both descriptors.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef FAKE_BUILD
#define FAKE_BUILD "a"
#endif

static int calls;

static void *watch(void *arg) {
  int fd = (int)(intptr_t)arg;
  char c;
  while (read(fd, &c, 1) > 0) {
  }
  close(fd);
  fprintf(stderr, "session %d ended\n", calls);
  return NULL;
}

__attribute__((visibility("default"))) int usprobe_agent_attach(int region_fd, int control_fd,
                                                                char *message, unsigned long size) {
  char command[16] = {0};
  if (pread(region_fd, command, sizeof command - 1, 0) < 0) command[0] = 0;
  if (strncmp(command, "refuse", 6) == 0) {
    snprintf(message, size, "pid %d is probed by another usprobe session", (int)getpid());
    close(region_fd);
    close(control_fd);
    return -EBUSY;
  }
  calls++;
  char marker[64];
  int n = snprintf(marker, sizeof marker, "attached %d by %d build %s", calls, (int)getpid(),
                   FAKE_BUILD);
  if (pwrite(region_fd, marker, (size_t)n + 1, 64) < 0) return -errno;
  if (strncmp(command, "hold", 4) == 0) mmap(NULL, 4096, PROT_READ, MAP_SHARED, region_fd, 0);
  close(region_fd);
  pthread_t t;
  pthread_create(&t, NULL, watch, (void *)(intptr_t)control_fd);
  pthread_detach(t);
  return 0;
}
