/* pngstat — print "WIDTH HEIGHT COLOURS" of a PNG or JPEG (COLOURS = distinct
 * RGB values, counted up to 100000): tests use it to tell a rendered page
 * from a blank screenshot.   pngstat FILE */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "util.h"

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: pngstat FILE\n");
    return 2;
  }
  Image im;
  if (image_read_file(argv[1], 3, &im)) {
    fprintf(stderr, "pngstat: %s\n", moka_error());
    return 1;
  }
  size_t n = (size_t)im.w * im.h;
  uint32_t *c = malloc(sizeof *c * (n ? n : 1));
  if (!c) return 1;
  for (size_t i = 0; i < n; i++)
    c[i] = (uint32_t)im.px[3 * i] << 16 | (uint32_t)im.px[3 * i + 1] << 8 | im.px[3 * i + 2];
  qsort(c, n, sizeof *c, cmp_u32);
  size_t distinct = n ? 1 : 0;
  for (size_t i = 1; i < n && distinct < 100000; i++) distinct += c[i] != c[i - 1];
  printf("%d %d %zu\n", im.w, im.h, distinct);
  free(c);
  image_free(&im);
  return 0;
}
