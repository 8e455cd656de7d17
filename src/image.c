/* image.c — image decoding, OpenCV-compatible bilinear resize and encoding
 * (see image.h).
 *
 * The goal is to give the pixels Caffe gets from OpenCV (cv::imread /
 * cv::imdecode / cv::resize / cv::imencode), so that a Datum built or decoded
 * here equals Caffe's:
 *
 *   JPEG   libjpeg-turbo through the TurboJPEG API, default settings (accurate
 *          integer IDCT, fancy upsampling): the same library and settings as
 *          OpenCV, so identical pixels. CMYK/YCCK files are decompressed to
 *          CMYK and converted exactly as OpenCV's icvCvt_CMYK2BGR_8u_C4C3R /
 *          icvCvt_CMYK2Gray_8u_C4C1R do. EXIF orientation is applied as
 *          OpenCV's ApplyExifOrientation does (not in native mode).
 *   PNG    libpng with the transformations OpenCV's PngDecoder asks for
 *          (strip 16 -> 8 bits, strip alpha — no compositing —, palette and
 *          low-bit grey expanded, BGR order, rgb_to_gray(0.299, 0.587)).
 *   resize cv::resize(INTER_LINEAR) for uint8: 11-bit fixed-point
 *          coefficients, a horizontal pass into int32 rows, then OpenCV's
 *          vector formula for the vertical pass (its SIMD path is what runs
 *          on x86-64, for every pixel); exact 2x downscales take OpenCV's
 *          INTER_AREA fast path. Checked bit-exact against OpenCV 4.6 and the
 *          golden LMDB written by Caffe with OpenCV 4.5.
 *   encode JPEG: TurboJPEG, 4:2:0, given quality (what cv::imencode does
 *          with libjpeg-turbo). PNG: libpng with OpenCV's settings (SUB
 *          filter, zlib level 1, Z_RLE).
 */
#include "image.h"

#include <float.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "util.h"

/* ---- warnings ----------------------------------------------------------- */

static _Thread_local char g_warning[512];

const char *image_decode_warning(void) { return g_warning; }

static void set_warning(const char *prefix, const char *msg) {
  snprintf(g_warning, sizeof g_warning, "%s%s", prefix, msg);
}

/* ---- format sniffing ---------------------------------------------------- */

