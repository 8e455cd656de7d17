/* convert.c — Caffe's convert_imageset and compute_image_mean (see
 * convert.h). */
#include "data/convert.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "data/datum.h"
#include "data/db.h"
#include "image.h"
#include "proto_io.h"
#include "rng.h"
#include "util.h"

typedef struct ListLine {
  char *path;
  int label;
} ListLine;

/* Caffe reads the list with std::getline and splits each line at its last
 * space: path = before it, label = atoi(after it). A line without a space is
 * both (path = the line, label = atoi(line)). Empty lines count as lines. */
static int read_list(const char *file, ListLine **out, int *n) {
  uint8_t *text;
  size_t len;
  *out = NULL;
  *n = 0;
  if (moka_read_file(file, &text, &len) != 0) return moka_error_prefix("list file");
  int cap = 0;
  ListLine *lines = NULL;
  size_t pos = 0;
  while (pos < len) {
    size_t end = pos;
    while (end < len && text[end] != '\n') end++;
    if (*n == cap) {
      cap = cap ? cap * 2 : 1024;
      ListLine *p = moka_realloc(lines, (size_t)cap * sizeof *p);
      if (!p) goto fail;
      lines = p;
    }
    char *line = (char *)text + pos;
    text[end] = 0; /* (the buffer has a NUL after its last byte) */
    char *sp = strrchr(line, ' ');
    ListLine *l = &lines[*n];
    l->label = atoi(sp ? sp + 1 : line);
    if (sp) *sp = 0;
    l->path = moka_strdup(line);
    if (!l->path) goto fail;
    if (!sp && line[0])
      LOG_WARN("%s:%d: no space before a label; using the whole line as the path, label %d", file,
               *n + 1, l->label);
    (*n)++;
    pos = end + 1;
  }
  free(text);
  *out = lines;
  return 0;
fail:
  for (int i = 0; i < *n; i++) free(lines[i].path);
  free(lines);
  free(text);
  *n = 0;
  return -1;
}

/* boost::uniform_int<>(0, range) on a 32-bit engine (the "brange > range"
 * branch boost takes for these ranges). */
static uint32_t boost_uniform_int(Rng *r, uint32_t range) {
  if (range == 0) return 0;
  if (range == 0xFFFFFFFFu) return rng_u32(r);
  uint32_t bucket = 0xFFFFFFFFu / (range + 1u);
  if (0xFFFFFFFFu % (range + 1u) == range) bucket++;
  for (;;) {
    uint32_t v = rng_u32(r) / bucket;
    if (v <= range) return v;
  }
}

/* caffe::shuffle (include/caffe/util/rng.hpp): Fisher-Yates from the end. */
static void caffe_shuffle(ListLine *l, int n, Rng *r) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)boost_uniform_int(r, (uint32_t)i);
    ListLine t = l[i];
    l[i] = l[j];
    l[j] = t;
  }
}

