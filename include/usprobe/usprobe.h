/* usprobe: uprobes in user space for Linux x86-64.
 *
 * A probe names an instruction in an ELF file; every time a thread of this process executes it,
 * the probe's handlers run with that thread's registers. usprobe patches the code in place with a
 * jump to a per-site trampoline (or, where a jump cannot be placed safely, an int3), so that a hit
 * costs nanoseconds, not the microsecond of a trap into the kernel.
 *
 *   static void on_malloc(usprobe_hit *hit, void *user) {
 *     size_t n = usprobe_arg(hit, 0);          // malloc's size argument
 *     ...
 *   }
 *   usprobe_consumer c = {on_malloc, NULL};
 *   usprobe_link *link;
 *   if (usprobe_attach("libc:malloc", &c, &link) < 0)
 *     fprintf(stderr, "%s\n", usprobe_last_error());
 *   ...
 *   printf("%llu calls\n", (unsigned long long)usprobe_link_hits(link));
 *   usprobe_detach(link);
 *
 * Locations:
 *   "FILE:SYMBOL"       the first instruction of a function        "libc:malloc"
 *   "FILE:SYMBOL+OFF"   OFF bytes into it (must start an insn)     "app:parse+0x12"
 *   "FILE:0xOFF"        a file offset                              "/bin/true:0x2a40"
 *   "usdt:FILE:PROVIDER:NAME"  a USDT probe (.note.stapsdt), at every one of its sites
 *                              "usdt:/usr/bin/python3.11:python:function__entry"
 *   "usdt:FILE:NAME"    the same, when one provider of FILE has a probe NAME
 * Prefixes, bpftrace's spelling: "uprobe:" (ignored) and "uretprobe:" (a function's entry only):
 * with a NULL consumer, the built-in counter counts returns (usprobe_link_return_hits) instead of
 * entries.
 * FILE is a path, a short library name as mapped in this process ("libc", "libm", "libstdc++",
 * "libfoo.so"), or "exe" for the main executable. IFUNC symbols (strlen, memcpy, ...) resolve to
 * the implementation this process uses; usprobe_link_name() reports it.
 *
 * Handlers run on the thread that hit the probe, with that thread's registers. They must not
 * throw. A handler that itself executes a probed instruction does not recurse: that hit is
 * counted in usprobe_link_missed() of the probe it reached and its handlers are skipped.
 * Entry handlers may change argument registers (usprobe_set_arg); the probed code sees the change.
 *
 * All functions are thread-safe. Functions returning int return 0 (or a count) on success and a
 * negative errno on failure; usprobe_last_error() then holds this thread's detailed message.
 * Arguments: a NULL pointer where one is required, an unknown flag bit or a link that is not
 * attached gives -EINVAL (and attaches or detaches nothing); the accessors below answer 0, NULL
 * or "" for a NULL link or hit. A link must not be used after it is detached (only
 * usprobe_detach refuses it, with -EINVAL, as long as its memory is not reused by a newer link).
 *
 * Calls from a handler. A handler may call every accessor (usprobe_link_*, usprobe_hit_*, ...):
 * they take no lock. It may attach (usprobe_attach*), which allocates memory and reads files (so
 * not from a probe inside the allocator's locked code). Two kinds of call would wait for the
 * calling thread itself, and are refused with -EDEADLK instead (usprobe_strerror says so, and
 * usprobe_last_error why; the refusal allocates nothing), having done nothing:
 *  - usprobe_detach and usprobe_detach_batch from any handler (or from a signal handler that
 *    interrupted one): a detach returns only once no handler of its links runs, and the calling
 *    handler is running. The detach is not deferred: detach after the handler has returned (for
 *    example, set a flag in the handler and detach from the thread that reads it). The handler
 *    itself continues normally, and the link stays attached and usable;
 *  - usprobe_attach*, usprobe_detach*, usprobe_notify_mapping and usprobe_on_mapping_change from a
 *    handler that runs while its thread is inside usprobe's registry (the handler of a probe that
 *    an attach, a detach or usprobe's update after a dlopen reached on that thread).
 * The C++ usprobe::Link (usprobe.hpp) follows the same rule: Link::detach() in a handler returns
 * the error and keeps the link; destroying an attached Link in a handler leaves it attached.
 *
 * Strings: usprobe_link_name() and usprobe_link_int3_reason() return strings that stay valid and
 * unchanged until the link is detached; usprobe_hit_probe_name() one that stays valid while the
 * probe has a link; usprobe_last_error() one that stays valid until this thread's next call of
 * usprobe; usprobe_strerror() a static string. */
