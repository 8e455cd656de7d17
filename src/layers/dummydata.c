/* dummydata.c — Caffe's "DummyData" layer (reference), and its fast CPU
 * path. No bottoms; one or more tops filled by fillers. It feeds nets
 * that are benchmarked (`moka time`, `caffe time`) or tested without data.
 *
 * Fast path (MOKA_BACKEND_CPU_FAST): a gaussian refill (the benchmark nets'
 * N(0, 50^2) images) gives exactly the reference's values and leaves the
 * stream in exactly its state, but cheaper: rng_gaussian's Box–Muller draws
 * its two uniforms per pair from the one stream (sequential by nature), so
 * those are drawn first, in order, into a buffer; the transform (log, sqrt,
 * sin, cos in double: most of the time) then runs over the pairs in
 * parallel with rng_gaussian's expressions. Other fillers run the
 * reference's code.
 *
 * dummy_data_param:
 *   shape       once for every top, or once per top; or the legacy 4-D form
 *               num/channels/height/width, each given once or once per top
 *               (never both forms);
 *   data_filler none (constant 0), one for every top, or one per top.
 *
 * Refill rule (Caffe's DummyDataLayer): a top whose filler is "constant" is
 * filled once, at setup, and never again; a top with any other filler is
 * refilled on every forward pass, drawing from the net's random stream
 * (so the draws interleave with other layers' exactly as in Caffe: nothing
 * random is drawn at setup). As in Caffe, reshape leaves the tops alone.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers/fast.h"

#include "layer.h"
#include "util.h"

typedef struct DummyDataPriv {
  int n_fillers;                           /* 1 (shared by all tops) or n_top */
  const Caffe__FillerParameter **fillers;  /* [n_fillers]; borrowed from the param,
                                              or &default_filler */
  bool *refill;                            /* [n_fillers] refill on every forward */
  Caffe__FillerParameter default_filler;   /* constant 0 when none is given */
  uint32_t *draws;                         /* (2 * pairs) the fast path's uniform draws */
  size_t draws_cap;
} DummyDataPriv;

static bool filler_is_constant(const Caffe__FillerParameter *f) {
  return strcmp(f->type ? f->type : "constant", "constant") == 0;
}

/* One of Caffe's "given once, or once per top" legacy counts. */
static int check_legacy_count(const char *field, size_t n, int n_top) {
  if (n == 1 || (int)n == n_top) return 0;
  return moka_errorf("dummy_data_param: give '%s' once, or once per top blob (%d); got %zu",
                     field, n_top, n);
}

static int dummy_shape_tops(Layer *l, const Caffe__DummyDataParameter *p) {
  bool legacy = p->n_num || p->n_channels || p->n_height || p->n_width;
  if (legacy) {
    if (p->n_shape)
      return moka_errorf("dummy_data_param: both 'shape' and the legacy num/channels/height/"
                         "width fields are given; use one form");
    if (check_legacy_count("num", p->n_num, l->n_top) ||
        check_legacy_count("channels", p->n_channels, l->n_top) ||
        check_legacy_count("height", p->n_height, l->n_top) ||
        check_legacy_count("width", p->n_width, l->n_top))
      return -1;
  } else if (p->n_shape != 1 && (int)p->n_shape != l->n_top) {
    return moka_errorf("dummy_data_param: give 'shape' once, or once per top blob (%d); got %zu",
                       l->n_top, p->n_shape);
  }
  for (int t = 0; t < l->n_top; t++) {
    int dims[MOKA_MAX_AXES], n_dims;
    if (legacy) {
      uint32_t v[4] = {p->num[p->n_num == 1 ? 0 : t], p->channels[p->n_channels == 1 ? 0 : t],
                       p->height[p->n_height == 1 ? 0 : t], p->width[p->n_width == 1 ? 0 : t]};
      for (int k = 0; k < 4; k++) {
        if (v[k] > INT_MAX)
          return moka_errorf("dummy_data_param: top %d: dimension %u is out of range", t, v[k]);
        dims[k] = (int)v[k];
      }
      n_dims = 4;
    } else {
      const Caffe__BlobShape *s = p->shape[p->n_shape == 1 ? 0 : t];
      if (s->n_dim > MOKA_MAX_AXES)
        return moka_errorf("dummy_data_param: shape for top %d has %zu dims; at most %d are "
                           "supported",
                           t, s->n_dim, MOKA_MAX_AXES);
      for (size_t i = 0; i < s->n_dim; i++) {
        if (s->dim[i] < 0 || s->dim[i] > INT_MAX)
          return moka_errorf("dummy_data_param: shape for top %d: dim %zu = %lld is out of range",
                             t, i, (long long)s->dim[i]);
        dims[i] = (int)s->dim[i];
      }
      n_dims = (int)s->n_dim;
    }
    if (blob_reshape(l->top[t], n_dims, dims))
      return moka_error_prefix("dummy_data_param: top %d ('%s')", t, l->top[t]->name);
  }
  return 0;
}