ImageFormat image_sniff(const uint8_t *buf, size_t len) {
  if (!buf) return IMG_UNKNOWN;
  if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return IMG_JPEG;
  if (len >= 4 && buf[0] == 0x89 && buf[1] == 'P' && buf[2] == 'N' && buf[3] == 'G') return IMG_PNG;
  if (len >= 4 && memcmp(buf, "GIF8", 4) == 0) return IMG_GIF;
  if (len >= 2 && buf[0] == 'B' && buf[1] == 'M') return IMG_BMP;
  if (len >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WEBP", 4) == 0) return IMG_WEBP;
  return IMG_UNKNOWN;
}

const char *image_format_name(ImageFormat f) {
  switch (f) {
    case IMG_JPEG: return "JPEG";
    case IMG_PNG: return "PNG";
    case IMG_GIF: return "GIF";
    case IMG_BMP: return "BMP";
    case IMG_WEBP: return "WEBP";
    default: return "unknown";
  }
}

void image_free(Image *im) {
  if (!im) return;
  free(im->px);
  im->px = NULL;
  im->h = im->w = im->c = 0;
}

static int check_dims(const char *fmt, long long w, long long h) {
  if (w <= 0 || h <= 0) return moka_errorf("%s image has an invalid size %lldx%lld", fmt, w, h);
  if (w > 65500 || h > 65500 || (unsigned long long)w * (unsigned long long)h > MOKA_IMAGE_MAX_PIXELS)
    return moka_errorf("%s image is %lldx%lld (%lld pixels): too large (limits: 65500 per side, "
                       "%u pixels)",
                       fmt, w, h, w * h, MOKA_IMAGE_MAX_PIXELS);
  return 0;
}

/* ---- EXIF orientation (OpenCV's ApplyExifOrientation) ------------------- */

static unsigned rd16(const uint8_t *p, int le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }
static uint32_t rd32(const uint8_t *p, int le) {
  return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
            : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The orientation tag (1..8) of the first APP1 "Exif" segment of a JPEG, or
 * 1 when there is none or it cannot be read. */
static int jpeg_exif_orientation(const uint8_t *buf, size_t len) {
  size_t pos = 2;
  while (pos + 4 <= len) {
    if (buf[pos] != 0xFF) return 1;
    uint8_t marker = buf[pos + 1];
    if (marker == 0xFF) { /* fill byte */
      pos++;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return 1; /* start of scan / end: no EXIF */
    size_t seglen = (size_t)buf[pos + 2] << 8 | buf[pos + 3];
    if (seglen < 2 || pos + 2 + seglen > len) return 1;
    const uint8_t *seg = buf + pos + 4;
    size_t n = seglen - 2;
    if (marker == 0xE1 && n >= 14 && memcmp(seg, "Exif\0\0", 6) == 0) {
      const uint8_t *t = seg + 6; /* TIFF header */
      size_t tn = n - 6;
      int le;
      if (t[0] == 'I' && t[1] == 'I') le = 1;
      else if (t[0] == 'M' && t[1] == 'M') le = 0;
      else return 1;
      uint32_t ifd = rd32(t + 4, le);
      if (ifd > tn || tn - ifd < 2) return 1;
      unsigned count = rd16(t + ifd, le);
      for (unsigned i = 0; i < count; i++) {
        size_t e = ifd + 2 + (size_t)i * 12;
        if (e + 12 > tn) return 1;
        if (rd16(t + e, le) == 0x0112) {
          unsigned type = rd16(t + e + 2, le);
          unsigned v = type == 3 ? rd16(t + e + 8, le) : type == 4 ? rd32(t + e + 8, le) : 1;
          return v >= 1 && v <= 8 ? (int)v : 1;
        }
      }
      return 1;
    }
    pos += 2 + seglen;
  }
  return 1;
}

/* Rotate/flip im in place (new buffer) for EXIF orientation o:
 * 2 flip horizontally, 3 rotate 180, 4 flip vertically, 5 transpose,
 * 6 transpose + flip horizontally (90 clockwise), 7 transpose + flip both,
 * 8 transpose + flip vertically (90 counter-clockwise). */
static int apply_orientation(Image *im, int o) {
  if (o <= 1 || o > 8) return 0;
  int h = im->h, w = im->w, c = im->c;
  int transpose = o >= 5;
  int nh = transpose ? w : h, nw = transpose ? h : w;
  int flip_h = o == 2 || o == 3 || o == 6 || o == 7;
  int flip_v = o == 3 || o == 4 || o == 7 || o == 8;
  uint8_t *dst = moka_malloc((size_t)h * w * c); /* (nh,nw,c) */
  if (!dst) return -1;
  for (int y = 0; y < nh; y++)
    for (int x = 0; x < nw; x++) {
      /* position in the transposed (or not) image before flipping */
      int ty = flip_v ? nh - 1 - y : y;
      int tx = flip_h ? nw - 1 - x : x;
      int sy = transpose ? tx : ty, sx = transpose ? ty : tx;
      memcpy(dst + ((size_t)y * nw + x) * c, im->px + ((size_t)sy * w + sx) * c, (size_t)c);
    }
  free(im->px);
  im->px = dst;
  im->h = nh;
  im->w = nw;
  return 0;
}

/* ---- JPEG ----------------------------------------------------------------- */

/* OpenCV's CMYK -> BGR / grey (imgcodecs utils.cpp), on libjpeg's CMYK
 * output (Adobe files store inverted CMYK; this formula expects exactly what
 * libjpeg returns for them). */
static void cmyk_to_bgr(const uint8_t *cmyk, uint8_t *bgr, size_t n) {
  for (size_t i = 0; i < n; i++, cmyk += 4, bgr += 3) {
    int c = cmyk[0], m = cmyk[1], y = cmyk[2], k = cmyk[3];
    c = k - ((255 - c) * k >> 8);
    m = k - ((255 - m) * k >> 8);
    y = k - ((255 - y) * k >> 8);
    bgr[2] = (uint8_t)c;
    bgr[1] = (uint8_t)m;
    bgr[0] = (uint8_t)y;
  }
}

static void cmyk_to_gray(const uint8_t *cmyk, uint8_t *gray, size_t n) {
  enum { SCALE = 14, CR = 4899, CG = 9617, CB = (1 << SCALE) - CR - CG }; /* 0.299, 0.587 */
  for (size_t i = 0; i < n; i++, cmyk += 4) {
    int c = cmyk[0], m = cmyk[1], y = cmyk[2], k = cmyk[3];
    c = k - ((255 - c) * k >> 8);
    m = k - ((255 - m) * k >> 8);
    y = k - ((255 - y) * k >> 8);
    gray[i] = (uint8_t)((y * CB + m * CG + c * CR + (1 << (SCALE - 1))) >> SCALE);
  }
}

/* The smallest TurboJPEG scaling factor of at most 1/2 that keeps a w x h
 * JPEG at least min_w x min_h; 1/1 when none does (or min_w/min_h <= 0).
 * Factors between 1/2 and 1 (7/8, 3/4, 5/8) are not used: their scaled
 * IDCTs have no SIMD code in libjpeg-turbo on x86 and measured slower than a
 * full-size decode (hymenoptera to 256x256: 0.51 s of decoding against
 * 0.42 s). */
static tjscalingfactor jpeg_reduce_factor(int w, int h, int min_w, int min_h) {
  tjscalingfactor best = {1, 1};
  if (min_w <= 0 || min_h <= 0) return best;
  int n = 0;
  tjscalingfactor *sf = tjGetScalingFactors(&n);
  for (int i = 0; sf && i < n; i++) {
    if (2 * sf[i].num > sf[i].denom) continue; /* above 1/2 */
    if (TJSCALED(w, sf[i]) < min_w || TJSCALED(h, sf[i]) < min_h) continue;
    if ((long long)sf[i].num * best.denom < (long long)best.num * sf[i].denom) best = sf[i];
  }
  return best;
}

/* Decode a JPEG. min_w/min_h > 0: shrink in the DCT domain (see
 * image_decode_reduced; the sizes are after EXIF orientation).
 * header_only: fill out->h/w/c (after orientation) and decode nothing. */
static int decode_jpeg(const uint8_t *buf, size_t len, int channels, int min_h, int min_w,
                       int header_only, Image *out) {
  tjhandle tj = tjInitDecompress();
  if (!tj) return moka_errorf("JPEG: cannot start the decoder: %s", tjGetErrorStr2(NULL));
  int w = 0, h = 0, subsamp = 0, cs = 0, rc = -1;
  uint8_t *px = NULL, *tmp = NULL;
  if (tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &subsamp, &cs) != 0) {
    moka_errorf("JPEG: cannot read the header: %s", tjGetErrorStr2(tj));
    goto done;
  }
  if (check_dims("JPEG", w, h) != 0) goto done;
  int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
  int c = channels ? channels : (cs == TJCS_GRAY ? 1 : 3);
  const int orient = channels ? jpeg_exif_orientation(buf, len) : 1;
  if (header_only) {
    out->h = orient >= 5 ? w : h;
    out->w = orient >= 5 ? h : w;
    out->c = c;
    rc = 0;
    goto done;
  }
  if (min_h > 0 && min_w > 0) {
    /* the minimum is for the oriented image; the factor applies to the stored one */
    tjscalingfactor f = orient >= 5 ? jpeg_reduce_factor(w, h, min_h, min_w)
                                    : jpeg_reduce_factor(w, h, min_w, min_h);
    w = TJSCALED(w, f);
    h = TJSCALED(h, f);
  }
  size_t npix = (size_t)w * (size_t)h;
  px = moka_malloc(npix * (size_t)c); /* (H,W,C) */
  if (!px) goto done;
  int pf = cmyk ? TJPF_CMYK : c == 3 ? TJPF_BGR : TJPF_GRAY;
  uint8_t *dst = px;
  if (cmyk) {
    tmp = moka_malloc(npix * 4); /* (H,W,4) CMYK as libjpeg returns it */
    if (!tmp) goto done;
    dst = tmp;
  }
  if (tjDecompress2(tj, buf, (unsigned long)len, dst, w, 0, h, pf, 0) != 0) {
    if (tjGetErrorCode(tj) == TJERR_FATAL) {
      moka_errorf("JPEG: %s", tjGetErrorStr2(tj));
      goto done;
    }
    /* A warning (truncated data, corrupt entropy data, ...): libjpeg has
     * filled the rest; OpenCV (and so Caffe) accepts such images. */
    set_warning("JPEG: ", tjGetErrorStr2(tj));
  }
  if (cmyk) {
    if (c == 3) cmyk_to_bgr(tmp, px, npix);
    else cmyk_to_gray(tmp, px, npix);
  }
  out->h = h;
  out->w = w;
  out->c = c;
  out->px = px;
  px = NULL;
  if (channels && apply_orientation(out, orient) != 0) {
    image_free(out);
    goto done;
  }
  rc = 0;
done:
  free(px);
  free(tmp);
  tjDestroy(tj);
  return rc;
}

/* ---- PNG ------------------------------------------------------------------ */

typedef struct PngReader {
  const uint8_t *buf;
  size_t len, pos;
  char msg[512];
} PngReader;

static void png_on_error(png_structp png, png_const_charp msg) {
  PngReader *r = png_get_error_ptr(png);
  snprintf(r->msg, sizeof r->msg, "PNG: %s", msg);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  set_warning("PNG: ", msg);
}

static void png_read_mem(png_structp png, png_bytep data, size_t n) {
  PngReader *r = png_get_io_ptr(png);
  if (r->len - r->pos < n) png_error(png, "truncated file (the data ends early)");
  memcpy(data, r->buf + r->pos, n);
  r->pos += n;
}

static int decode_png(const uint8_t *buf, size_t len, int channels, int header_only, Image *out) {
  PngReader rd = {buf, len, 0, ""};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &rd, png_on_error, png_on_warning);
  if (!png) return moka_errorf("PNG: cannot start the decoder");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return moka_errorf("PNG: cannot start the decoder");
  }
  uint8_t *volatile px = NULL;
  png_bytep *volatile rows = NULL;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    free(px);
    free(rows);
    return moka_errorf("%s", rd.msg);
  }
  png_set_read_fn(png, &rd, png_read_mem);
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int bit_depth = 0, color_type = 0;
  png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, NULL, NULL, NULL);
  if (check_dims("PNG", (long long)w, (long long)h) != 0) {
    snprintf(rd.msg, sizeof rd.msg, "%s", moka_error());
    png_longjmp(png, 1);
  }
  int has_color = (color_type & PNG_COLOR_MASK_COLOR) != 0;
  int c = channels;
  if (!c) {
    /* IMREAD_UNCHANGED: OpenCV keeps alpha (4 channels) and 16 bits. */
    int has_alpha = (color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS);
    if (has_alpha || bit_depth == 16) {
      snprintf(rd.msg, sizeof rd.msg,
               "PNG: %s image: decoded natively (as Caffe decodes encoded Datums) OpenCV would return "
               "%s pixels, which Caffe's Data layer cannot use; set transform_param "
               "force_color (or force_gray), or store the image as JPEG or 8-bit PNG without "
               "alpha",
               bit_depth == 16 ? "16-bit" : "transparent",
               bit_depth == 16 ? "16-bit" : "4-channel BGRA");
      png_longjmp(png, 1);
    }
    c = has_color ? 3 : 1;
  }
  if (header_only) {
    png_destroy_read_struct(&png, &info, NULL);
    out->h = (int)h;
    out->w = (int)w;
    out->c = c;
    return 0;
  }
  /* The transformations OpenCV's PngDecoder::readData asks for, in order. */
  if (bit_depth == 16) png_set_strip_16(png);
  png_set_strip_alpha(png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (!has_color && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (has_color && c == 3) png_set_bgr(png);
  else if (c == 3) png_set_gray_to_rgb(png);
  else png_set_rgb_to_gray(png, 1, 0.299, 0.587);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != (size_t)w * (size_t)c) {
    snprintf(rd.msg, sizeof rd.msg, "PNG: unexpected row size %zu for %u pixels x %d channels",
             (size_t)png_get_rowbytes(png, info), (unsigned)w, c);
    png_longjmp(png, 1);
  }
  px = malloc((size_t)w * h * (size_t)c); /* (H,W,C) */
  rows = malloc(sizeof(png_bytep) * h);
  if (!px || !rows) {
    snprintf(rd.msg, sizeof rd.msg, "PNG: out of memory for a %ux%u image", (unsigned)w, (unsigned)h);
    png_longjmp(png, 1);
  }
  for (png_uint_32 y = 0; y < h; y++) rows[y] = px + (size_t)y * w * (size_t)c;
  png_read_image(png, rows);
  png_read_end(png, NULL);
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  out->h = (int)h;
  out->w = (int)w;
  out->c = c;
  out->px = px;
  return 0;
}

