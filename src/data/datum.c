/* datum.c — Caffe's Datum: decode to float (C,H,W), build from an image
 * (see datum.h). */
#include "data/datum.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

void datum_pixels_free(DatumPixels *px) {
  if (!px) return;
  free(px->data);
  memset(px, 0, sizeof *px);
}

/* A buffer of at least n elements of `size` bytes: data itself when its cap
 * suffices, else data grown (cap updated); NULL with moka_error() when out
 * of memory (data then still valid and owned by the caller). */
static void *reserve(void *data, size_t *cap, size_t n, size_t size) {
  if (data && n <= *cap) return data;
  if (n == 0) n = 1; /* an empty plane still gets a buffer */
  void *p = moka_realloc(data, n * size);
  if (p) *cap = n;
  return p;
}

static int pixels_reserve(DatumPixels *px, int c, int h, int w) {
  float *p = reserve(px->data, &px->cap, (size_t)c * (size_t)h * (size_t)w, sizeof(float));
  if (!p) return -1;
  px->data = p;
  px->c = c;
  px->h = h;
  px->w = w;
  return 0;
}

int datum_pixels_from_image(const Image *im, DatumPixels *px) {
  if (pixels_reserve(px, im->c, im->h, im->w) != 0) return -1;
  /* (H,W,C) -> (C,H,W) */
  const size_t hw = (size_t)im->h * im->w;
  for (int c = 0; c < im->c; c++) {
    float *dst = px->data + c * hw;
    const uint8_t *src = im->px + c;
    for (size_t i = 0; i < hw; i++) dst[i] = (float)src[i * im->c];
  }
  return 0;
}

/* ---- uint8 (C,H,W): the raw path of the device transforms ----------------------------- */

void datum_bytes_free(DatumBytes *px) {
  if (!px) return;
  free(px->data);
  memset(px, 0, sizeof *px);
}

static int bytes_reserve(DatumBytes *px, int c, int h, int w) {
  uint8_t *p = reserve(px->data, &px->cap, (size_t)c * (size_t)h * (size_t)w, 1);
  if (!p) return -1;
  px->data = p;
  px->c = c;
  px->h = h;
  px->w = w;
  return 0;
}

int datum_bytes_from_image(const Image *im, DatumBytes *px) {
  if (bytes_reserve(px, im->c, im->h, im->w) != 0) return -1;
  /* (H,W,C) -> (C,H,W) */
  const size_t hw = (size_t)im->h * im->w;
  for (int c = 0; c < im->c; c++) {
    uint8_t *dst = px->data + c * hw;
    const uint8_t *src = im->px + c;
    for (size_t i = 0; i < hw; i++) dst[i] = src[i * im->c];
  }
  return 0;
}

int datum_decode_u8(const Caffe__Datum *d, int channels, const char *what, DatumBytes *px) {
  if (d->encoded) {
    if (!d->has_data || d->data.len == 0)
      return moka_errorf("%s: encoded Datum without data", what);
    Image im;
    if (image_decode(d->data.data, d->data.len, channels, &im) != 0)
      return moka_error_prefix("%s: cannot decode the encoded image", what);
    int rc = datum_bytes_from_image(&im, px);
    image_free(&im);
    return rc;
  }
  const int c = d->channels, h = d->height, w = d->width;
  if (c <= 0 || h <= 0 || w <= 0)
    return moka_errorf("%s: raw Datum with invalid size channels=%d height=%d width=%d", what, c,
                       h, w);
  size_t n;
  if (!moka_mul_size((size_t)c * (size_t)h, (size_t)w, &n) || n > (size_t)1 << 31)
    return moka_errorf("%s: raw Datum too large (%dx%dx%d)", what, c, h, w);
  if (!d->has_data || d->data.len == 0)
    return moka_errorf("%s: the Datum holds float_data (%zu values), not uint8 pixels: device "
                       "transforms need uint8 records (set MOKA_DEVICE_TRANSFORM=0 to transform "
                       "on the host)",
                       what, d->n_float_data);
  if (d->data.len != n)
    return moka_errorf("%s: Datum holds %zu bytes of data, but channels*height*width = "
                       "%d*%d*%d = %zu",
                       what, d->data.len, c, h, w, n);
  if (bytes_reserve(px, c, h, w) != 0) return -1;
  memcpy(px->data, d->data.data, n);
  return 0;
}

