// The C API: thin wrappers over the registry that turn Errors into negative errnos plus a
// per-thread message.
#include <pthread.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "api/attach_batch.h"
#include "core/counters.h"
#include "core/probe.h"
#include "core/registry.h"
#include "core/stack.h"
#include "core/usdt_arg.h"
#include "elf/elf_file.h"
#include "elf/location.h"
#include "usprobe/usprobe.h"

#define USPROBE_API extern "C" __attribute__((visibility("default")))

namespace {

// The calling thread's last error message. Not a thread_local std::string: libc would register
// its destructor with __cxa_thread_atexit and free that registration at exit() through free(),
// after the CLI's agent stopped counting (a libc:free probe would count one call the program never
// made). A pthread key's destructor frees the message of a thread that exits; the main thread's
// lives until the process ends.
std::string &last_error() {
  static const pthread_key_t key = [] {
    pthread_key_t k;
    if (pthread_key_create(&k, [](void *p) { delete static_cast<std::string *>(p); }) != 0) abort();
    return k;
  }();
  auto *s = static_cast<std::string *>(pthread_getspecific(key));
  if (!s) {
    s = new std::string;
    pthread_setspecific(key, s);
  }
  return *s;
}

// A fixed message for this thread's last error, set without allocating: the refusals that a
// handler can meet (a call that would wait for itself, a NULL argument) must not call malloc, which
// the handler may have interrupted. Takes precedence over last_error() until the next report.
// Initial-exec TLS, as the hit path's: no __tls_get_addr (which may allocate in a dlopened
// library).
constinit thread_local const char *t_fixed_error __attribute__((tls_model("initial-exec"))) =
    nullptr;

int report(const usprobe::Error &e) {
  t_fixed_error = nullptr;
  last_error() = e.message;
  return -(e.code > 0 ? e.code : EINVAL);
}
int report_fixed(int code, const char *message) {
  t_fixed_error = message;
  return -code;
}
void set_messages(std::string messages) {
  t_fixed_error = nullptr;
  last_error() = std::move(messages);
}

constexpr unsigned kKnownFlags = USPROBE_FORCE_INT3 | USPROBE_GENERAL_REGS_ONLY | USPROBE_NO_REGS;

// The checks every attach makes before it touches anything; 0 or a reported negative errno.
int check_attach(const char *what, unsigned flags) {
  if (flags & ~kKnownFlags)
    return report(
        {EINVAL, fmt::format("{}: unknown flag bits {:#x} (the flags are "
                             "USPROBE_FORCE_INT3 {:#x}, USPROBE_GENERAL_REGS_ONLY {:#x} and "
                             "USPROBE_NO_REGS {:#x})",
                             what, flags & ~kKnownFlags, USPROBE_FORCE_INT3,
                             USPROBE_GENERAL_REGS_ONLY, USPROBE_NO_REGS)});
  if (const char *why = usprobe::registry::self_deadlock(false)) return report_fixed(EDEADLK, why);
  return 0;
}

}  // namespace

USPROBE_API int usprobe_attach_ex(const char *location, const usprobe_consumer *consumer,
                                  unsigned flags, usprobe_link **link) {
  if (!location || !link)
    return report_fixed(EINVAL, "usprobe_attach: location and link are required");
  *link = nullptr;
  if (int rc = check_attach("usprobe_attach_ex", flags); rc < 0) return rc;
  std::string loc(location);
  std::span<const usprobe_consumer> consumers;
  if (consumer) consumers = std::span(consumer, 1);
  auto results = usprobe::registry::attach(std::span(&loc, 1), consumers, flags);
  if (!results[0]) return report(results[0].error());
  *link = *results[0];
  return 0;
}

USPROBE_API int usprobe_attach(const char *location, const usprobe_consumer *consumer,
                               usprobe_link **link) {
  return usprobe_attach_ex(location, consumer, 0, link);
}