/* ---- decode entry points -------------------------------------------------- */

static int decode_any(const uint8_t *buf, size_t len, int channels, int min_h, int min_w,
                      int header_only, Image *out) {
  memset(out, 0, sizeof *out);
  g_warning[0] = 0;
  if (channels != 0 && channels != 1 && channels != 3)
    return moka_errorf("cannot decode to %d channels (1 = grey, 3 = BGR, 0 = as stored)",
                       channels);
  if (len == 0) return moka_errorf("empty file");
  ImageFormat f = image_sniff(buf, len);
  switch (f) {
    case IMG_JPEG: return decode_jpeg(buf, len, channels, min_h, min_w, header_only, out);
    case IMG_PNG: return decode_png(buf, len, channels, header_only, out);
    case IMG_GIF:
    case IMG_BMP:
    case IMG_WEBP:
      return moka_errorf("%s image: not supported (convert it to JPEG or PNG)",
                         image_format_name(f));
    default: {
      char hex[3 * 8 + 1] = "";
      int off = 0;
      for (size_t i = 0; i < len && i < 8; i++)
        off += snprintf(hex + off, sizeof hex - (size_t)off, "%s%02x", i ? " " : "", buf[i]);
      return moka_errorf("not a JPEG or PNG image (unrecognised content, first bytes: %s)", hex);
    }
  }
}

