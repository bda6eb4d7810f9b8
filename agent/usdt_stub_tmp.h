// TEMPORARY, until include/usprobe/usprobe.h has the USDT argument calls (the lead's part of issue
// 15): their declarations, as the lead specified them. Deleted when main has them.
#pragma once

#include <stdint.h>

#include "usprobe/usprobe.h"

extern "C" {
uint64_t usprobe_usdt_arg(const usprobe_hit *hit, unsigned n);
int usprobe_usdt_arg_count(const usprobe_hit *hit);
}