int usprobe::api::attach_batch(const char *const *locations, size_t n,
                               const usprobe_consumer *consumers, unsigned flags,
                               usprobe_link **links, int *errors,
                               std::span<const ExternalCounter> external) {
  if ((!locations || !links) && n > 0)
    return report_fixed(EINVAL, "usprobe_attach_batch: locations and links are required");
  if (n > INT_MAX)
    return report(
        {EINVAL, fmt::format("usprobe_attach_batch: {} locations, more than {}", n, INT_MAX)});
  // A refusal of the whole call leaves every links[i] NULL and every errors[i] its errno.
  auto refuse_all = [&](int rc) {
    for (size_t i = 0; i < n; ++i) {
      links[i] = nullptr;
      if (errors) errors[i] = rc;
    }
    return rc;
  };
  if (int rc = check_attach("usprobe_attach_batch_ex", flags); rc < 0) return refuse_all(rc);
  // NULL locations fail one by one; the others are attached together.
  std::vector<std::string> locs;
  std::vector<usprobe_consumer> per_location;
  std::vector<ExternalCounter> counters;
  std::vector<size_t> index;  // locs[k] is locations[index[k]]
  for (size_t i = 0; i < n; ++i) {
    if (!locations[i]) continue;
    locs.emplace_back(locations[i]);
    if (consumers) per_location.push_back(consumers[i]);
    if (!external.empty()) counters.push_back(external[i]);
    index.push_back(i);
  }
  auto results = usprobe::registry::attach(locs, per_location, flags, counters);
  std::vector<const usprobe::Result<usprobe_link *> *> result_of(n, nullptr);
  for (size_t k = 0; k < index.size(); ++k) result_of[index[k]] = &results[k];
  int attached = 0;
  std::string messages;
  for (size_t i = 0; i < n; ++i) {
    const usprobe::Result<usprobe_link *> *r = result_of[i];
    links[i] = r && *r ? **r : nullptr;
    if (r && *r) {
      ++attached;
      if (errors) errors[i] = 0;
      continue;
    }
    if (errors) errors[i] = r ? -r->error().code : -EINVAL;
    if (!messages.empty()) messages += '\n';
    messages +=
        r ? r->error().message : fmt::format("usprobe_attach_batch: locations[{}] is NULL", i);
  }
  set_messages(std::move(messages));
  return attached;
}

USPROBE_API int usprobe_attach_batch_ex(const char *const *locations, size_t n,
                                        const usprobe_consumer *consumers, unsigned flags,
                                        usprobe_link **links, int *errors) {
  return usprobe::api::attach_batch(locations, n, consumers, flags, links, errors, {});
}

USPROBE_API int usprobe_attach_batch(const char *const *locations, size_t n,
                                     const usprobe_consumer *consumer, usprobe_link **links,
                                     int *errors) {
  if (!consumer || !locations || !links || n > INT_MAX)  // the checks are usprobe_attach_batch_ex's
    return usprobe_attach_batch_ex(locations, n, nullptr, 0, links, errors);
  std::vector<usprobe_consumer> same(n, *consumer);
  return usprobe_attach_batch_ex(locations, n, same.data(), 0, links, errors);
}

USPROBE_API int usprobe_detach(usprobe_link *link) {
  if (!link) return report_fixed(EINVAL, "usprobe_detach: link is NULL");
  if (const char *why = usprobe::registry::self_deadlock(true)) return report_fixed(EDEADLK, why);
  auto ok = usprobe::registry::detach(std::span(&link, 1));
  return ok ? 0 : report(ok.error());
}

USPROBE_API int usprobe_detach_batch(usprobe_link *const *links, size_t n) {
  if (!links && n > 0) return report_fixed(EINVAL, "usprobe_detach_batch: links is NULL");
  if (n == 0) return 0;
  if (const char *why = usprobe::registry::self_deadlock(true)) return report_fixed(EDEADLK, why);
  auto ok = usprobe::registry::detach(std::span(links, n));
  return ok ? 0 : report(ok.error());
}

