#!/usr/bin/env bash
# What a user of an installed usprobe gets (issue 18, item 3), from the build tree BUILD:
#   1. `cmake --install BUILD --prefix P` into a temporary prefix: a C program built with
#      `pkg-config --cflags --libs usprobe` probes itself with the library and counts exactly;
#   2. the same program built by a CMake project with find_package(usprobe) and usprobe::usprobe;
#   3. P/bin/usprobe finds its agent under P and counts a command's calls;
#   4. `cpack -G DEB` makes a package whose dependencies are declared, which dpkg would install
#      here (--dry-run: the test does not change the machine), and whose files, unpacked, run.
# Usage: install_test.sh BUILD
set -euo pipefail
build=$(realpath "$1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "install_test: $*" >&2
  exit 1
}

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name usprobe.pc)
[[ -n "$pc" ]] || fail "no usprobe.pc under $prefix"
libdir=$(dirname "$(dirname "$pc")")

# A program that probes its own function with the library: 1,000 calls, 1,000 hits.
cat >"$tmp/self.c" <<'C'
#include <stdio.h>
#include <usprobe/usprobe.h>
__attribute__((noinline)) int work(int x) { return 2 * x + 1; }
int (*volatile call)(int) = work;
int main(void) {
  usprobe_link *link;
  if (usprobe_attach("exe:work", NULL, &link) != 0) {
    fprintf(stderr, "attach: %s\n", usprobe_last_error());
    return 1;
  }
  long sum = 0;
  for (int i = 0; i < 1000; ++i) sum += call(i);
  printf("sum=%ld hits=%llu\n", sum, (unsigned long long)usprobe_link_hits(link));
  return usprobe_detach(link) == 0 ? 0 : 1;
}
C
expected="sum=1000000 hits=1000"

# 1. pkg-config, from the installed tree alone.
# shellcheck disable=SC2046
cc -O1 "$tmp/self.c" -o "$tmp/self_pc" \
  $(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs usprobe)
got=$(LD_LIBRARY_PATH="$libdir" "$tmp/self_pc")
[[ "$got" == "$expected" ]] || fail "pkg-config build printed '$got', not '$expected'"

# 2. find_package(usprobe).
mkdir -p "$tmp/proj"
cp "$tmp/self.c" "$tmp/proj/"
cat >"$tmp/proj/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(self C)
find_package(usprobe 0.1 CONFIG REQUIRED)
add_executable(self self.c)
target_link_libraries(self PRIVATE usprobe::usprobe)
CMAKE
cmake -S "$tmp/proj" -B "$tmp/proj/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/proj/build" >/dev/null
got=$(LD_LIBRARY_PATH="$libdir" "$tmp/proj/build/self")
[[ "$got" == "$expected" ]] || fail "find_package build printed '$got', not '$expected'"

# 3. The installed CLI: its agent found under the prefix (no USPROBE_AGENT), a command's 1,000
# calls counted.
cat >"$tmp/calls.c" <<'C'
#include <stdio.h>
__attribute__((noinline)) int work(int x) { return 2 * x + 1; }
int (*volatile call)(int) = work;
int main(void) {
  long sum = 0;
  for (int i = 0; i < 1000; ++i) sum += call(i);
  printf("sum=%ld\n", sum);
  return 0;
}
C
cc -O1 "$tmp/calls.c" -o "$tmp/calls"
cli_counts() {  # CLI: the hits of exe:work over the program, from --json
  env -u USPROBE_AGENT "$1" count --json exe:work -- "$tmp/calls" 2>&1 >/dev/null |
    grep -o '"hits":[0-9]*' | head -1 | cut -d: -f2
}
"$prefix/bin/usprobe" --version | grep -q "^usprobe [0-9]" || fail "no version from the installed CLI"
got=$(cli_counts "$prefix/bin/usprobe")
[[ "$got" == 1000 ]] || fail "the installed CLI counted '${got:-nothing}', not 1000"

# 4. The Debian package.
(cd "$build" && cpack -G DEB -B "$tmp/deb" >/dev/null) || fail "cpack -G DEB failed"
deb=$(find "$tmp/deb" -maxdepth 1 -name 'usprobe_*.deb' | head -1)
[[ -n "$deb" ]] || fail "cpack made no usprobe_*.deb"
depends=$(dpkg-deb -f "$deb" Depends)
[[ "$depends" == *libc6* && "$depends" == *libelf1* ]] ||
  fail "the package declares Depends: '$depends' (libc6 and libelf1 expected)"
dpkg -i --dry-run "$deb" >/dev/null 2>&1 || fail "dpkg -i --dry-run refuses $deb"
dpkg-deb -x "$deb" "$tmp/root"
got=$(cli_counts "$tmp/root/usr/bin/usprobe")
[[ "$got" == 1000 ]] || fail "the packaged CLI counted '${got:-nothing}', not 1000"
echo "install_test: prefix, pkg-config, find_package, the installed CLI and $(basename "$deb"): ok"
