/* transform.h — Caffe's DataTransformer for Datums
 * (src/caffe/data_transformer.cpp, Transform(const Datum&, Blob*)).
 *
 * For each record, in this order:
 *   do_mirror = mirror && Rand(2)                      (a draw only if mirror)
 *   crop offsets: TRAIN  h_off = Rand(H - crop + 1), then w_off = Rand(W - crop + 1)
 *                 TEST   h_off = (H - crop) / 2,  w_off = (W - crop) / 2
 *   out[c][h][w'] = (x[c][h_off+h][w_off+w] - mean) * scale,  w' = crop-1-w when mirrored
 * where mean is mean_file[c][h_off+h][w_off+w] (the mean must have the
 * datum's size) or mean_value[c] (one value, or one per channel), or 0.
 * Rand(n) is Caffe's `(*rng)() % n`: one 32-bit draw of the transformer's
 * own mt19937 (see transform_seed). All arithmetic is float, as Caffe's.
 */
#ifndef MOKA_TRANSFORM_H
#define MOKA_TRANSFORM_H

#include "caffe.pb-c.h"
#include "data/datum.h"
#include "data/raw_batch.h"
#include "rng.h"

typedef struct Transformer {
  float scale;
  int mirror;
  int crop_size;
  int train;          /* random crops in TRAIN, centred in TEST */
  int force_color, force_gray;
  float *mean;        /* (C,H,W) from mean_file, or NULL */
  int mean_c, mean_h, mean_w;
  int n_mean_values;  /* 0, 1 or C */
  float *mean_values; /* [n_mean_values] */
} Transformer;

/* Read a TransformationParameter (NULL = defaults); loads mean_file (a
 * BlobProto, path relative to the working directory as in Caffe). `what`
 * names the layer for error messages. */
int transform_init(Transformer *t, const Caffe__TransformationParameter *tp, int train,
                   const char *what);
void transform_free(Transformer *t);

/* Does this transformer draw random numbers (Caffe's InitRand creates the
 * transformer's stream only then: mirror, or crop in TRAIN)? */
int transform_needs_rand(const Transformer *t);
/* Caffe's InitRand: the transformer's stream is mt19937 seeded with one
 * 32-bit draw of the global stream (caffe_rng_rand()). Does nothing when
 * transform_needs_rand is false (Caffe draws nothing then either). Caffe
 * 1.0's data layers call it twice at setup (see reader.h). */
void transform_seed(const Transformer *t, Rng *global, Rng *own);

/* Channels to decode encoded Datums to: 0 (as stored), 3 (force_color) or
 * 1 (force_gray). */
int transform_decode_channels(const Transformer *t);

/* Output (C,H,W) for input pixels (c,h,w); errors when crop_size exceeds
 * the image or a mean does not fit. */
int transform_out_shape(const Transformer *t, int c, int h, int w, int *oc, int *oh, int *ow);

/* Transform px into out (C,oh,ow) (see transform_out_shape), drawing from
 * rng when needed (rng may be NULL when transform_needs_rand is false).
 * `what` names the record for error messages. */
int transform_apply(const Transformer *t, const DatumPixels *px, Rng *rng, float *out,
                    const char *what);

/* The number of 32-bit draws transform_apply takes per record, in order:
 * the mirror coin (when mirror), then h_off and w_off (when crop_size in
 * TRAIN); 0 to 3. Caffe's Rand(n) is one draw whatever n is, so the count
 * does not depend on the image: a reader can take a record's draws from the
 * stream ahead of decoding it (src/data/prefetch.h) and the stream stays
 * Caffe's. */
enum { TRANSFORM_MAX_DRAWS = 3 };
int transform_draws_per_record(const Transformer *t);
/* transform_apply with the record's draws given
 * (draws[transform_draws_per_record(t)], taken from the stream in that
 * order); safe to call from several threads on one Transformer. */
int transform_apply_draws(const Transformer *t, const DatumPixels *px, const uint32_t *draws,
                          float *out, const char *what);

/* ---- the raw (device) path: the same transform in two halves ----------------------------
 * Host half (the prefetch threads): the record's crop offset and mirror flag
 * from its draws, exactly as transform_apply_draws picks them, into `it`
 * (offset untouched); (c,h,w) is the decoded image's size, which must already
 * have passed transform_out_shape. Device half: kernels/transform.cu, whose
 * oracle is transform_apply_raw_host below. */
void transform_raw_params(const Transformer *t, int c, int h, int w, const uint32_t *draws,
                          TransformRawItem *it);
/* The device half on the host (the kernel's oracle, plain loops): for each
 * of the n items of a raw batch (raw_batch.h; `base` is the batch buffer,
 * items[i].offset counts from it), out (n, oc, oh, ow) with
 *   out[i][c][y][mirror ? ow-1-x : x] = (px - mean) * scale
 * px = pixel (c, h_off+y, w_off+x) of image i, mean as transform_apply_draws
 * (the mean file at the same position, or mean_value[c], or none: px *
 * scale) — the same float operations, so results are bit-identical to the
 * float path. Items must have passed transform_out_shape with output
 * (oc, oh, ow). */
void transform_apply_raw_host(const Transformer *t, const uint8_t *base,
                              const TransformRawItem *items, int n, int oc, int oh, int ow,
                              float *out);

#endif
