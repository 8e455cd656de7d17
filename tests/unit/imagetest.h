/* imagetest.h — file helpers shared by the image and data tests
 * (test_image.c, test_data.c, test_data_convert.c): a whole file in memory,
 * and patches to the size fields of JPEG and PNG headers, for files that
 * declare sizes too large to decode. Header-only, like testlib.h: each
 * test_*.c is its own program.
 */
#ifndef MOKA_IMAGETEST_H
#define MOKA_IMAGETEST_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* The whole file (NUL-terminated, see moka_read_file); NULL when unreadable. */
static inline uint8_t *read_all(const char *path, size_t *len) {
  uint8_t *d = NULL;
  if (moka_read_file(path, &d, len) != 0) return NULL;
  return d;
}

/* Offset of the SOF0 (baseline frame header) marker of a JPEG; 0 when none. */
static inline size_t jpeg_sof0(const uint8_t *jpg, size_t len) {
  for (size_t i = 2; i + 9 < len; i++)
    if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0) return i;
  return 0;
}

/* The frame size in the SOF0 header at `sof`: 16-bit height and width. */
static inline void jpeg_set_size(uint8_t *jpg, size_t sof, int height, int width) {
  jpg[sof + 5] = (uint8_t)(height >> 8), jpg[sof + 6] = (uint8_t)(height & 255);
  jpg[sof + 7] = (uint8_t)(width >> 8), jpg[sof + 8] = (uint8_t)(width & 255);
}

static inline uint32_t crc32_png(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

static inline void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Width and height in the IHDR chunk of a PNG (the first chunk: bytes 16..23
 * of a file of at least 33 bytes), with the chunk's CRC made valid again. */
static inline void png_set_size(uint8_t *png, uint32_t width, uint32_t height) {
  put_be32(png + 16, width);
  put_be32(png + 20, height);
  put_be32(png + 29, crc32_png(png + 12, 17));
}

#endif
