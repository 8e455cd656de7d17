/* moka version */
#include <stdio.h>

#include "cli/flags.h"

#define MOKA_VERSION "0.1.0"

int cmd_version(int argc, char **argv) {
  int n_pos;
  const char *pos[1];
  int rc = flags_parse("version", "", "Print moka's version.", NULL, 0, argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  printf("moka %s\n", MOKA_VERSION);
  return 0;
}
