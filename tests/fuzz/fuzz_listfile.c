/* fuzz_listfile.c — the list-file parser of convert_imageset ("<path>
 * <label>" per line, split at the last space; src/data/convert.c).
 *
 * The parser is a static function (read_list) of src/data/convert.c, so
 * this file includes that source, with the two public functions renamed so
 * that they do not clash with the library's copies. read_list reads a file:
 * the input is written to a memfd and read back through /proc/self/fd/N.
 * Checks: one entry per line (a final line without '\n' counts, an empty
 * input has none), each path a string no longer than its line. */
#define convert_imageset fuzzcopy_convert_imageset
#define compute_image_mean fuzzcopy_compute_image_mean
#include "data/convert.c"
#undef convert_imageset
#undef compute_image_mean

#include <sys/mman.h>
#include <unistd.h>

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
  ListLine *lines;
  int n;
  FUZZ_ASSERT(read_list(path, &lines, &n) == 0, "read_list failed: %s", moka_error());
  FUZZ_ASSERT((size_t)n == want, "%d entries for %zu lines", n, want);
  for (int i = 0; i < n; i++) {
    FUZZ_ASSERT(lines[i].path, "entry %d has no path", i);
    FUZZ_ASSERT(strlen(lines[i].path) <= size, "entry %d is longer than the input", i);
    free(lines[i].path);
  }
  free(lines);
  return 0;
}

FUZZ_ENTRY(fuzz_listfile)
