// The barriers of core/os.h: membarrier(2), private expedited (sync-core and plain).
#include "core/os.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

namespace usprobe::os {
namespace {

long membarrier(int cmd) {
  return syscall(SYS_membarrier, cmd, 0, 0);
}

Result<void> register_once() {
  long supported = membarrier(MEMBARRIER_CMD_QUERY);
  constexpr long kNeeded =
      MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE;
  if (supported < 0 || (supported & kNeeded) != kNeeded)
    return fail(ENOSYS,
                "membarrier: the kernel lacks PRIVATE_EXPEDITED(_SYNC_CORE); usprobe "
                "needs Linux 4.16 or later");
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) < 0 ||
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) < 0)
    return fail(errno, std::string("membarrier register: ") + strerror(errno));
  return {};
}

}  // namespace

Result<void> membarrier_init() {
  static std::once_flag once;
  static Result<void> result;
  std::call_once(once, [] { result = register_once(); });
  return result;
}

void membarrier_sync_core() {
  membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE);
}
void membarrier_memory_barrier() {
  membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
}

}  // namespace usprobe::os
