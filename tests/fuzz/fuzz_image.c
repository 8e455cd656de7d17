/* fuzz_image.c — the image decoders (libjpeg-turbo, libpng, through
 * src/image.c) on arbitrary bytes, in colour (3), grey (1) and native (0)
 * mode, then the bilinear resize of what decoded to a small size and to a
 * size picked from the input. */
#include "fuzz.h"
#include "image.h"

int fuzz_image(const uint8_t *data, size_t size) {
  fuzz_init();
  if (fuzz_image_too_big(data, size)) return 0;
  static const int kChannels[3] = {3, 1, 0};
  for (int k = 0; k < 3; k++) {
    Image im = {0}, rs = {0};
    if (image_decode(data, size, kChannels[k], &im) != 0) {
      FUZZ_ASSERT(im.px == NULL, "failed decode left pixels");
      continue;
    }
    FUZZ_ASSERT(im.h > 0 && im.w > 0 && (im.c == 1 || im.c == 3), "decoded %dx%dx%d", im.h, im.w,
                im.c);
    FUZZ_ASSERT(!kChannels[k] || im.c == kChannels[k], "asked %d channels, got %d", kChannels[k],
                im.c);
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)im.h * im.w * im.c; i++) sum += im.px[i];
    (void)sum;
    const int sizes[2][2] = {{7, 5}, {1 + data[size - 1] % 64, 1 + data[size / 2] % 64}};
    for (int s = 0; s < 2; s++) {
      if (image_resize_bilinear(&im, sizes[s][0], sizes[s][1], &rs) == 0) {
        FUZZ_ASSERT(rs.h == sizes[s][0] && rs.w == sizes[s][1] && rs.c == im.c,
                    "resized to %dx%dx%d", rs.h, rs.w, rs.c);
        image_free(&rs);
      }
    }
    image_free(&im);
  }
  return 0;
}

FUZZ_ENTRY(fuzz_image)
