// Stacks mode: this process's mappings, written into the region for the CLI, which names the
// addresses of the stacks with them after the process is gone (protocol/protocol.h, "Stacks mode").
#pragma once

#include "protocol/protocol.h"

namespace usprobe::agent {

// Writes a MapsEntry for this process and image (g_region.image) with its naming lines
// (protocol/maps_lines.h), unless they are the ones this image last wrote (in this process or in
// the parent it was forked from). Reads /proc/self/maps, allocates, locks: never on the hit path.
// Call with t_in_agent set (or from the engine's mapping listener, whose calls are not counted), so
// that the probed functions it calls (malloc, read) are not recorded.
void post_maps(MapsKind kind);

}  // namespace usprobe::agent