int image_decode(const uint8_t *buf, size_t len, int channels, Image *out) {
  return decode_any(buf, len, channels, 0, 0, 0, out);
}

int image_decode_reduced(const uint8_t *buf, size_t len, int channels, int min_h, int min_w,
                         Image *out) {
  return decode_any(buf, len, channels, min_h, min_w, 0, out);
}

int image_probe(const uint8_t *buf, size_t len, int channels, int *h, int *w, int *c) {
  Image im;
  if (decode_any(buf, len, channels, 0, 0, 1, &im) != 0) return -1;
  if (h) *h = im.h;
  if (w) *w = im.w;
  if (c) *c = im.c;
  return 0;
}

int image_read_file(const char *path, int channels, Image *out) {
  memset(out, 0, sizeof *out);
  g_warning[0] = 0;
  uint8_t *data = NULL;
  size_t len = 0;
  if (moka_read_file(path, &data, &len) != 0) return -1; /* names the path */
  int rc = image_decode(data, len, channels, out);
  free(data);
  if (rc != 0) return moka_error_prefix("%s", path);
  return 0;
}

/* ---- resize (cv::resize INTER_LINEAR, uint8) ------------------------------ */

enum { COEF_BITS = 11, COEF_SCALE = 1 << COEF_BITS };

/* OpenCV's source index and 11-bit weights for destination index d along an
 * axis of `src` pixels, with scale = 1 / (dst/src) in double as OpenCV has
 * it. `clamp_weights` is the horizontal rule (at a border the weight of the
 * outside pixel becomes 0); vertically OpenCV keeps the weights and clamps
 * the row indices instead. */
