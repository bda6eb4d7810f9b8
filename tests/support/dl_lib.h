// For tests that load libraries: a dlopen handle closed when it goes out of scope (a failed
// assertion does not leave the library mapped for the next test), and whether one is loaded.
#pragma once

#include <dlfcn.h>

#include <utility>

namespace usprobe::test {

// Whether `path` is loaded in the default namespace. RTLD_NOLOAD takes a reference when it finds
// the library: it is given back at once.
inline bool loaded(const char *path) {
  void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (h) dlclose(h);
  return h != nullptr;
}

// A dlopen (or dlmopen) handle, closed when it goes out of scope.
class Lib {
 public:
  explicit Lib(const char *path) : h_(dlopen(path, RTLD_NOW | RTLD_LOCAL)) {}
  explicit Lib(void *handle) : h_(handle) {}
  Lib(const Lib &) = delete;
  Lib &operator=(const Lib &) = delete;
  ~Lib() { close(); }

  void close() {
    if (h_) dlclose(std::exchange(h_, nullptr));
  }
  template <typename F>
  F sym(const char *name) const {
    return reinterpret_cast<F>(dlsym(h_, name));
  }
  explicit operator bool() const { return h_ != nullptr; }

 private:
  void *h_;
};

}  // namespace usprobe::test
