// Messages from the agent to the CLI: Notices in the region (protocol/protocol.h), and a line on
// stderr when the CLI may not be able to read them. Never stdout: the command's output is the
// user's.
#pragma once

#include <cstdint>
#include <string_view>

#include "protocol/protocol.h"

namespace usprobe::agent {

// Posts a notice in g_region's header, tagged with this process's pid. probe: an index or -1.
// Text is cut to one line that fits. Formats and copies: not for the hit path.
void post_notice(NoticeKind kind, int32_t probe, std::string_view text);

// The agent cannot run in this process: a kNoticeError for the CLI to print when the region is
// mapped, else "usprobe-agent: <text>" on stderr (the only way left to say it).
void report_error(std::string_view text);

}  // namespace usprobe::agent
