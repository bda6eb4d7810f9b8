#!/usr/bin/env bash
# The hit path's functions in the built library hold no x86 string instruction (`rep stos`, `rep
# movs`): its start-up costs 20-30 cycles that callgrind's instruction counts do not show. The
# dispatch code is built without vector registers (-mgeneral-regs-only), and there GCC zeroes or
# copies a struct of a few dozen bytes with one; a return instance's session zeroed that way cost an
# entry+return with built-in counters 8 ns (12.3 -> 20.4 ns, bench/hit_bench.cc) at the same
# instruction count. Usage: hit_path_code_test.sh LIBRARY... (libusprobe.so, the agent's)
set -euo pipefail
# Every function an entry or return of the trampolines' fast paths, and the full path's common
# cases, runs (src/core/dispatch.cc; the helpers they inline are checked inside them).
functions=(
  usprobe_entry_fast
  usprobe_return_fast
  usprobe_dispatch
  usprobe_return_dispatch
  "(anonymous namespace)::counters_path"
  "(anonymous namespace)::callback_path"
  "(anonymous namespace)::handlers_path"
  "(anonymous namespace)::fast_handlers_path"
  "(anonymous namespace)::fast_return_path"
  "(anonymous namespace)::timer_path"
  "(anonymous namespace)::timed_return_path"
)
wanted=$(printf '%s\n' "${functions[@]}")
for lib in "$@"; do
  objdump -d --no-show-raw-insn -C "$lib" | awk -v wanted="$wanted" -v lib="$lib" '
  BEGIN { n = split(wanted, w, "\n"); for (i = 1; i <= n; i++) want[w[i]] = 1 }
  /^[0-9a-f]+ <.*>:$/ {
    # The name without its arguments: "(anonymous namespace)::timer_path" of
    # "<(anonymous namespace)::timer_path(usprobe::ThreadRecord*, ...)>:".
    name = $0
    sub(/^[0-9a-f]+ </, "", name); sub(/>:$/, "", name)
    gsub(/\(anonymous namespace\)/, "ANONYMOUS", name)
    sub(/[( ].*$/, "", name)
    gsub(/ANONYMOUS/, "(anonymous namespace)", name)
    current = (name in want) ? name : ""
    if (current != "") seen[current] = 1
    next
  }
  current != "" && /\trep[a-z]* +(stos|movs|cmps|scas|lods)/ {
    printf "%s: %s: a string instruction on the hit path: %s\n", lib, current, $0
    bad = 1
  }
  END {
    for (f in want) if (!(f in seen)) { printf "%s: %s: not found\n", lib, f; bad = 1 }
    exit bad
  }'
done
echo "hit_path_code_test: ${#functions[@]} hit-path functions in $# libraries, no string instruction"
