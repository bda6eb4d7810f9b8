// The program of agent_session_test.cc: a running process that plays usprobe -p's injector on
// itself, without ptrace. It loads the agent with its own dlopen() and calls usprobe_agent_attach
// from a new thread, as the injector's bootstrap does, while its other threads sleep in
// nanosleep(), wait in read() on a pipe, and call session_spin() without pause.
//
//   agent_session_target AGENT REGION_FD CONTROL_FD
//
// REGION_FD and CONTROL_FD: inherited descriptors for the first session (the test's; the program
// only prints them back).
// Prints "ready PID WORK SPIN REGION_FD CONTROL_FD" (the addresses of session_work and
// session_spin), then reads
// commands, one a line, on stdin, and answers each with one line on stdout:
//   attach R C     usprobe_agent_attach(R, C) from a new thread, with the descriptors R and C
//                  (numbers, or /proc paths that it opens first; the agent is dlopened by the first
//                  attach only): "attach RC CLOSED MESSAGE", CLOSED 1 when both descriptors were
//                  closed when it returned
//   calls N        N calls of session_work: "calls N"
//   fork N         a child that makes N calls of session_work and then sleeps until it is killed:
//                  "fork PID" once its calls are made
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SESSION_PROBED __attribute__((noipa, used, visibility("default")))

static volatile unsigned long work_calls, spin_calls;

SESSION_PROBED void session_work(void) {
  work_calls = work_calls + 1;
}
SESSION_PROBED void session_spin(void) {
  spin_calls = spin_calls + 1;
}

typedef int (*attach_fn)(int, int, char *, unsigned long);
static attach_fn attach;
static const char *agent_path;

static void *spinner(void *arg) {
  (void)arg;
  for (;;) session_spin();
  return NULL;
}
static void *sleeper(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec t = {3600, 0};
    nanosleep(&t, NULL);
  }
  return NULL;
}
static void *reader(void *arg) {
  int fd = *(int *)arg;
  char c;
  while (read(fd, &c, 1) != 0) {
  }
  return NULL;
}

struct attach_call {
  int region, control;
  int rc;
  char message[512];
};

// The injector's bootstrap: the agent loaded by its first caller only (later sessions call the
// address they found), then one call.
static void *call_attach(void *arg) {
  struct attach_call *a = arg;
  if (!attach) {
    void *handle = dlopen(agent_path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      snprintf(a->message, sizeof a->message, "dlopen: %s", dlerror());
      a->rc = -1000;
      return NULL;
    }
    attach = (attach_fn)dlsym(handle, "usprobe_agent_attach");
    if (!attach) {
      snprintf(a->message, sizeof a->message, "no usprobe_agent_attach");
      a->rc = -1000;
      return NULL;
    }
  }
  a->rc = attach(a->region, a->control, a->message, sizeof a->message);
  return NULL;
}

static int descriptor(const char *text, int flags) {
  if (text[0] == '/') return open(text, flags | O_CLOEXEC);
  return atoi(text);
}

static void answer_attach(int region, int control) {
  struct attach_call a = {region, control, 0, ""};
  pthread_t t;
  if (pthread_create(&t, NULL, call_attach, &a) != 0) abort();
  pthread_join(t, NULL);
  int closed =
      fcntl(region, F_GETFD) < 0 && errno == EBADF && fcntl(control, F_GETFD) < 0 && errno == EBADF;
  printf("attach %d %d %s\n", a.rc, closed, a.message);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: agent_session_target AGENT REGION_FD CONTROL_FD\n");
    return 2;
  }
  agent_path = argv[1];
  setvbuf(stdout, NULL, _IOLBF, 0);
  int idle[2];
  if (pipe(idle) != 0) abort();
  pthread_t t;
  if (pthread_create(&t, NULL, spinner, NULL) != 0 ||
      pthread_create(&t, NULL, sleeper, NULL) != 0 ||
      pthread_create(&t, NULL, reader, &idle[0]) != 0)
    abort();
  printf("ready %d %p %p %s %s\n", (int)getpid(), (void *)session_work, (void *)session_spin,
         argv[2], argv[3]);

  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    char a[2048], b[2048];
    long n = 0;
    if (sscanf(line, "attach %2047s %2047s", a, b) == 2) {
      int region = descriptor(a, O_RDWR), control = descriptor(b, O_RDONLY);
      if (region < 0 || control < 0) {
        printf("attach -1 0 open: %s\n", strerror(errno));
        continue;
      }
      answer_attach(region, control);
    } else if (sscanf(line, "calls %ld", &n) == 1) {
      for (long i = 0; i < n; ++i) session_work();
      printf("calls %ld\n", n);
    } else if (sscanf(line, "fork %ld", &n) == 1) {
      int done[2];
      if (pipe(done) != 0) abort();
      fflush(stdout);
      pid_t pid = fork();
      if (pid < 0) abort();
      if (pid == 0) {
        for (long i = 0; i < n; ++i) session_work();
        close(done[1]);
        for (;;) pause();
      }
      close(done[1]);
      char c;
      while (read(done[0], &c, 1) > 0) {
      }
      close(done[0]);
      printf("fork %d\n", (int)pid);
    } else {
      printf("unknown command: %s", line);
    }
  }
  return 0;
}
