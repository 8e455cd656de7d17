/* fuzz_flags.c — the CLI flag parser (src/cli/flags.c) on an argv split
 * from the input at NUL and newline bytes, with a table holding a flag of
 * every type; then flags_parse_doubles (--mean_value style lists) on each
 * argument. Checks: positional arguments never exceed the room given, and a
 * bool flag only ever holds true or false. */
#include <string.h>

#include "cli/flags.h"
#include "fuzz.h"

int fuzz_flags(const uint8_t *data, size_t size) {
  fuzz_init();
  enum { kMaxArgs = 64, kMaxPos = 3 };
  char *buf = malloc(size + 1);
  FUZZ_ASSERT(buf, "malloc");
  memcpy(buf, data, size);
  buf[size] = 0;
  char *argv[kMaxArgs + 2];
  int argc = 0;
  argv[argc++] = "fuzzcmd";
  char *p = buf, *end = buf + size;
  while (p <= end && argc < kMaxArgs + 1) {
    char *q = p;
    while (q < end && *q && *q != '\n') q++;
    *q = 0;
    argv[argc++] = p;
    p = q + 1;
  }
  argv[argc] = NULL;
  const char *model = NULL;
  int iters = 7;
  double scale = 1.5;
  bool gpu = false;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "the net", false},
      {"iterations", FLAG_INT, &iters, "how many", false},
      {"scale", FLAG_DOUBLE, &scale, "a factor", false},
      {"gpu", FLAG_BOOL, &gpu, "use the GPU", false},
  };
  const char *pos[kMaxPos + 1] = {0};
  int n_pos = -1;
  FILE *devnull = fopen("/dev/null", "w");
  FUZZ_ASSERT(devnull, "cannot open /dev/null");
  /* --help prints to stdout: keep the fuzzer's output readable. */
  FILE *saved = stdout;
  stdout = devnull;
  int rc = flags_parse("fuzzcmd", " MODEL", "a fuzz command", flags, 4, argc, argv, pos, kMaxPos,
                       &n_pos);
  stdout = saved;
  fclose(devnull);
  FUZZ_ASSERT(rc == 0 || rc == 1 || rc == -1, "flags_parse returned %d", rc);
  FUZZ_ASSERT(n_pos >= 0 && n_pos <= kMaxPos, "%d positional arguments", n_pos);
  FUZZ_ASSERT(rc != -1 || moka_error()[0], "an error without a message");
  unsigned char gb;
  memcpy(&gb, &gpu, 1);
  FUZZ_ASSERT(gb == 0 || gb == 1, "bool flag holds %u", gb);
  for (int i = 0; i < n_pos; i++) FUZZ_ASSERT(pos[i] != NULL, "NULL positional %d", i);
  if (model) FUZZ_ASSERT(strlen(model) <= size, "--model points outside the arguments");
  for (int i = 1; i < argc; i++) {
    double v[8];
    int n = flags_parse_doubles(argv[i], v, 8);
    FUZZ_ASSERT(n >= -1 && n <= 8, "flags_parse_doubles returned %d", n);
  }
  free(buf);
  return 0;
}

FUZZ_ENTRY(fuzz_flags)
