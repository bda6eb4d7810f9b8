/* The bootstrap: the code the CLI runs in the target, on a thread of the target's own (the CLI
 * starts it with a remote pthread_create; see inject.h). It loads the agent with the target's
 * dlopen (or takes the address of the agent loaded by an earlier session), calls
 * usprobe_agent_attach (protocol/attach.h), writes the answer into its AttachBlock and marks it
 * done. Then it waits, boundedly, for the CLI to say it has read the answer, and ends by unmapping
 * its own page (code and block) in a tail call to munmap, which returns into pthread's thread
 * start: nothing of the attach is left in the target but what the agent keeps.
 *
 * Built freestanding, position-independent, with no data and no relocations, into a flat binary
 * (tools/usprobe/CMakeLists.txt checks that): it calls nothing but the libc functions whose
 * addresses the CLI put into the block, and every string it uses is in the block. */
#include <stddef.h>
#include <stdint.h>

#include "attach_block.h"

/* The entry (offset 0 of the flat binary; the build checks it): pthread_create's start routine,
 * entered with the block in rdi and the stack at 8 mod 16. It keeps the block on the stack around
 * the work, then jumps to munmap(mapping, mapping_size) with pthread's own return address on top
 * of the stack, so munmap returns to pthread's thread start and not into the unmapped page. */
_Static_assert(offsetof(struct AttachBlock, munmap) == 48, "entry: munmap at 48");
_Static_assert(offsetof(struct AttachBlock, mapping) == 72, "entry: mapping at 72");
_Static_assert(offsetof(struct AttachBlock, mapping_size) == 80, "entry: mapping_size at 80");
__asm__(
    ".text\n"
    ".globl usprobe_bootstrap_entry\n"
    ".type usprobe_bootstrap_entry, @function\n"
    "usprobe_bootstrap_entry:\n"
    "  push %rdi\n"
    "  call usprobe_bootstrap_main\n"
    "  pop %rdi\n"
    "  mov 80(%rdi), %rsi\n"
    "  mov 48(%rdi), %rax\n"
    "  mov 72(%rdi), %rdi\n"
    "  jmp *%rax\n"
    ".size usprobe_bootstrap_entry, . - usprobe_bootstrap_entry\n");

typedef void *(*dlopen_fn)(const char *, int);
typedef void *(*dlsym_fn)(void *, const char *);
typedef char *(*dlerror_fn)(void);
typedef int (*attach_fn)(int, int, char *, unsigned long);
typedef int (*prepare_fn)(void);
typedef int (*close_fn)(int);
typedef int (*nanosleep_fn)(const void *, void *);
typedef uint64_t (*pthread_self_fn)(void);
typedef int (*pthread_detach_fn)(uint64_t);

#define BOOTSTRAP_RTLD_NOW 2

/* dlerror's text into the block, cut to fit (a plain loop: no memcpy to call). */
static void copy_error(struct AttachBlock *b) {
  const char *text = ((dlerror_fn)b->dlerror)();
  size_t i = 0;
  if (text)
    for (; i + 1 < sizeof b->message && text[i]; i++) b->message[i] = text[i];
  b->message[i] = '\0';
}

__attribute__((used, noinline, noclone)) static void usprobe_bootstrap_main(struct AttachBlock *b) {
  /* Nobody joins this thread: its stack goes back to pthread when it ends. */
  ((pthread_detach_fn)b->pthread_detach)(((pthread_self_fn)b->pthread_self)());

  attach_fn attach = (attach_fn)b->attach;
  prepare_fn prepare = (prepare_fn)b->prepare;
  if (!attach) {
    for (uint32_t i = 0; i < b->max_polls && !__atomic_load_n(&b->agent_written, __ATOMIC_ACQUIRE);
         i++)
      ((nanosleep_fn)b->nanosleep)(&b->poll_sec, 0);
    /* Not written (2, or never): the dlopen of what is there fails, and says why. */
    void *handle = __atomic_load_n(&b->agent_written, __ATOMIC_ACQUIRE) == 1
                       ? ((dlopen_fn)b->dlopen)(b->agent_path, BOOTSTRAP_RTLD_NOW)
                       : 0;
    /* Loaded or not, the memfd is no longer needed: the mapping keeps the agent's pages. */
    if (b->agent_fd >= 0) ((close_fn)b->close)(b->agent_fd);
    if (!handle) {
      b->stage = USPROBE_STAGE_DLOPEN;
      copy_error(b);
    } else {
      attach = (attach_fn)((dlsym_fn)b->dlsym)(handle, b->symbol);
      prepare = (prepare_fn)((dlsym_fn)b->dlsym)(handle, b->prepare_symbol);
      if (!attach) {
        b->stage = USPROBE_STAGE_DLSYM;
        copy_error(b);
      }
    }
    if (!attach) {
      /* No agent took the session's descriptors: they go, as the agent's refusal closes them. */
      ((close_fn)b->close)(b->region_fd);
      ((close_fn)b->close)(b->control_fd);
    }
  }
  if (attach) {
    /* The round's signal for the CLI, which unblocks it (and SIGTRAP) in the threads that block
     * them before it says go. */
    b->round_signal = prepare ? prepare() : 0;
    __atomic_store_n(&b->prepared, 1, __ATOMIC_RELEASE);
    for (uint32_t i = 0; i < b->max_polls && !__atomic_load_n(&b->go, __ATOMIC_ACQUIRE); i++)
      ((nanosleep_fn)b->nanosleep)(&b->poll_sec, 0);
    b->stage = USPROBE_STAGE_ATTACH;
    b->result = attach(b->region_fd, b->control_fd, b->message, sizeof b->message);
  }
  /* Release: pairs with the CLI's reading of stage, result and message once it sees done. */
  __atomic_store_n(&b->done, 1, __ATOMIC_RELEASE);
  /* The CLI reads the block through /proc/PID/mem; the page stays until it says it has. */
  for (uint32_t i = 0; i < b->max_polls && !__atomic_load_n(&b->ack, __ATOMIC_ACQUIRE); i++)
    ((nanosleep_fn)b->nanosleep)(&b->poll_sec, 0);
}
