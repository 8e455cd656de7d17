/* fuzz.h — moka's fuzz targets (tests/fuzz/fuzz_*.c).
 *
 * Each target is `int fuzz_<name>(const uint8_t *data, size_t size)`: it
 * feeds the bytes to one reader the way moka uses it and returns 0. Bad
 * input must come back as an error (-1 + moka_error()); what the fuzzer
 * looks for is everything else: a crash, a sanitizer report, a leak, a hang,
 * an allocation beyond the limits, or a broken invariant, which the targets
 * turn into abort() through FUZZ_ASSERT.
 *
 * The same functions run in two ways:
 *   - under libFuzzer (`make fuzz`, tests/fuzz/fuzz.mk): each file is built
 *     with -DMOKA_LIBFUZZER, which makes FUZZ_ENTRY define
 *     LLVMFuzzerTestOneInput;
 *   - without it, in tests/unit/test_fuzz_regress.c, which includes every
 *     target and replays tests/fuzz/regress/<name>/ (inputs that once
 *     crashed) and tests/fuzz/corpus/<name>/ in `make test`.
 */
#ifndef MOKA_FUZZ_H
#define MOKA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "blob.h"
#include "util.h"

/* Limits the targets run under: every blob allocation together stays under
 * FUZZ_BLOB_MEMORY (libFuzzer's own limit is 2 GB of RSS), and images are
 * decoded only when they declare at most FUZZ_MAX_PIXELS (see
 * fuzz_image_too_big). */
#define FUZZ_BLOB_MEMORY ((size_t)256 << 20)
#define FUZZ_MAX_PIXELS (4u << 20)

/* Only the first call does anything: quiet logs, the blob memory limit. */
static inline void fuzz_init(void) {
  static int done;
  if (done) return;
  done = 1;
  moka_set_log_level(2);
  blob_set_memory_limit(FUZZ_BLOB_MEMORY);
}

/* A broken invariant: print it and abort (a finding for the fuzzer, a
 * failed test in the replay). */
#define FUZZ_ASSERT(cond, ...)                                         \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                    \
      fprintf(stderr, "\n");                                           \
      abort();                                                         \
    }                                                                  \
  } while (0)

#ifdef MOKA_LIBFUZZER
#define FUZZ_ENTRY(fn)                                          \
  int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size); \
  int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fn(data, size); }
#else
#define FUZZ_ENTRY(fn)
#endif

int fuzz_prototxt(const uint8_t *data, size_t size);
int fuzz_caffemodel(const uint8_t *data, size_t size);
int fuzz_blobproto(const uint8_t *data, size_t size);
int fuzz_solverstate(const uint8_t *data, size_t size);
int fuzz_datum(const uint8_t *data, size_t size);
int fuzz_image(const uint8_t *data, size_t size);
int fuzz_listfile(const uint8_t *data, size_t size);
int fuzz_flags(const uint8_t *data, size_t size);

/* True when `data` is a JPEG or PNG whose header declares more than
 * FUZZ_MAX_PIXELS (or whose header cannot be read: then image_decode
 * refuses it anyway). image.c refuses only above MOKA_IMAGE_MAX_PIXELS
 * (2^28), and a few hundred bytes of truncated JPEG can declare that many:
 * decoding one takes ~1 GB and seconds, which libFuzzer would report as an
 * out-of-memory or a timeout. Targets skip such inputs; the refusal above
 * 2^28 is tested in tests/unit/test_reliability.c. */
static inline int fuzz_image_too_big(const uint8_t *data, size_t size) {
  if (size >= 24 && !memcmp(data, "\x89PNG\r\n\x1a\n", 8)) {
    /* IHDR is the first chunk: width and height, big-endian, at 16 and 20. */
    uint64_t w =
        (uint64_t)data[16] << 24 | (uint64_t)data[17] << 16 | (uint64_t)data[18] << 8 | data[19];
    uint64_t h =
        (uint64_t)data[20] << 24 | (uint64_t)data[21] << 16 | (uint64_t)data[22] << 8 | data[23];
    return w * h > FUZZ_MAX_PIXELS;
  }
  if (size >= 2 && data[0] == 0xFF && data[1] == 0xD8) {
    tjhandle tj = tjInitDecompress();
    int w = 0, h = 0, sub = 0, cs = 0;
    int rc = tj ? tjDecompressHeader3(tj, data, (unsigned long)size, &w, &h, &sub, &cs) : -1;
    if (tj) tjDestroy(tj);
    return rc == 0 && (uint64_t)w * (uint64_t)h > FUZZ_MAX_PIXELS;
  }
  return 0;
}

#endif
