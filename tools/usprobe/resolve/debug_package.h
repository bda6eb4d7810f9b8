// Stripped files: what a user installs to probe more than their exported functions.
#pragma once

#include <string>

namespace usprobe::elf {
class ElfFile;
}

namespace usprobe::cli {

// The Debian package that installed `path` ("sqlite3", "libc6"), from dpkg's file lists
// (/var/lib/dpkg/info/*.list), or "" when none did (or there is no dpkg).
std::string owning_package(const std::string &path);

// For a file with no .symtab of its own and no debug file found (only .dynsym: its exported
// functions): "install sqlite3-dbgsym (debian-debug archive) for the others", or a general
// advice when no package owns it. "" for a file that is not stripped.
std::string stripped_hint(const elf::ElfFile &file);

}  // namespace usprobe::cli