USPROBE_API uint64_t usprobe_link_hits(const usprobe_link *link) {
  return link ? usprobe::counters::read(link->slot).hits : 0;
}
USPROBE_API uint64_t usprobe_link_missed(const usprobe_link *link) {
  return link ? usprobe::counters::read(link->slot).missed : 0;
}
USPROBE_API uint64_t usprobe_link_return_hits(const usprobe_link *link) {
  return link ? usprobe::counters::read(link->slot).returns : 0;
}
USPROBE_API int usprobe_link_uses_int3(const usprobe_link *link) {
  return link && usprobe::registry::uses_int3(link) ? 1 : 0;
}
USPROBE_API const char *usprobe_link_int3_reason(const usprobe_link *link) {
  return link ? usprobe::registry::int3_reason(link) : "";
}
USPROBE_API const char *usprobe_link_path(const usprobe_link *link) {
  return link ? usprobe::registry::path(link) : "";
}
USPROBE_API const char *usprobe_link_name(const usprobe_link *link) {
  return link ? link->probe->name.c_str() : "";
}
USPROBE_API int usprobe_link_sites(const usprobe_link *link) {
  return link ? usprobe::registry::site_count(link) : 0;
}
USPROBE_API int usprobe_on_mapping_change(void (*fn)(void *user), void *user) {
  if (const char *why = usprobe::registry::self_deadlock(false)) return report_fixed(EDEADLK, why);
  usprobe::registry::set_mapping_listener(fn, user);
  return 0;
}
USPROBE_API int usprobe_notify_mapping(void) {
  if (const char *why = usprobe::registry::self_deadlock(false)) return report_fixed(EDEADLK, why);
  auto ok = usprobe::registry::notify_mapping();
  return ok ? 0 : report(ok.error());
}

// A hit without registers: an entry handler of USPROBE_NO_REGS run on the fast path.
USPROBE_API uint64_t usprobe_arg(const usprobe_hit *hit, unsigned n) {
  // The argument registers are long gone at a return.
  if (!hit || hit->returning || !hit->regs) return 0;
  return usprobe::arch::arg(*hit->regs, n);
}
USPROBE_API void usprobe_set_arg(usprobe_hit *hit, unsigned n, uint64_t value) {
  if (!hit || hit->returning || !hit->regs) return;
  usprobe::arch::set_arg(*hit->regs, n, value);
}
USPROBE_API uint64_t usprobe_hit_reg(const usprobe_hit *hit, usprobe_reg reg) {
  return hit && hit->regs ? usprobe::arch::reg(*hit->regs, reg) : 0;
}
USPROBE_API const uint64_t *usprobe_hit_regs(const usprobe_hit *hit) {
  return hit ? reinterpret_cast<const uint64_t *>(hit->regs) : nullptr;
}
USPROBE_API int usprobe_reg_index(usprobe_reg reg) {
  return usprobe::arch::reg_index(reg);
}
USPROBE_API uint64_t usprobe_hit_ip(const usprobe_hit *hit) {
  if (!hit) return 0;
  if (hit->returning) return hit->returning->entry_ip;
  return hit->regs ? usprobe::arch::reg(*hit->regs, USPROBE_RIP) : 0;
}
USPROBE_API uint64_t usprobe_hit_sp(const usprobe_hit *hit) {
  if (!hit) return 0;
  if (hit->returning) return hit->returning->sp;  // the function's entry %rsp
  return hit->regs ? usprobe::arch::reg(*hit->regs, USPROBE_RSP) : 0;
}
USPROBE_API uint64_t usprobe_hit_flags(const usprobe_hit *hit) {
  return hit && hit->regs ? usprobe::arch::reg(*hit->regs, USPROBE_RFLAGS) : 0;
}
USPROBE_API uint64_t usprobe_hit_return_address(const usprobe_hit *hit) {
  if (!hit) return 0;
  if (hit->returning) return hit->returning->return_address;
  if (!hit->regs) return 0;
  return *reinterpret_cast<const uint64_t *>(usprobe_hit_sp(hit));
}
USPROBE_API uint64_t usprobe_retval(const usprobe_hit *hit) {
  return hit && hit->returning && hit->regs ? usprobe::arch::reg(*hit->regs, USPROBE_RAX) : 0;
}
USPROBE_API uint64_t usprobe_retval_high(const usprobe_hit *hit) {
  return hit && hit->returning && hit->regs ? usprobe::arch::reg(*hit->regs, USPROBE_RDX) : 0;
}
USPROBE_API double usprobe_retval_double(const usprobe_hit *hit) {
  if (!hit || !hit->returning || !hit->vectors) return __builtin_nan("");
  return usprobe::arch::return_double(hit->vectors);
}
USPROBE_API uint64_t *usprobe_session(usprobe_hit *hit) {
  return hit && hit->session ? hit->session->data : nullptr;
}
USPROBE_API void usprobe_session_skip_return(usprobe_hit *hit) {
  if (hit && hit->session && !hit->returning) hit->session->skip = 1;
}
USPROBE_API int usprobe_set_return_depth(unsigned depth) {
  if (depth == 0 || depth > usprobe::kMaxReturnDepth)
    return report({EINVAL, fmt::format("usprobe_set_return_depth: {} is not in 1..{}", depth,
                                       usprobe::kMaxReturnDepth)});
  usprobe::g_return_depth.store(depth, std::memory_order_relaxed);
  return 0;
}
USPROBE_API const char *usprobe_hit_probe_name(const usprobe_hit *hit) {
  return hit ? hit->probe->name.c_str() : "";
}
namespace {
// The memory operands of a USDT argument are the ones the compiler wrote for that very site (a
// stack slot, a global, a field of a live object): read as the probed code itself would.
bool read_plain(uint64_t addr, void *dst, size_t len) {
  std::memcpy(dst, reinterpret_cast<const void *>(addr), len);
  return true;
}
}  // namespace

