/* datum.h — Caffe's Datum, the record of a Caffe LMDB: one image and its
 * label, either raw (channels/height/width and uint8 pixels in (C,H,W) BGR
 * order, or float_data) or encoded (the bytes of a JPEG/PNG file, with
 * channels/height/width 0, decoded when read).
 *
 * Decoding follows Caffe: an encoded Datum is decoded as OpenCV would
 * (image.c), natively (grey stays grey) unless a colour or grey decode is
 * forced; raw uint8 and float_data values are taken as they are. The result
 * is float (C,H,W), the form Caffe's DataTransformer reads them in (a uint8
 * pixel converts to float exactly).
 */
#ifndef MOKA_DATUM_H
#define MOKA_DATUM_H

#include <stddef.h>
#include <stdint.h>

#include "caffe.pb-c.h"
#include "image.h"

/* Decoded pixels of one Datum: (C,H,W) floats; `data` grows as needed and
 * is reused between records (free with datum_pixels_free). */
typedef struct DatumPixels {
  int c, h, w;
  float *data; /* (C,H,W) */
  size_t cap;  /* floats allocated */
} DatumPixels;

void datum_pixels_free(DatumPixels *px);

/* Parse one LMDB value. Errors name `what` (e.g. the key). Free the result
 * with caffe__datum__free_unpacked(d, NULL). */
int datum_unpack(const void *buf, size_t len, const char *what, Caffe__Datum **out);
/* Serialise (malloc'd buffer). */
int datum_pack(const Caffe__Datum *d, uint8_t **buf, size_t *len);

/* Decode d into px. `channels`: 0 = as stored (Caffe's
 * DecodeDatumToCVMatNative, used unless force_color/force_gray), 3 = colour
 * (force_color), 1 = grey (force_gray); it only matters for encoded Datums.
 * Errors (empty, size mismatch, undecodable image) name `what`. */
int datum_decode(const Caffe__Datum *d, int channels, const char *what, DatumPixels *px);

/* px = im's pixels as (C,H,W) floats (what Caffe's DataTransformer reads
 * from a cv::Mat); px's buffer is reused. */
int datum_pixels_from_image(const Image *im, DatumPixels *px);

/* The raw (device-transform) form: decoded pixels of one record kept as
 * uint8 (C,H,W), BGR, no float conversion (src/data/raw_batch.h). `data`
 * grows as needed and is reused (free with datum_bytes_free). */
typedef struct DatumBytes {
  int c, h, w;
  uint8_t *data; /* (C,H,W) */
  size_t cap;    /* bytes allocated */
} DatumBytes;

void datum_bytes_free(DatumBytes *px);
/* datum_decode, to uint8: the same pixels (a raw Datum's bytes, or the
 * encoded image decoded the same way). A Datum that holds float_data has no
 * uint8 form: an error that says so (device transforms take uint8 records;
 * MOKA_DEVICE_TRANSFORM=0 keeps the float path). */
int datum_decode_u8(const Caffe__Datum *d, int channels, const char *what, DatumBytes *px);
/* px = im's pixels as (C,H,W) uint8. */
int datum_bytes_from_image(const Image *im, DatumBytes *px);

/* Fill d (which this initialises) as Caffe's CVMatToDatum does: channels,
 * height, width, data = im's pixels in (C,H,W) order, encoded = false, and
 * the label. d->data.data is malloc'd: free with datum_clear. */
int datum_from_image(const Image *im, int label, Caffe__Datum *d);
/* Fill d with encoded bytes (a copy), as Caffe's ReadFileToDatum /
 * imencode path: data, label, encoded = true; no channels/height/width. */
int datum_from_encoded(const uint8_t *bytes, size_t len, int label, Caffe__Datum *d);
/* Free what datum_from_image / datum_from_encoded allocated. */
void datum_clear(Caffe__Datum *d);

#endif
