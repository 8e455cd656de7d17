/* transform.c — Caffe's DataTransformer for Datums (see transform.h). This
 * is the reference implementation: plain loops, Caffe's float arithmetic. */
#include "data/transform.h"

#include <stdlib.h>
#include <string.h>

#include "proto_io.h"
#include "util.h"

void transform_free(Transformer *t) {
  if (!t) return;
  free(t->mean);
  free(t->mean_values);
  memset(t, 0, sizeof *t);
}

static int load_mean_file(Transformer *t, const char *path, const char *what) {
  Caffe__BlobProto *bp = NULL;
  if (proto_read_binary(&caffe__blob_proto__descriptor, path, (ProtobufCMessage **)&bp) != 0)
    return moka_error_prefix("%s: transform_param.mean_file", what);
  int n, shape[MOKA_MAX_AXES], rc = -1;
  if (blobproto_shape(bp, &n, shape) != 0) {
    moka_error_prefix("%s: mean_file '%s'", what, path);
    goto done;
  }
  if (n == 4 && shape[0] == 1) {
    t->mean_c = shape[1], t->mean_h = shape[2], t->mean_w = shape[3];
  } else if (n == 3) {
    t->mean_c = shape[0], t->mean_h = shape[1], t->mean_w = shape[2];
  } else {
    moka_errorf("%s: mean_file '%s' must hold one (1,C,H,W) image mean; it has %d axes "
                "(first %d)",
                what, path, n, n ? shape[0] : 0);
    goto done;
  }
  size_t count = (size_t)t->mean_c * t->mean_h * t->mean_w;
  if (count == 0) {
    moka_errorf("%s: mean_file '%s' is empty", what, path);
    goto done;
  }
  t->mean = moka_malloc(count * sizeof(float)); /* (C,H,W) */
  if (!t->mean) goto done;
  if (bp->n_data == count) {
    memcpy(t->mean, bp->data, count * sizeof(float));
  } else if (bp->n_double_data == count) {
    for (size_t i = 0; i < count; i++) t->mean[i] = (float)bp->double_data[i];
  } else {
    moka_errorf("%s: mean_file '%s' declares %dx%dx%d but holds %zu values", what, path,
                t->mean_c, t->mean_h, t->mean_w, bp->n_data ? bp->n_data : bp->n_double_data);
    goto done;
  }
  rc = 0;
done:
  caffe__blob_proto__free_unpacked(bp, NULL);
  return rc;
}

int transform_init(Transformer *t, const Caffe__TransformationParameter *tp, int train,
                   const char *what) {
  memset(t, 0, sizeof *t);
  t->scale = 1.0f;
  t->train = train;
  if (!tp) return 0;
  t->scale = tp->scale;
  t->mirror = tp->mirror;
  t->crop_size = (int)tp->crop_size;
  if (tp->crop_size > 65535)
    return moka_errorf("%s: transform_param.crop_size %u is too large", what, tp->crop_size);
  t->force_color = tp->force_color;
  t->force_gray = tp->force_gray;
  if (t->force_color && t->force_gray)
    return moka_errorf("%s: transform_param sets both force_color and force_gray", what);
  if (tp->mean_file && tp->n_mean_value)
    return moka_errorf("%s: transform_param sets both mean_file and mean_value; use one", what);
  if (tp->mean_file && load_mean_file(t, tp->mean_file, what) != 0) {
    transform_free(t);
    return -1;
  }
  if (tp->n_mean_value) {
    t->mean_values = moka_malloc(tp->n_mean_value * sizeof(float));
    if (!t->mean_values) {
      transform_free(t);
      return -1;
    }
    memcpy(t->mean_values, tp->mean_value, tp->n_mean_value * sizeof(float));
    t->n_mean_values = (int)tp->n_mean_value;
  }
  return 0;
}

int transform_needs_rand(const Transformer *t) { return t->mirror || (t->train && t->crop_size); }

void transform_seed(const Transformer *t, Rng *global, Rng *own) {
  if (transform_needs_rand(t)) rng_seed(own, rng_u32(global));
}

int transform_decode_channels(const Transformer *t) {
  return t->force_color ? 3 : t->force_gray ? 1 : 0;
}

int transform_out_shape(const Transformer *t, int c, int h, int w, int *oc, int *oh, int *ow) {
  if (c <= 0 || h <= 0 || w <= 0) return moka_errorf("image of invalid size %dx%dx%d", c, h, w);
  if (t->crop_size && (h < t->crop_size || w < t->crop_size))
    return moka_errorf("image of %dx%d (width x height) is smaller than crop_size %d", w, h,
                       t->crop_size);
  if (t->mean && (c != t->mean_c || h != t->mean_h || w != t->mean_w))
    return moka_errorf("image is %dx%dx%d (CxHxW) but the mean_file is %dx%dx%d: the mean must "
                       "have the size of the (uncropped) images",
                       c, h, w, t->mean_c, t->mean_h, t->mean_w);
  if (t->n_mean_values && t->n_mean_values != 1 && t->n_mean_values != c)
    return moka_errorf("transform_param gives %d mean_value entries for %d-channel images: give "
                       "one, or one per channel",
                       t->n_mean_values, c);
  *oc = c;
  *oh = t->crop_size ? t->crop_size : h;
  *ow = t->crop_size ? t->crop_size : w;
  return 0;
}

