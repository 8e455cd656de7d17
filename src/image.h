/* image.h — decoding (JPEG through libjpeg-turbo's TurboJPEG API, PNG through
 * libpng; the type comes from the magic bytes, never the file name), OpenCV-
 * compatible bilinear resize, and encoding back to JPEG/PNG.
 *
 * Pixels are uint8, interleaved (H,W,C) like OpenCV's Mat, in BGR order for
 * colour images (what Caffe's Datum and cv::imread use). Greyscale, CMYK/YCCK
 * JPEGs and paletted/16-bit/alpha PNGs are converted to what was asked for.
 */
#ifndef MOKA_IMAGE_H
#define MOKA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* Images declaring more pixels than this are refused before any allocation
 * (decompression bombs). */
#define MOKA_IMAGE_MAX_PIXELS (1u << 27) /* 134 Mpixel, 400 MB as BGR; larger photos are very rare */

typedef struct Image {
  int h, w, c;     /* c = 3 (BGR) or 1 (grey) */
  uint8_t *px;     /* (H,W,C) interleaved */
} Image;

typedef enum ImageFormat { IMG_UNKNOWN = 0, IMG_JPEG, IMG_PNG, IMG_GIF, IMG_BMP, IMG_WEBP } ImageFormat;

/* Guess the format from the first bytes. */
ImageFormat image_sniff(const uint8_t *buf, size_t len);
const char *image_format_name(ImageFormat f);

/* Decode to `channels` (3 = BGR, 1 = grey), as cv::imread/imdecode with
 * IMREAD_COLOR / IMREAD_GRAYSCALE do (including a JPEG's EXIF orientation).
 * channels = 0 is IMREAD_UNCHANGED ("native", what Caffe uses for encoded
 * Datums): grey files give 1 channel, colour and CMYK files 3, no EXIF
 * rotation; PNGs with alpha or 16 bits, which OpenCV would return as 4
 * channels or 16-bit pixels, are errors there. Errors say why (not an image,
 * a GIF, truncated, too large, ...). A file that decodes with a libjpeg /
 * libpng warning (e.g. "Premature end of JPEG file": OpenCV accepts it and
 * fills the missing part with grey) succeeds; image_decode_warning() then
 * returns the warning. */
int image_decode(const uint8_t *buf, size_t len, int channels, Image *out);
int image_read_file(const char *path, int channels, Image *out);

/* Read only the header: the size image_decode would return (after EXIF
 * orientation when channels != 0) and its channel count, with the same
 * checks (format, size limits, a readable header). No pixel is decoded, so a
 * file truncated after its header passes. */
int image_probe(const uint8_t *buf, size_t len, int channels, int *h, int *w, int *c);

/* image_decode, but a JPEG is shrunk while it is decoded, in the DCT domain
 * (libjpeg-turbo's scaled IDCT): by the smallest of TurboJPEG's factors of
 * at most 1/2 (1/2, 3/8, 1/4, 1/8) that keeps it at least min_w x min_h
 * (after EXIF orientation) — so only when the target is at most half the
 * JPEG's size; otherwise, and for a PNG, the full size. Resize the result to the exact target afterwards. Much faster for
 * large photos, but NOT what OpenCV (and so Caffe) computes: a different
 * filter, pixels differ by more than 1. Only behind explicit opt-in flags
 * (--fast_resize). */
int image_decode_reduced(const uint8_t *buf, size_t len, int channels, int min_h, int min_w,
                         Image *out);
void image_free(Image *im);
/* The warning of this thread's last image_decode / image_read_file call
 * ("" when it decoded cleanly). */
const char *image_decode_warning(void);

/* cv::resize(..., INTER_LINEAR) semantics (half-pixel centres, clamped
 * borders, OpenCV's fixed-point rounding within ±1 per pixel). */
int image_resize_bilinear(const Image *in, int new_h, int new_w, Image *out);

/* Encode as JPEG (quality 1..100) or PNG into a malloc'd buffer. */
int image_encode_jpeg(const Image *im, int quality, uint8_t **buf, size_t *len);
int image_encode_png(const Image *im, uint8_t **buf, size_t *len);

#endif