/* Fill the tops whose filler's refill flag equals `want`. */
static int dummy_fill(Layer *l, bool want) {
  DummyDataPriv *d = l->priv;
  for (int t = 0; t < l->n_top; t++) {
    int f = d->n_fillers > 1 ? t : 0;
    if (d->refill[f] != want) continue;
    if (l->top[t]->count == 0) continue; /* a 0-sized top has nothing to fill */
    if (filler_fill(l->top[t], d->fillers[f], l->rng))
      return moka_error_prefix("data_filler for top %d ('%s')", t, l->top[t]->name);
  }
  return 0;
}

static int dummy_setup(Layer *l) {
  DummyDataPriv *d = l->priv;
  static const Caffe__DummyDataParameter kEmpty = CAFFE__DUMMY_DATA_PARAMETER__INIT;
  const Caffe__DummyDataParameter *p =
      l->param->dummy_data_param ? l->param->dummy_data_param : &kEmpty;
  size_t nf = p->n_data_filler;
  if (nf != 0 && nf != 1 && (int)nf != l->n_top)
    return moka_errorf("dummy_data_param: give 'data_filler' 0 times, once, or once per top blob "
                       "(%d); got %zu",
                       l->n_top, nf);
  if (dummy_shape_tops(l, p)) return -1;
  d->n_fillers = nf <= 1 ? 1 : (int)nf;
  d->fillers = moka_calloc((size_t)d->n_fillers, sizeof *d->fillers);
  d->refill = moka_calloc((size_t)d->n_fillers, sizeof *d->refill);
  if (!d->fillers || !d->refill) return -1;
  caffe__filler_parameter__init(&d->default_filler); /* type "constant", value 0 */
  for (int i = 0; i < d->n_fillers; i++) {
    d->fillers[i] = nf == 0 ? &d->default_filler : p->data_filler[i];
    d->refill[i] = !filler_is_constant(d->fillers[i]);
  }
  /* Refilled tops: check their fillers now (unknown type, bad std, ...),
   * as Caffe does when it creates them, by a trial fill from a copy of the
   * stream, so that no draw is consumed; the tops stay 0 until the first
   * forward. */
  for (int t = 0; t < l->n_top; t++) {
    int f = d->n_fillers > 1 ? t : 0;
    if (!d->refill[f] || l->top[t]->count == 0) continue;
    Rng trial = *l->rng;
    if (filler_fill(l->top[t], d->fillers[f], &trial))
      return moka_error_prefix("data_filler for top %d ('%s')", t, l->top[t]->name);
    memset(l->top[t]->data, 0, l->top[t]->count * sizeof(float));
  }
  /* Constant tops: filled once, now. */
  return dummy_fill(l, false);
}

static int dummy_forward(Layer *l) { return dummy_fill(l, true); }