#ifndef USPROBE_USPROBE_H
#define USPROBE_USPROBE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct usprobe_link usprobe_link; /* one attachment; freed by usprobe_detach */
typedef struct usprobe_hit usprobe_hit;   /* registers and probe identity of one hit */

typedef struct usprobe_consumer {
  void (*on_entry)(usprobe_hit *hit, void *user); /* may be NULL */
  void *user;
  /* Return probe: runs when the probed function returns to its caller, with the return registers
   * (usprobe_retval). NULL: none. Only at a function's entry. A call is not seen returning when the
   * thread already has `usprobe_set_return_depth()` calls pending (counted in missed), or when it
   * leaves by longjmp or a C++ exception (counted in missed). While the call runs, its return
   * address on the stack is usprobe's (stacks taken with usprobe_hit_stack and by libgcc's
   * unwinder show the original); calls pending on swapcontext coroutines' stacks are kept apart.
   */
  void (*on_return)(usprobe_hit *hit, void *user);
} usprobe_consumer;

/* Attach one consumer to `location`. consumer NULL = built-in counter only. A second attach to a
 * probed location reuses its patch; the patch goes when its last link is detached. */
int usprobe_attach(const char *location, const usprobe_consumer *consumer, usprobe_link **link);

/* Flags for usprobe_attach_ex. They apply when the location's patch is placed (its first link).
 * Any other bit is refused (-EINVAL, the message names the unknown bits). */
#define USPROBE_FORCE_INT3 0x1u /* use the int3 path even where a jump could be placed */
/* The consumer's handlers use no vector, x87 or mask register (they are built with
 * -mgeneral-regs-only and call nothing that is not): the trampoline may skip saving the vector
 * state for them, as it does for the built-in counter. Applies per link. */
#define USPROBE_GENERAL_REGS_ONLY 0x2u
/* The consumer's handlers read no register of the hit: they count, keep a time in the call's
 * session, and the like. The trampolines' fast paths, which save only the registers a call may
 * change and build no register view, then run them (with USPROBE_GENERAL_REGS_ONLY too, and where
 * the location has one entry handler and one return probe at most). When a handler runs there,
 * usprobe_arg, usprobe_retval, usprobe_hit_reg, usprobe_hit_ip (at an entry), usprobe_hit_sp (at
 * an entry) and the other register readers answer 0 (usprobe_hit_regs NULL, usprobe_hit_stack
 * -EINVAL), on the jump and the int3 path alike; a hit that the fast path leaves to the full one
 * (a thread's first, or beside a consumer without the flag) has them as usual. Applies per link. */
#define USPROBE_NO_REGS 0x4u

int usprobe_attach_ex(const char *location, const usprobe_consumer *consumer, unsigned flags,
                      usprobe_link **link);

/* Attach `n` locations with one round of patching. links[i] receives the link of locations[i], or
 * NULL when it failed, with errors[i] (if errors is not NULL) its negative errno; the messages of
 * failed locations are in usprobe_last_error(), one line each. Returns the number attached. A NULL
 * locations[i] fails that location (-EINVAL). A negative errno instead of a count when the whole
 * call is refused (NULL locations or links with n > 0, n > INT_MAX, an unknown flag, -EDEADLK):
 * then every links[i] is NULL. */
int usprobe_attach_batch(const char *const *locations, size_t n, const usprobe_consumer *consumer,
                         usprobe_link **links, int *errors);

/* As usprobe_attach_batch, with one consumer per location (consumers[i] for locations[i]; NULL
 * means the built-in counter for all) and flags as for usprobe_attach_ex. */
int usprobe_attach_batch_ex(const char *const *locations, size_t n,
                            const usprobe_consumer *consumers, unsigned flags, usprobe_link **links,
                            int *errors);

/* Detach: when this returns, no handler of this link is running or will run. Frees the link.
 * -EINVAL for NULL or a link that is not attached; -EDEADLK, detaching nothing, when called from a
 * handler (see "Calls from a handler" above). */
int usprobe_detach(usprobe_link *link);
/* Detach `n` links with one round of patching. NULL entries are skipped (a usprobe_attach_batch
 * result can be passed as it is). Returns 0, or a negative errno having detached none of them:
 * -EINVAL for links NULL with n > 0, a link that is not attached or one given twice; -EDEADLK as
 * usprobe_detach. */
int usprobe_detach_batch(usprobe_link *const *links, size_t n);

