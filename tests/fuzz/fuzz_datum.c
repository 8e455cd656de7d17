/* fuzz_datum.c — one LMDB value as the Data layer reads it: datum_unpack,
 * then datum_decode as stored (0) and, for encoded Datums, forced colour (3)
 * and grey (1). A decoded Datum must have a positive size and its pixels
 * must be readable. */
#include "caffe.pb-c.h"
#include "data/datum.h"
#include "fuzz.h"

int fuzz_datum(const uint8_t *data, size_t size) {
  fuzz_init();
  Caffe__Datum *d;
  if (datum_unpack(data, size, "fuzz record", &d) != 0) return 0;
  if (d->encoded && d->has_data && fuzz_image_too_big(d->data.data, d->data.len)) {
    caffe__datum__free_unpacked(d, NULL);
    return 0;
  }
  DatumPixels px = {0};
  static const int kChannels[3] = {0, 3, 1};
  for (int k = 0; k < (d->encoded ? 3 : 1); k++) {
    if (datum_decode(d, kChannels[k], "fuzz record", &px) != 0) continue;
    FUZZ_ASSERT(px.c > 0 && px.h > 0 && px.w > 0, "decoded %dx%dx%d", px.c, px.h, px.w);
    FUZZ_ASSERT(!kChannels[k] || px.c == kChannels[k], "asked %d channels, got %d", kChannels[k],
                px.c);
    double sum = 0;
    const size_t n = (size_t)px.c * px.h * px.w;
    for (size_t i = 0; i < n; i++) sum += px.data[i];
    (void)sum;
  }
  datum_pixels_free(&px);
  caffe__datum__free_unpacked(d, NULL);
  return 0;
}

FUZZ_ENTRY(fuzz_datum)