/* rng_gaussian's uniform: (u + 0.5) / 2^32, in (0, 1) (never <= 0, so its
 * rejection loop never draws again). */
static inline double unit_open(uint32_t u) { return (u + 0.5) / 4294967296.0; }

/* n values of N(mu, sigma), exactly as n calls of rng_gaussian(r, mu,
 * sigma) would give them (rng.c), leaving *r in the same state. */
static int gaussian_fill_fast(DummyDataPriv *d, float *v, size_t n, float mu, float sigma,
                              Rng *r) {
  size_t k = 0;
  if (n && r->have_spare) { /* the spare of the previous pair comes first */
    r->have_spare = 0;
    v[k++] = (float)(mu + sigma * r->spare);
  }
  const size_t pairs = (n - k) / 2;
  if (2 * pairs > d->draws_cap) {
    uint32_t *nd = moka_realloc(d->draws, 2 * pairs * sizeof *nd);
    if (!nd) return moka_error_prefix("DummyData: %zu uniform draws", 2 * pairs);
    d->draws = nd;
    d->draws_cap = 2 * pairs;
  }
  uint32_t *u = d->draws; /* (pairs, 2): u1, u2 of each pair, in stream order */
  rng_fill_u32(r, u, 2 * pairs);
  float *out = v + k; /* (pairs, 2): the cos value, then the sin value (the spare) */
#pragma omp parallel for schedule(static) if (pairs >= FAST_GRAIN / 8)
  for (size_t i = 0; i < pairs; i++) {
    const double u1 = unit_open(u[2 * i]), u2 = unit_open(u[2 * i + 1]);
    const double rad = sqrt(-2.0 * log(u1));
    const double spare = rad * sin(2.0 * M_PI * u2);
    out[2 * i] = (float)(mu + sigma * rad * cos(2.0 * M_PI * u2));
    out[2 * i + 1] = (float)(mu + sigma * spare);
  }
  k += 2 * pairs;
  if (k < n) v[k] = rng_gaussian(r, mu, sigma); /* odd count: leaves the spare, as the reference */
  return 0;
}

static int dummy_forward_fast(Layer *l) {
  DummyDataPriv *d = l->priv;
  for (int t = 0; t < l->n_top; t++) {
    int fi = d->n_fillers > 1 ? t : 0;
    const Caffe__FillerParameter *f = d->fillers[fi];
    if (!d->refill[fi] || l->top[t]->count == 0) continue;
    const bool plain_gaussian =
        f->type && strcmp(f->type, "gaussian") == 0 && f->sparse == -1 && f->std > 0;
    if (!plain_gaussian) {
      if (filler_fill(l->top[t], f, l->rng))
        return moka_error_prefix("data_filler for top %d ('%s')", t, l->top[t]->name);
      continue;
    }
    if (gaussian_fill_fast(d, l->top[t]->data, l->top[t]->count, f->mean, f->std, l->rng))
      return -1;
  }
  return 0;
}

static int dummy_backward(Layer *l) { return 0; /* no bottoms: nothing to propagate */ }

static void dummy_destroy(Layer *l) {
  DummyDataPriv *d = l->priv;
  free(d->fillers);
  free(d->refill);
  free(d->draws);
  d->draws = NULL;
  d->fillers = NULL;
  d->refill = NULL;
}

const LayerType layer_type_dummydata = {
    .name = "DummyData",
    .min_bottoms = 0,
    .max_bottoms = 0,
    .min_tops = 1,
    .max_tops = -1,
    .priv_size = sizeof(DummyDataPriv),
    .setup = dummy_setup,
    .reshape = NULL,
    .forward = {[MOKA_BACKEND_CPU] = dummy_forward, [MOKA_BACKEND_CPU_FAST] = dummy_forward_fast},
    .backward = {[MOKA_BACKEND_CPU] = dummy_backward, [MOKA_BACKEND_CPU_FAST] = dummy_backward},
    .destroy = dummy_destroy,
};
