// The process's CodeSpace (core/code_space.h): the architecture's code memory, taken from the OS
// contract (core/os.h) one call for one call.
#include "core/code_space.h"

#include "core/os.h"

namespace usprobe {
namespace {

class OsCodeSpace final : public CodeSpace {
 public:
  Result<uint64_t> alloc_near(uint64_t near, size_t size) override {
    return os::alloc_code_near(near, size);  // the OS's reach: a rel32 and a margin
  }
  void free_near(uint64_t addr, size_t size) override { os::free_code(addr, size); }
  Result<uint64_t> alloc_within(uint64_t lo, uint64_t hi, size_t size) override {
    return os::alloc_code_within(lo, hi, size);
  }
  void free_within(uint64_t addr, size_t size) override { os::free_code_within(addr, size); }
  void write_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size) override {
    os::write_code_later(addr, bytes, block_size);  // flushed by patcher::install
  }
  Result<void> write_now(uint64_t addr, std::span<const uint8_t> bytes) override {
    return os::write_code(addr, bytes);
  }
};

}  // namespace

CodeSpace &code_space() {
  // Stateless, constant-initialized and trivially destroyed: usable from any thread, at any time
  // (a static constructor's attach, an exit handler's detach).
  static constinit OsCodeSpace space;
  return space;
}

}  // namespace usprobe
