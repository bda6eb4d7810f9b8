// Live patching: install and remove the patches of many sites with one round of core syncs,
// following the cross-modifying-code protocol while other threads run the code:
//
//   install: every site's first byte := int3; sync
//            (jump sites) move threads stopped inside a window to its relocated copy
//            jump tails := rel32; sync; first bytes := jmp; sync
//   remove:  (jump sites) first bytes := int3; sync; tails := original; sync
//            first bytes := original; sync
//
// A thread that reaches a site while its first byte is a transient int3 traps and is sent to the
// site's trampoline (the site table is filled before the first int3 and emptied after the last
// original byte is back), so no hit is lost while patching. Called with the registry mutex held.
#pragma once

#include <vector>

#include "base/error.h"
#include "core/probe.h"

namespace usprobe::patcher {

// Installs the patches. A jump site whose window could not be cleared of other threads (a thread
// that blocks usprobe's signal did not answer) is left on the int3 path, with the reason recorded.
Result<void> install(const std::vector<Site *> &sites);
// Restores the original bytes of the sites.
Result<void> remove(const std::vector<Site *> &sites);

}  // namespace usprobe::patcher
