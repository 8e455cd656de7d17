/* dummydata.c — Caffe's "DummyData" layer (reference; CPU only, nothing to
 * speed up). No bottoms; one or more tops filled by fillers. It feeds nets
 * that are benchmarked (`moka time`, `caffe time`) or tested without data.
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
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "util.h"

typedef struct DummyDataPriv {
  int n_fillers;                           /* 1 (shared by all tops) or n_top */
  const Caffe__FillerParameter **fillers;  /* [n_fillers]; borrowed from the param,
                                              or &default_filler */
  bool *refill;                            /* [n_fillers] refill on every forward */
  Caffe__FillerParameter default_filler;   /* constant 0 when none is given */
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

static int dummy_backward(Layer *l) { return 0; /* no bottoms: nothing to propagate */ }

static void dummy_destroy(Layer *l) {
  DummyDataPriv *d = l->priv;
  free(d->fillers);
  free(d->refill);
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
    /* no separate fast CPU path: the reference is it */
    .forward = {[MOKA_BACKEND_CPU] = dummy_forward, [MOKA_BACKEND_CPU_FAST] = dummy_forward},
    .backward = {[MOKA_BACKEND_CPU] = dummy_backward, [MOKA_BACKEND_CPU_FAST] = dummy_backward},
    .destroy = dummy_destroy,
};
