/* layertest.h — what the reference-layer tests test_layers_b.c and
 * test_layers_c.c share: the layer types under test, a LayerParameter on the
 * stack (LP), blobs made, filled at random or read from the golden files,
 * and error-message checks. Header-only, like testlib.h: each test_*.c is
 * its own program.
 */
#ifndef MOKA_LAYERTEST_H
#define MOKA_LAYERTEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "testlib.h"
#include "util.h"

/* The layer types under test, referenced directly so that their objects are
 * linked from libmoka.a (layer.c only holds weak references). */
extern const LayerType layer_type_input, layer_type_batchnorm, layer_type_scale, layer_type_relu,
    layer_type_eltwise, layer_type_softmax, layer_type_flatten, layer_type_dropout,
    layer_type_concat, layer_type_split, layer_type_softmaxwithloss, layer_type_accuracy;

#define LP(var, nm, ty)                                      \
  Caffe__LayerParameter var = CAFFE__LAYER_PARAMETER__INIT; \
  var.name = (char *)(nm);                                   \
  var.type = (char *)(ty)

static const Backend BE = MOKA_BACKEND_CPU;

/* ---- helpers --------------------------------------------------------------------------- */

static inline Blob *mk(const char *name, int na, int s0, int s1, int s2, int s3) {
  int s[4] = {s0, s1, s2, s3};
  Blob *b = blob_new(name);
  if (b && blob_reshape(b, na, s) != 0) {
    blob_free(b);
    return NULL;
  }
  return b;
}

static unsigned g_seed = 12345;
static inline float frand(float lo, float hi) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return lo + (hi - lo) * (float)((g_seed >> 8) & 0xffffff) / 16777216.0f;
}
static inline void fill_rand(Blob *b, float lo, float hi) {
  for (size_t i = 0; i < b->count; i++) b->data[i] = frand(lo, hi);
}
/* Values in [lo, hi] with a random sign. */
static inline void fill_rand_signed(Blob *b, float lo, float hi) {
  for (size_t i = 0; i < b->count; i++) b->data[i] = frand(lo, hi) * (frand(0, 1) < 0.5f ? -1 : 1);
}

/* Read golden float32 file `rel` (under shared/) into b's data, checking the
 * element count. */
static inline int load_into(Blob *b, const char *rel) {
  size_t n = 0;
  float *v = read_f32(shared_path(rel), &n);
  if (!v) return -1;
  if (n != b->count) {
    fprintf(stderr, "    %s: %zu values, expected %zu\n", rel, n, b->count);
    free(v);
    return -1;
  }
  memcpy(b->data, v, n * sizeof(float));
  free(v);
  return 0;
}

static inline Blob *golden(const char *rel, int na, int s0, int s1, int s2, int s3) {
  Blob *b = mk(rel, na, s0, s1, s2, s3);
  if (b && load_into(b, rel) != 0) {
    blob_free(b);
    return NULL;
  }
  return b;
}

static inline int load_params(Layer *l, const char *dir, const char *layer) {
  char rel[512];
  for (int i = 0; i < l->n_params; i++) {
    snprintf(rel, sizeof rel, "%s/params/%s.%d.f32", dir, layer, i);
    if (load_into(l->params[i], rel)) return -1;
  }
  return 0;
}

static inline uint8_t *read_u8(const char *path, size_t *n) {
  uint8_t *d = NULL;
  if (moka_read_file(path, &d, n) != 0) {
    fprintf(stderr, "    cannot read %s: %s\n", path, moka_error());
    return NULL;
  }
  return d;
}

static inline Blob *clone(const Blob *b) {
  Blob *c = blob_new(b->name);
  blob_reshape_like(c, b);
  memcpy(c->data, b->data, b->count * sizeof(float));
  memcpy(c->diff, b->diff, b->count * sizeof(float));
  return c;
}

static inline int error_mentions(const char *a, const char *b) {
  const char *e = moka_error();
  int ok = strstr(e, a) != NULL && (!b || strstr(e, b) != NULL);
  if (!ok) fprintf(stderr, "    error message was: %s\n", e);
  return ok;
}

static inline double max_abs_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

#endif