static void linear_coef(int d, double scale, int src, int clamp_weights, int *s0, short w[2]) {
  float f = (float)((d + 0.5) * scale - 0.5);
  int s = (int)floorf(f);
  f -= (float)s;
  if (clamp_weights) {
    if (s < 0) f = 0, s = 0;
    if (s + 1 >= src) f = 0, s = src - 1;
  }
  *s0 = s;
  w[0] = (short)lrintf((1.f - f) * (float)COEF_SCALE);
  w[1] = (short)lrintf(f * (float)COEF_SCALE);
}

/* Horizontal pass of one source row (sw,C) into d (new_w*C) int32 values
 * scaled by 2^11: exact integer arithmetic, as OpenCV's HResizeLinear. */
static void hresize_row(const uint8_t *s, int new_w, int c, const int *xofs, const short *alpha,
                        int *d) {
  for (int x = 0; x < new_w; x++) {
    const uint8_t *p = s + (size_t)xofs[x] * c;
    for (int ch = 0; ch < c; ch++) {
      int v = p[ch] * alpha[2 * x];
      if (alpha[2 * x + 1]) v += p[c + ch] * alpha[2 * x + 1]; /* 0 at the right border */
      d[x * c + ch] = v;
    }
  }
}

int image_resize_bilinear(const Image *in, int new_h, int new_w, Image *out) {
  memset(out, 0, sizeof *out);
  if (!in || !in->px || in->h <= 0 || in->w <= 0 || (in->c != 1 && in->c != 3))
    return moka_errorf("resize: invalid source image");
  if (new_h <= 0 || new_w <= 0)
    return moka_errorf("resize: invalid target size %dx%d (width x height)", new_w, new_h);
  if (check_dims("resized", new_w, new_h) != 0) return -1;
  const int c = in->c, sw = in->w, sh = in->h;
  uint8_t *dst = moka_malloc((size_t)new_h * new_w * c); /* (new_h,new_w,C) */
  if (!dst) return -1;
  out->h = new_h;
  out->w = new_w;
  out->c = c;
  out->px = dst;
  const uint8_t *src = in->px; /* (sh,sw,C) */
  if (new_h == sh && new_w == sw) {
    memcpy(dst, src, (size_t)sh * sw * c);
    return 0;
  }
  double scale_x = 1.0 / ((double)new_w / sw), scale_y = 1.0 / ((double)new_h / sh);
  if (fabs(scale_x - 2.0) < DBL_EPSILON && fabs(scale_y - 2.0) < DBL_EPSILON) {
    /* OpenCV switches an exact 2x downscale to INTER_AREA's fast path:
     * the rounded mean of each 2x2 block. */
    for (int y = 0; y < new_h; y++)
      for (int x = 0; x < new_w; x++)
        for (int k = 0; k < c; k++) {
          const uint8_t *p = src + ((size_t)(2 * y) * sw + 2 * x) * c + k;
          int sum = p[0] + p[c] + p[(size_t)sw * c] + p[(size_t)sw * c + c];
          dst[((size_t)y * new_w + x) * c + k] = (uint8_t)((sum + 2) >> 2);
        }
    return 0;
  }
  const int row_len = new_w * c;
  int *xofs = moka_malloc(sizeof(int) * (size_t)new_w);       /* (new_w) source x */
  short *alpha = moka_malloc(sizeof(short) * 2 * (size_t)new_w); /* (new_w,2) */
  int *rowbuf = moka_malloc(sizeof(int) * 2 * (size_t)row_len); /* (2,new_w*C) */
  if (!xofs || !alpha || !rowbuf) {
    free(xofs);
    free(alpha);
    free(rowbuf);
    image_free(out);
    return -1;
  }
  for (int x = 0; x < new_w; x++) linear_coef(x, scale_x, sw, 1, &xofs[x], alpha + 2 * x);
  int cached[2] = {-1, -1}; /* source row held in rowbuf slot 0 / 1 */
  for (int y = 0; y < new_h; y++) {
    int sy;
    short beta[2];
    linear_coef(y, scale_y, sh, 0, &sy, beta);
    /* OpenCV clamps the row indices, not the weights, vertically. */
    int want0 = MOKA_MIN(MOKA_MAX(sy, 0), sh - 1), want1 = MOKA_MIN(MOKA_MAX(sy + 1, 0), sh - 1);
    int slot0, slot1;
    if (cached[0] == want0) slot0 = 0;
    else if (cached[1] == want0) slot0 = 1;
    else {
      slot0 = cached[0] == want1 ? 1 : 0; /* keep the slot holding want1 */
      hresize_row(src + (size_t)want0 * sw * c, new_w, c, xofs, alpha,
                  rowbuf + (size_t)slot0 * row_len);
      cached[slot0] = want0;
    }
    if (want1 == want0) slot1 = slot0;
    else if (cached[1 - slot0] == want1) slot1 = 1 - slot0;
    else {
      slot1 = 1 - slot0;
      hresize_row(src + (size_t)want1 * sw * c, new_w, c, xofs, alpha,
                  rowbuf + (size_t)slot1 * row_len);
      cached[slot1] = want1;
    }
    const int *rows[2] = {rowbuf + (size_t)slot0 * row_len, rowbuf + (size_t)slot1 * row_len};
    /* vertical pass, OpenCV's VResizeLinearVec_32s8u arithmetic:
     * ((S0>>4)*b0 >> 16) + ((S1>>4)*b1 >> 16), rounded shift by 2. */
    uint8_t *drow = dst + (size_t)y * row_len;
    for (int x = 0; x < row_len; x++) {
      int v = (((rows[0][x] >> 4) * beta[0]) >> 16) + (((rows[1][x] >> 4) * beta[1]) >> 16);
      v = (v + 2) >> 2;
      drow[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
  free(xofs);
  free(alpha);
  free(rowbuf);
  return 0;
}

/* ---- encode --------------------------------------------------------------- */

static int check_image(const Image *im, const char *what) {
  if (!im || !im->px || im->h <= 0 || im->w <= 0 || (im->c != 1 && im->c != 3))
    return moka_errorf("%s: invalid image", what);
  return 0;
}

int image_encode_jpeg(const Image *im, int quality, uint8_t **buf, size_t *len) {
  *buf = NULL;
  *len = 0;
  if (check_image(im, "JPEG encode") != 0) return -1;
  if (quality < 1 || quality > 100)
    return moka_errorf("JPEG encode: quality %d is outside 1..100", quality);
  /* TurboJPEG would switch to the fast (less accurate) forward DCT below
   * quality 96; libjpeg's default, which OpenCV keeps, is the accurate one. */
  tjhandle tj = tjInitCompress();
  if (!tj) return moka_errorf("JPEG encode: cannot start the encoder: %s", tjGetErrorStr2(NULL));
  unsigned char *jbuf = NULL;
  unsigned long jlen = 0;
  int rc = tjCompress2(tj, im->px, im->w, 0, im->h, im->c == 3 ? TJPF_BGR : TJPF_GRAY, &jbuf,
                       &jlen, im->c == 3 ? TJSAMP_420 : TJSAMP_GRAY, quality,
                       TJFLAG_ACCURATEDCT);
  if (rc != 0) {
    moka_errorf("JPEG encode: %s", tjGetErrorStr2(tj));
    tjFree(jbuf);
    tjDestroy(tj);
    return -1;
  }
  tjDestroy(tj);
  *buf = moka_malloc(jlen);
  if (!*buf) {
    tjFree(jbuf);
    return -1;
  }
  memcpy(*buf, jbuf, jlen);
  *len = jlen;
  tjFree(jbuf);
  return 0;
}

typedef struct PngWriter {
  uint8_t *buf;
  size_t len, cap;
  int oom;
  char msg[256];
} PngWriter;

static void png_write_mem(png_structp png, png_bytep data, size_t n) {
  PngWriter *w = png_get_io_ptr(png);
  if (w->len + n > w->cap) {
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + n) cap *= 2;
    uint8_t *p = realloc(w->buf, cap);
    if (!p) {
      w->oom = 1;
      png_error(png, "out of memory");
    }
    w->buf = p;
    w->cap = cap;
  }
  memcpy(w->buf + w->len, data, n);
  w->len += n;
}

static void png_flush_mem(png_structp png) { (void)png; }

static void png_on_write_error(png_structp png, png_const_charp msg) {
  PngWriter *w = png_get_error_ptr(png);
  snprintf(w->msg, sizeof w->msg, "%s", msg);
  png_longjmp(png, 1);
}

int image_encode_png(const Image *im, uint8_t **buf, size_t *len) {
  *buf = NULL;
  *len = 0;
  if (check_image(im, "PNG encode") != 0) return -1;
  PngWriter wr = {0};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &wr, png_on_write_error, NULL);
  if (!png) return moka_errorf("PNG encode: cannot start the encoder");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, NULL);
    return moka_errorf("PNG encode: cannot start the encoder");
  }
  png_bytep *volatile rows = NULL;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    free(wr.buf);
    return moka_errorf("PNG encode: %s", wr.msg);
  }
  png_set_write_fn(png, &wr, png_write_mem, png_flush_mem);
  /* cv::imencode(".png") defaults: SUB filter, fastest zlib level, RLE. */
  png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_compression_level(png, Z_BEST_SPEED);
  png_set_compression_strategy(png, Z_RLE);
  png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8,
               im->c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_set_bgr(png);
  rows = malloc(sizeof(png_bytep) * (size_t)im->h);
  if (!rows) {
    snprintf(wr.msg, sizeof wr.msg, "out of memory");
    png_longjmp(png, 1);
  }
  for (int y = 0; y < im->h; y++) rows[y] = im->px + (size_t)y * im->w * im->c;
  png_write_image(png, rows);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  free(rows);
  *buf = wr.buf;
  *len = wr.len;
  return 0;
}
