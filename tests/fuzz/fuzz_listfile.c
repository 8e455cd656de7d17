/* fuzz_listfile.c — the list-file parser of convert_imageset and the
 * ImageData layer ("<path> <label>" per line, split at the last space;
 * src/data/listfile.c), then Caffe's shuffle of the entries.
 *
 * list_file_read reads a file: the input is written to a memfd and read back
 * through /proc/self/fd/N. Checks: one entry per line (a final line without
 * '\n' counts, an empty input has none), entries numbered by line, each
 * either blank, a path + label, or malformed with a reason and the line's
 * text; no path longer than the input. */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "data/listfile.h"
#include "fuzz.h"

int fuzz_listfile(const uint8_t *data, size_t size) {
  fuzz_init();
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("fuzz_list", 0);
    FUZZ_ASSERT(fd >= 0, "memfd_create failed");
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  FUZZ_ASSERT(ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == (ssize_t)size,
              "cannot write the memfd");
  size_t want = 0;
  for (size_t i = 0; i < size; i++)
    if (data[i] == '\n') want++;
  if (size && data[size - 1] != '\n') want++;
  ListEntry *e;
  int n;
  FUZZ_ASSERT(list_file_read(path, &e, &n) == 0, "list_file_read failed: %s", moka_error());
  FUZZ_ASSERT((size_t)n == want, "%d entries for %zu lines", n, want);
  for (int i = 0; i < n; i++) {
    FUZZ_ASSERT(e[i].line == i + 1, "entry %d says line %d", i, e[i].line);
    if (e[i].path) {
      FUZZ_ASSERT(!e[i].error && e[i].path[0], "entry %d: a path with an error, or empty", i);
      FUZZ_ASSERT(strlen(e[i].path) < size, "entry %d is longer than the input", i);
    } else if (e[i].error) {
      FUZZ_ASSERT(e[i].text, "malformed entry %d without its text", i);
    } else {
      FUZZ_ASSERT(!e[i].text, "blank entry %d with text", i);
    }
  }
  Rng r;
  rng_seed(&r, (uint32_t)size);
  list_shuffle(e, n, &r);
  list_file_free(e, n);
  return 0;
}

FUZZ_ENTRY(fuzz_listfile)