int transform_draws_per_record(const Transformer *t) {
  return (t->mirror ? 1 : 0) + (t->train && t->crop_size ? 2 : 0);
}

int transform_apply(const Transformer *t, const DatumPixels *px, Rng *rng, float *out,
                    const char *what) {
  uint32_t draws[TRANSFORM_MAX_DRAWS];
  const int nd = transform_draws_per_record(t);
  if (nd && !rng) return moka_errorf("%s: the transform needs a random stream", what);
  /* Caffe draws even when the record then fails a check; so do we. */
  for (int k = 0; k < nd; k++) draws[k] = rng_u32(rng);
  return transform_apply_draws(t, px, draws, out, what);
}

/* Caffe's order of draws: the mirror coin first, then h_off, then w_off. */
static void crop_params(const Transformer *t, int H, int W, const uint32_t *draws, int *do_mirror,
                        int *h_off, int *w_off) {
  int k = 0;
  *do_mirror = t->mirror && (draws[k++] % 2u);
  *h_off = 0, *w_off = 0;
  if (t->crop_size) {
    if (t->train) {
      *h_off = (int)(draws[k++] % (uint32_t)(H - t->crop_size + 1));
      *w_off = (int)(draws[k++] % (uint32_t)(W - t->crop_size + 1));
    } else {
      *h_off = (H - t->crop_size) / 2;
      *w_off = (W - t->crop_size) / 2;
    }
  }
}

int transform_apply_draws(const Transformer *t, const DatumPixels *px, const uint32_t *draws,
                          float *out, const char *what) {
  const int C = px->c, H = px->h, W = px->w;
  int oc, oh, ow;
  if (transform_out_shape(t, C, H, W, &oc, &oh, &ow) != 0) return moka_error_prefix("%s", what);
  int do_mirror, h_off, w_off;
  crop_params(t, H, W, draws, &do_mirror, &h_off, &w_off);
  const float scale = t->scale;
  for (int c = 0; c < C; c++) {
    const float mv = t->n_mean_values ? t->mean_values[t->n_mean_values == 1 ? 0 : c] : 0.0f;
    for (int h = 0; h < oh; h++) {
      const size_t src_row = ((size_t)c * H + h_off + h) * W + w_off; /* in (C,H,W) */
      float *dst_row = out + ((size_t)c * oh + h) * ow;               /* in (C,oh,ow) */
      for (int w = 0; w < ow; w++) {
        const float x = px->data[src_row + w];
        float v;
        if (t->mean) v = (x - t->mean[src_row + w]) * scale;
        else if (t->n_mean_values) v = (x - mv) * scale;
        else v = x * scale;
        dst_row[do_mirror ? ow - 1 - w : w] = v;
      }
    }
  }
  return 0;
}

void transform_raw_params(const Transformer *t, int c, int h, int w, const uint32_t *draws,
                          TransformRawItem *it) {
  int do_mirror, h_off, w_off;
  crop_params(t, h, w, draws, &do_mirror, &h_off, &w_off);
  it->c = c, it->h = h, it->w = w;
  it->h_off = h_off, it->w_off = w_off;
  it->mirror = do_mirror;
}

void transform_apply_raw_host(const Transformer *t, const uint8_t *base,
                              const TransformRawItem *items, int n, int oc, int oh, int ow,
                              float *out) {
  const float scale = t->scale;
  for (int i = 0; i < n; i++) {
    const TransformRawItem *it = &items[i];
    const uint8_t *img = base + it->offset; /* (C,H,W) uint8 */
    float *dst = out + (size_t)i * oc * oh * ow; /* (oc,oh,ow) */
    for (int c = 0; c < oc; c++) {
      const float mv = t->n_mean_values ? t->mean_values[t->n_mean_values == 1 ? 0 : c] : 0.0f;
      for (int h = 0; h < oh; h++) {
        const size_t src_row = ((size_t)c * it->h + it->h_off + h) * it->w + it->w_off;
        float *dst_row = dst + ((size_t)c * oh + h) * ow;
        for (int w = 0; w < ow; w++) {
          const float x = (float)img[src_row + w];
          float v;
          if (t->mean) v = (x - t->mean[src_row + w]) * scale;
          else if (t->n_mean_values) v = (x - mv) * scale;
          else v = x * scale;
          dst_row[it->mirror ? ow - 1 - w : w] = v;
        }
      }
    }
  }
}
