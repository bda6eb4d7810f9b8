// usprobe::Error: what a failed request says. Shared by the C++ API (usprobe.hpp) and the library.
#pragma once

#include <string>

namespace usprobe {

struct Error {
  int code = 0;         // a positive errno value
  std::string message;  // one line naming the thing and the reason
};

}  // namespace usprobe