uint64_t usprobe_link_hits(const usprobe_link *link);   /* hits seen by this link, all threads */
uint64_t usprobe_link_missed(const usprobe_link *link); /* hits skipped (recursion), all threads */
/* Returns seen by this link's return probe (on_return, or "uretprobe:" with a NULL consumer). */
uint64_t usprobe_link_return_hits(const usprobe_link *link);
int usprobe_link_uses_int3(const usprobe_link *link); /* 1 when the site took the int3 path */
/* Why the site took the int3 path ("" on the jump path). The string stays valid and unchanged
 * until the link is detached, whatever later dlopens do to the sites (a later call may return
 * another string, when the reason changed). */
const char *usprobe_link_int3_reason(const usprobe_link *link);
/* How the site is entered: "jump" (a jmp over whole instructions), "jump (one instruction)" (a jmp
   over the probed instruction alone), "jump (punned)" (a jmp whose displacement borrows the
   following instruction's bytes, left unchanged, and enters a small stub), or "int3" (see
   usprobe_link_int3_reason); "" while the probe has no site. Lives as long as
   usprobe_link_int3_reason's string. */
const char *usprobe_link_path(const usprobe_link *link);
/* The resolved location, e.g. "libc.so.6:__strlen_avx2" or "app:parse+0x12". Valid until the link
 * is detached. */
const char *usprobe_link_name(const usprobe_link *link);
/* How many mappings of its file the link's probe is placed in now: 1 usually, 0 while the file is
 * not mapped (a library named by path before the program dlopens it), 2 for a library loaded in two
 * dlmopen namespaces. */
int usprobe_link_sites(const usprobe_link *link);

/* Probes follow the dynamic linker: a probe on a library that is not loaded yet (named by path)
 * attaches with no site and is placed when dlopen maps the library, before dlopen returns; a
 * dlclose that unmaps it takes its sites away, and a later dlopen places them again. Code mapped
 * without the dynamic linker (mmap of an ELF file by a custom loader) is not seen by it: call this
 * after mapping such code and after unmapping it (before its memory is reused). Returns 0 or a
 * negative errno. */
int usprobe_notify_mapping(void);
/* Call `fn(user)` after each change of the address space that usprobe followed (a dlopen, a
 * dlclose, a usprobe_notify_mapping), once the probes are in line with it: on the thread that made
 * the change, inside dlopen/dlclose for those (so `fn` must not load or unload libraries, and a
 * detach there is refused with -EDEADLK, as in a handler), and with
 * the probed functions it calls neither counted nor missed. One listener; NULL removes it. A
 * symbolizer that snapshots /proc/self/maps keeps names for libraries unloaded later. */
int usprobe_on_mapping_change(void (*fn)(void *user), void *user);

/* Registers of a hit. */
uint64_t usprobe_arg(const usprobe_hit *hit, unsigned n); /* n = 0..5, System V order */
void usprobe_set_arg(usprobe_hit *hit, unsigned n, uint64_t value);

typedef enum usprobe_reg {
  USPROBE_RAX,
  USPROBE_RBX,
  USPROBE_RCX,
  USPROBE_RDX,
  USPROBE_RSI,
  USPROBE_RDI,
  USPROBE_RBP,
  USPROBE_RSP,
  USPROBE_R8,
  USPROBE_R9,
  USPROBE_R10,
  USPROBE_R11,
  USPROBE_R12,
  USPROBE_R13,
  USPROBE_R14,
  USPROBE_R15,
  USPROBE_RIP,
  USPROBE_RFLAGS
} usprobe_reg;
uint64_t usprobe_hit_reg(const usprobe_hit *hit, usprobe_reg reg);
/* The hit's saved registers as one array of words, for a handler that reads many of them at places
 * it works out once (an interpreter): usprobe_hit_regs(hit)[usprobe_reg_index(reg)] is
 * usprobe_hit_reg(hit, reg). Valid until the handler returns; NULL for a NULL hit.
 * usprobe_reg_index returns -1 for a value that is no usprobe_reg. */
const uint64_t *usprobe_hit_regs(const usprobe_hit *hit);
int usprobe_reg_index(usprobe_reg reg);
uint64_t usprobe_hit_ip(const usprobe_hit *hit); /* the probed instruction's address */
uint64_t usprobe_hit_sp(const usprobe_hit *hit); /* %rsp at the probed instruction */
uint64_t usprobe_hit_flags(
    const usprobe_hit *hit); /* %rflags (not meaningful at a function entry) */
/* In a return handler: the return value registers. */
uint64_t usprobe_retval(const usprobe_hit *hit);      /* %rax */
uint64_t usprobe_retval_high(const usprobe_hit *hit); /* %rdx (second word of a 16-byte struct) */
double usprobe_retval_double(const usprobe_hit *hit); /* %xmm0's low double */
/* Per-call session data: USPROBE_SESSION_WORDS words (64 bytes) that an entry handler writes and
 * the same consumer's return handler of that call reads back (zero at entry): room for the six
 * argument registers and a timestamp. NULL when the probe has no return probe. */
