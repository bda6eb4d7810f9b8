// The bootstrap (target/bootstrap.c) as the flat bytes the injector copies into the target: its
// .text, entry at offset 0, checked at build time to need no relocation
// (target/embed_bootstrap.cmake).
#pragma once

namespace usprobe::cli {

extern const unsigned char kBootstrapCode[];
extern const unsigned long kBootstrapCodeSize;

}  // namespace usprobe::cli