USPROBE_API int usprobe_usdt_arg_count(const usprobe_hit *hit) {
  if (!hit || hit->returning) return -1;
  // Acquire: pairs with the attach's release store, made before its consumers were published.
  const usprobe::elf::UsdtProbe *usdt = hit->probe->usdt.load(std::memory_order_acquire);
  return usdt ? static_cast<int>(usdt->args.size()) : -1;
}

USPROBE_API uint64_t usprobe_usdt_arg(const usprobe_hit *hit, unsigned n) {
  if (!hit || hit->returning || !hit->regs) return 0;
  const usprobe::elf::UsdtProbe *usdt = hit->probe->usdt.load(std::memory_order_acquire);
  if (!usdt || n >= usdt->args.size()) return 0;
  uint64_t v = 0;
  return usprobe::usdt_arg_value(usdt->args[n], *hit->regs, read_plain, &v) ? v : 0;
}

// A handler's call: no allocation, so no message in last_error() either (core/stack.h).
USPROBE_API int usprobe_hit_stack(const usprobe_hit *hit, uint64_t *ips, size_t max,
                                  unsigned flags) {
  return usprobe::stack::walk(hit, ips, max, flags);
}

USPROBE_API int usprobe_list_functions(const char *file, usprobe_function_cb cb, void *user) {
  if (!file || !cb) return report({EINVAL, "usprobe_list_functions: file and cb are required"});
  auto path = usprobe::elf::resolve_file(file);
  if (!path) return report(path.error());
  auto elf = usprobe::elf::ElfFile::open(*path);
  if (!elf) return report(elf.error());
  int n = 0;
  for (const auto &f : (*elf)->functions()) {
    cb(f.name.c_str(), f.file_offset, f.size, user);
    ++n;
  }
  return n;
}

USPROBE_API const char *usprobe_strerror(int err) {
  if (err == -EDEADLK || err == EDEADLK)
    return "Resource deadlock avoided (the call would wait for its own thread: made from a "
           "handler; see usprobe_last_error)";
  if (err == INT_MIN) return strerror(EINVAL);  // -INT_MIN does not exist; no errno is that large
  return strerror(err < 0 ? -err : err);
}
USPROBE_API const char *usprobe_last_error(void) {
  if (const char *fixed = t_fixed_error) return fixed;
  return last_error().c_str();
}
