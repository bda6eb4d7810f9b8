// usprobe: uprobes in user space, on a command it starts. Everything is in usprobe_cli_lib.
#include "commands/commands.h"

int main(int argc, char **argv) {
  return usprobe::cli::run_cli(argc, argv);
}