int datum_unpack(const void *buf, size_t len, const char *what, Caffe__Datum **out) {
  *out = caffe__datum__unpack(NULL, len, buf);
  if (!*out)
    return moka_errorf("%s: not a caffe.Datum (%zu bytes that do not parse as one)", what, len);
  return 0;
}

int datum_pack(const Caffe__Datum *d, uint8_t **buf, size_t *len) {
  *len = caffe__datum__get_packed_size(d);
  *buf = moka_malloc(*len);
  if (!*buf) return -1;
  size_t got = caffe__datum__pack(d, *buf);
  MOKA_CHECK(got == *len);
  return 0;
}

int datum_decode(const Caffe__Datum *d, int channels, const char *what, DatumPixels *px) {
  if (d->encoded) {
    if (!d->has_data || d->data.len == 0) return moka_errorf("%s: encoded Datum without data", what);
    Image im;
    if (image_decode(d->data.data, d->data.len, channels, &im) != 0)
      return moka_error_prefix("%s: cannot decode the encoded image", what);
    int rc = datum_pixels_from_image(&im, px);
    image_free(&im);
    return rc;
  }
  const int c = d->channels, h = d->height, w = d->width;
  if (c <= 0 || h <= 0 || w <= 0)
    return moka_errorf("%s: raw Datum with invalid size channels=%d height=%d width=%d", what, c,
                       h, w);
  size_t n;
  if (!moka_mul_size((size_t)c * (size_t)h, (size_t)w, &n) || n > (size_t)1 << 31)
    return moka_errorf("%s: raw Datum too large (%dx%dx%d)", what, c, h, w);
  if (d->has_data && d->data.len > 0) {
    if (d->data.len != n)
      return moka_errorf("%s: Datum holds %zu bytes of data, but channels*height*width = "
                         "%d*%d*%d = %zu",
                         what, d->data.len, c, h, w, n);
    if (pixels_reserve(px, c, h, w) != 0) return -1;
    for (size_t i = 0; i < n; i++) px->data[i] = (float)d->data.data[i];
    return 0;
  }
  if (d->n_float_data != n)
    return moka_errorf("%s: Datum holds %zu float_data values (and no bytes), but "
                       "channels*height*width = %d*%d*%d = %zu",
                       what, d->n_float_data, c, h, w, n);
  if (pixels_reserve(px, c, h, w) != 0) return -1;
  memcpy(px->data, d->float_data, n * sizeof(float));
  return 0;
}

int datum_from_image(const Image *im, int label, Caffe__Datum *d) {
  caffe__datum__init(d);
  if (!im || !im->px || im->h <= 0 || im->w <= 0 || im->c <= 0)
    return moka_errorf("datum_from_image: invalid image");
  const size_t hw = (size_t)im->h * im->w, n = hw * im->c;
  uint8_t *buf = moka_malloc(n); /* (C,H,W) */
  if (!buf) return -1;
  for (int c = 0; c < im->c; c++)
    for (size_t i = 0; i < hw; i++) buf[c * hw + i] = im->px[i * im->c + c];
  d->has_channels = d->has_height = d->has_width = 1;
  d->channels = im->c;
  d->height = im->h;
  d->width = im->w;
  d->has_data = 1;
  d->data.data = buf;
  d->data.len = n;
  d->has_label = 1;
  d->label = label;
  d->has_encoded = 1;
  d->encoded = 0;
  return 0;
}

int datum_from_encoded(const uint8_t *bytes, size_t len, int label, Caffe__Datum *d) {
  caffe__datum__init(d);
  uint8_t *buf = moka_malloc(len);
  if (!buf) return -1;
  if (len) memcpy(buf, bytes, len);
  d->has_data = 1;
  d->data.data = buf;
  d->data.len = len;
  d->has_label = 1;
  d->label = label;
  d->has_encoded = 1;
  d->encoded = 1;
  return 0;
}

void datum_clear(Caffe__Datum *d) {
  if (!d) return;
  free(d->data.data);
  caffe__datum__init(d);
}
