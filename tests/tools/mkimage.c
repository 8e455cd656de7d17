/* mkimage — write a synthetic colour test image (JPEG or PNG by extension):
 * smooth gradients, a disc and stripes, deterministic for a given size and
 * seed. Used by the demo and the tests so that nothing has to be downloaded.
 *   mkimage OUT.jpg|OUT.png WIDTH HEIGHT [SEED] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "util.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: mkimage OUT.jpg|OUT.png WIDTH HEIGHT [SEED]\n");
    return 2;
  }
  int w = atoi(argv[2]), h = atoi(argv[3]), seed = argc > 4 ? atoi(argv[4]) : 1;
  if (w < 1 || h < 1 || w > 8192 || h > 8192) {
    fprintf(stderr, "mkimage: bad size %sx%s\n", argv[2], argv[3]);
    return 2;
  }
  Image im = {h, w, 3, malloc((size_t)w * h * 3)};
  double cx = w * (0.3 + 0.05 * (seed % 7)), cy = h * 0.55, r = (w < h ? w : h) * 0.25;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *p = im.px + ((size_t)y * w + x) * 3;
      double d = hypot(x - cx, y - cy);
      int stripe = ((x + y * (seed % 3 + 1)) / 9) % 2;
      p[0] = (uint8_t)(255.0 * x / w);                 /* B */
      p[1] = (uint8_t)(255.0 * y / h);                 /* G */
      p[2] = (uint8_t)(d < r ? 230 : stripe ? 40 : 120); /* R */
    }
  uint8_t *buf = NULL;
  size_t len = 0;
  const char *ext = strrchr(argv[1], '.');
  int rc = ext && !strcmp(ext, ".png") ? image_encode_png(&im, &buf, &len)
                                       : image_encode_jpeg(&im, 90, &buf, &len);
  if (rc == 0) rc = moka_write_file_atomic(argv[1], buf, len);
  if (rc) fprintf(stderr, "mkimage: %s\n", moka_error());
  free(buf);
  free(im.px);
  return rc ? 1 : 0;
}