#define USPROBE_SESSION_WORDS 8
uint64_t *usprobe_session(usprobe_hit *hit);
/* In an entry handler: this consumer's return handler does not run for this call. */
void usprobe_session_skip_return(usprobe_hit *hit);
/* Pending returns a thread can hold (default 64, at most 1024); deeper calls run no return
 * handler and count as missed. Takes effect for threads that have not hit a probe yet. */
int usprobe_set_return_depth(unsigned depth);
/* At a function entry: the caller's return address, *(uint64_t *)sp. */
uint64_t usprobe_hit_return_address(const usprobe_hit *hit);
const char *usprobe_hit_probe_name(const usprobe_hit *hit); /* as usprobe_link_name() */

/* USDT probes ("usdt:FILE:PROVIDER:NAME"). One link covers every site of the probe (the note
 * repeated for each inlined copy; usprobe_link_sites counts them in every mapping), and each site
 * reads its own argument specs. While a site is patched, the probe's semaphore (if it has one) is
 * raised in that mapping, so that the program fires the probe; it is lowered when the site goes.
 * The counter is shared with other tracers: usprobe adds and subtracts, never stores. */
/* Argument n (0..11) of the USDT site that was hit, as its note's spec says (a register of any
 * width, memory, a constant), sign- or zero-extended to 64 bits from the spec's size. Memory
 * operands are read as the probed code reads them. 0 when the probe is not a USDT probe or has no
 * argument n, and in a return handler. */
uint64_t usprobe_usdt_arg(const usprobe_hit *hit, unsigned n);
/* How many arguments the hit USDT site has; -1 for a probe that is not a USDT probe. */
int usprobe_usdt_arg_count(const usprobe_hit *hit);

/* The user stack at a hit, for a handler to record: ips[0] is the hit's instruction (in an entry
 * handler, the probed instruction; in a return handler, the original return address the function
 * returns to), then the return addresses of the callers, outermost last. Fills at most `max`
 * entries and returns how many (at least 1), or -EINVAL for a NULL hit or ips, max 0 or an unknown
 * flag (without a message in usprobe_last_error: a handler must not allocate). Call it only from a
 * handler, with the hit it received. Where a pending return probe has replaced a caller's return
 * address by its trampoline's, the stack shows the original address.
 *
 *   static void on_malloc(usprobe_hit *hit, void *user) {
 *     uint64_t ips[32];
 *     int n = usprobe_hit_stack(hit, ips, 32, 0);   // DWARF: full stacks without frame pointers
 *     if (n > 0) record_stack(ips, n);
 *   }
 *
 * Default: DWARF unwinding by the code's own .eh_frame, which gives whole stacks through code
 * built without frame pointers (most distributions' packages): usprobe's unwinder finds each
 * frame's object with glibc's _dl_find_object, its FDE through .eh_frame_hdr, and runs its CFA
 * program; rows are cached process-wide, so a stack of 16 frames costs a few hundred nanoseconds
 * once its code has been seen (a return site met for the first time, about 0.2 us more). A frame
 * without usable unwind information (JIT code) takes one frame-pointer step; signal frames are
 * followed into the interrupted code.
 * USPROBE_STACK_FP: frame pointers only, the cheapest (tens of nanoseconds); stops at the first
 * function built without them.
 * Both walks are usable from any handler, including probes inside malloc, the dynamic loader and
 * signal handlers: they never allocate, lock or make a system call, except the first time on a
 * thread (reads /proc/self/maps for its stack's bounds), never read outside the thread's stack,
 * whatever the stack or its registers hold, and read unwind tables only inside their object. */
#define USPROBE_STACK_FP 0x1u
int usprobe_hit_stack(const usprobe_hit *hit, uint64_t *ips, size_t max, unsigned flags);

/* List the functions of an ELF file (a path, a short library name or "exe"), from .symtab and
 * .dynsym, in file-offset order: cb(name, file_offset, size, user) for each. Returns the number
 * listed or a negative errno. */
typedef void (*usprobe_function_cb)(const char *name, uint64_t file_offset, uint64_t size,
                                    void *user);
int usprobe_list_functions(const char *file, usprobe_function_cb cb, void *user);

const char *usprobe_strerror(int err); /* err: a negative errno returned above */
const char *usprobe_last_error(void);  /* this thread's message for its last failed call */

#ifdef __cplusplus
}
#endif
#endif /* USPROBE_USPROBE_H */