static void lower(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

/* Caffe's matchExt: the file's extension (lowercased) equals the encoding,
 * or is "jpeg" for "jpg". */
static bool match_ext(const char *file, const char *enc) {
  const char *dot = strrchr(file, '.');
  char ext[32];
  snprintf(ext, sizeof ext, "%s", dot ? dot + 1 : file);
  lower(ext);
  return !strcmp(ext, enc) || (!strcmp(enc, "jpg") && !strcmp(ext, "jpeg"));
}

static bool supported_encoding(const char *enc) {
  return !strcmp(enc, "jpg") || !strcmp(enc, "jpeg") || !strcmp(enc, "png");
}

/* Build the Datum for one file. Returns 0, -1 on an error that stops the
 * conversion, or 1 when the file is to be skipped (*why says why). */
static int make_datum(const ConvertOptions *o, const char *file, const char *path, int label,
                      const char *encode_type, Caffe__Datum *d, char *why, size_t why_len) {
  uint8_t *bytes = NULL;
  size_t len = 0;
  Image im = {0}, rs = {0};
  int rc = 1;
  if (moka_read_file(path, &bytes, &len) != 0) {
    snprintf(why, why_len, "%s", moka_error());
    return 1;
  }
  if (image_decode(bytes, len, o->gray ? 1 : 3, &im) != 0) {
    snprintf(why, why_len, "%s", moka_error());
    goto done;
  }
  if (image_decode_warning()[0])
    LOG_WARN("%s: %s (accepted, as OpenCV does)", path, image_decode_warning());
  const bool resize = o->resize_height > 0 && o->resize_width > 0;
  const Image *use = &im;
  if (resize) {
    if (image_resize_bilinear(&im, o->resize_height, o->resize_width, &rs) != 0) {
      snprintf(why, why_len, "%s", moka_error());
      goto done;
    }
    use = &rs;
  }
  if (encode_type) {
    char enc[64];
    snprintf(enc, sizeof enc, "%s", encode_type);
    lower(enc);
    if (!resize && match_ext(file, enc)) {
      /* Caffe's ReadFileToDatum: the file itself */
      rc = datum_from_encoded(bytes, len, label, d) == 0 ? 0 : -1;
      goto done;
    }
    if (!supported_encoding(enc)) {
      snprintf(why, why_len, "cannot encode as '%s' (jpg or png; use --encode_type)", enc);
      goto done;
    }
    uint8_t *enc_bytes = NULL;
    size_t enc_len = 0;
    int erc = enc[0] == 'p' ? image_encode_png(use, &enc_bytes, &enc_len)
                            : image_encode_jpeg(use, 95, &enc_bytes, &enc_len);
    if (erc != 0) {
      rc = -1;
      goto done;
    }
    rc = datum_from_encoded(enc_bytes, enc_len, label, d) == 0 ? 0 : -1;
    free(enc_bytes);
    goto done;
  }
  rc = datum_from_image(use, label, d) == 0 ? 0 : -1;
done:
  free(bytes);
  image_free(&im);
  image_free(&rs);
  return rc;
}

int convert_imageset(const ConvertOptions *o, ConvertStats *stats) {
  ConvertStats st = {0};
  if (stats) *stats = st;
  const bool encoded = o->encoded || (o->encode_type && o->encode_type[0]);
  if (o->encode_type && o->encode_type[0]) {
    char enc[32];
    snprintf(enc, sizeof enc, "%s", o->encode_type);
    lower(enc);
    if (!supported_encoding(enc))
      return moka_errorf("convert_imageset: --encode_type=%s is not supported (jpg or png)",
                         o->encode_type);
  }
  if (o->check_size && encoded)
    return moka_errorf("convert_imageset: --check_size compares raw pixel sizes; it cannot be "
                       "used with --encoded");
  if (o->resize_height < 0 || o->resize_width < 0)
    LOG_WARN("negative resize sizes are treated as 0 (no resize), as Caffe does");
  ListLine *lines;
  int n;
  if (read_list(o->list, &lines, &n) != 0) return -1;
  st.lines = n;
  if (o->shuffle) {
    LOG_INFO("Shuffling data");
    Rng r;
    rng_seed(&r, o->shuffle_seed);
    caffe_shuffle(lines, n, &r);
  }
  LOG_INFO("A total of %d images.", n);
  if (o->encode_type && o->encode_type[0] && !o->encoded)
    LOG_INFO("encode_type specified, assuming encoded=true.");
  DbWriter *w = NULL;
  int rc = -1;
  if (db_writer_open(o->db, &w) != 0) goto done;
  size_t want_size = 0;
  for (int i = 0; i < n; i++) {
    const char *file = lines[i].path;
    char enc_buf[64];
    const char *enc = NULL;
    if (encoded) {
      if (o->encode_type && o->encode_type[0]) {
        enc = o->encode_type;
      } else {
        const char *dot = strrchr(file, '.');
        if (!dot || strchr(dot, '/')) {
          LOG_WARN("skipping %s%s: cannot guess the encoding from a name without an "
                   "extension (use --encode_type)",
                   o->root, file);
          st.skipped++;
          continue;
        }
        snprintf(enc_buf, sizeof enc_buf, "%s", dot + 1);
        lower(enc_buf);
        enc = enc_buf;
      }
    }
    size_t plen = strlen(o->root) + strlen(file) + 1;
    char *path = moka_malloc(plen);
    if (!path) goto done;
    snprintf(path, plen, "%s%s", o->root, file);
    Caffe__Datum d;
    char why[1024];
    caffe__datum__init(&d);
    int mrc = make_datum(o, file, path, lines[i].label, enc, &d, why, sizeof why);
    if (mrc < 0) {
      moka_error_prefix("%s", path);
      free(path);
      goto done;
    }
    if (mrc > 0) {
      LOG_WARN("skipping %s: %s", path, why);
      free(path);
      st.skipped++;
      continue;
    }
    free(path);
    if (o->check_size) {
      size_t sz = d.data.len;
      if (st.written == 0) {
        want_size = (size_t)d.channels * d.height * d.width;
      } else if (sz != want_size) {
        moka_errorf("convert_imageset: --check_size: %s%s has %zu bytes of pixels, the first "
                    "record %zu (use --resize_height/--resize_width)",
                    o->root, file, sz, want_size);
        datum_clear(&d);
        goto done;
      }
    }
    size_t klen = strlen(file) + 16;
    char *key = moka_malloc(klen);
    uint8_t *val = NULL;
    size_t vlen = 0;
    int prc = key ? datum_pack(&d, &val, &vlen) : -1;
    datum_clear(&d);
    if (prc != 0) {
      free(key);
      goto done;
    }
    int kn = snprintf(key, klen, "%08d_%s", i, file);
    prc = db_writer_put(w, key, (size_t)kn, val, vlen);
    free(key);
    free(val);
    if (prc != 0) goto done;
    if (++st.written % 1000 == 0) LOG_INFO("Processed %d files.", st.written);
  }
  if (db_writer_close(w) != 0) {
    w = NULL;
    goto done;
  }
  w = NULL;
  if (st.written % 1000 != 0) LOG_INFO("Processed %d files.", st.written);
  if (st.skipped)
    LOG_WARN("%d of %d listed images were skipped (see the lines above); %d written to %s",
             st.skipped, n, st.written, o->db);
  rc = 0;
done:
  if (w) db_writer_abort(w);
  for (int i = 0; i < n; i++) free(lines[i].path);
  free(lines);
  if (stats) *stats = st;
  return rc;
}

int compute_image_mean(const char *db, const char *out_file, float *channel_means,
                       int max_channels, int *channels) {
  DbReader *r;
  if (channels) *channels = 0;
  if (db_reader_open(db, &r) != 0) return -1;
  DatumPixels px = {0};
  float *sum = NULL; /* (C,H,W), accumulated in float like Caffe's BlobProto */
  int C = 0, H = 0, W = 0, rc = -1;
  size_t count = 0, dim = 0;
  const size_t total = db_reader_count(r);
  for (size_t k = 0; k < total; k++) {
    const void *v;
    size_t vlen;
    db_reader_current(r, NULL, NULL, &v, &vlen);
    char what[320];
    snprintf(what, sizeof what, "LMDB '%s', record '%s'", db, db_reader_key_str(r));
    Caffe__Datum *d;
    if (datum_unpack(v, vlen, what, &d) != 0) goto done;
    int drc = datum_decode(d, 0, what, &px);
    if (k == 0 && drc == 0 && d->encoded) LOG_INFO("Decoding Datum");
    caffe__datum__free_unpacked(d, NULL);
    if (drc != 0) goto done;
    if (k == 0) {
      C = px.c, H = px.h, W = px.w;
      dim = (size_t)C * H * W;
      sum = moka_calloc(dim, sizeof(float));
      if (!sum) goto done;
      LOG_INFO("Starting iteration");
    } else if (px.c != C || px.h != H || px.w != W) {
      moka_errorf("%s: %dx%dx%d (CxHxW), but the first record is %dx%dx%d: all images must have "
                  "the same size (convert with --resize_height/--resize_width)",
                  what, px.c, px.h, px.w, C, H, W);
      goto done;
    }
    for (size_t i = 0; i < dim; i++) sum[i] = sum[i] + px.data[i];
    if (++count % 10000 == 0) LOG_INFO("Processed %zu files.", count);
    if (db_reader_next(r, NULL) != 0) goto done;
  }
  if (count % 10000 != 0) LOG_INFO("Processed %zu files.", count);
  for (size_t i = 0; i < dim; i++) sum[i] = sum[i] / (float)count;
  if (out_file) {
    LOG_INFO("Write to %s", out_file);
    Caffe__BlobProto bp;
    caffe__blob_proto__init(&bp);
    bp.has_num = bp.has_channels = bp.has_height = bp.has_width = 1;
    bp.num = 1;
    bp.channels = C;
    bp.height = H;
    bp.width = W;
    bp.n_data = dim;
    bp.data = sum;
    if (proto_write_binary(&bp.base, out_file) != 0) goto done;
  }
  LOG_INFO("Number of channels: %d", C);
  const size_t hw = (size_t)H * W;
  for (int c = 0; c < C; c++) {
    float m = 0.0f;
    for (size_t i = 0; i < hw; i++) m += sum[c * hw + i];
    LOG_INFO("mean_value channel [%d]: %g", c, (double)(m / (float)hw));
    if (channel_means && c < max_channels) channel_means[c] = m / (float)hw;
  }
  if (channels) *channels = C;
  rc = 0;
done:
  free(sum);
  datum_pixels_free(&px);
  db_reader_close(r);
  return rc;
}
