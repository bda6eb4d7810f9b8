// Errors inside usprobe: std::expected<T, Error>. The C API turns an Error into a negative errno
// plus a per-thread message (usprobe_last_error()).
//
// src/base/ is the layer below every other: elf, os, arch, core, the agent and the CLI all speak
// this error type, so it depends on nothing of usprobe's but the public usprobe/error.hpp (a layer
// that included core/ for its errors would reach up into the engine).
#pragma once

#include <cerrno>
#include <expected>
#include <string>

#include "usprobe/error.hpp"

namespace usprobe {

template <class T>
using Result = std::expected<T, Error>;

inline std::unexpected<Error> fail(int code, std::string message) {
  return std::unexpected(Error{code, std::move(message)});
}

}  // namespace usprobe
