// Errors inside usprobe: std::expected<T, Error>. The C API turns an Error into a negative errno
// plus a per-thread message (usprobe_last_error()).
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
