/* layer.c — the layer-type registry and the helpers every layer uses. */
#include "layer.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Every layer type, one per file in src/layers/. Declared weak so that a
 * type still being written simply does not appear in the list (and the
 * "unknown layer type" error lists what is really there). */
#define LAYER_TYPES(X)                                                                        \
  X(input) X(convolution) X(batchnorm) X(scale) X(relu) X(pooling) X(eltwise)                 \
  X(innerproduct) X(softmax) X(flatten) X(dropout) X(concat) X(lrn) X(split)                  \
  X(softmaxwithloss) X(accuracy) X(data) X(imagedata) X(dummydata) X(bias) X(sigmoid) X(tanh) \
  X(power) X(reshape) X(silence) X(euclideanloss) X(slice) X(absval) X(elu) X(prelu)

#define DECLARE(n) extern const LayerType layer_type_##n __attribute__((weak));
LAYER_TYPES(DECLARE)
#undef DECLARE

static const LayerType *const *all_types(size_t *n) {
#define ENTRY(n) &layer_type_##n,
  static const LayerType *const table[] = {LAYER_TYPES(ENTRY)};
#undef ENTRY
  *n = MOKA_ARRAY_LEN(table);
  return table;
}

const char *backend_name(Backend b) {
  switch (b) {
    case MOKA_BACKEND_CPU: return "cpu";
    case MOKA_BACKEND_CPU_FAST: return "cpu-fast";
    case MOKA_BACKEND_CUDA: return "cuda";
    default: return "?";
  }
}

const LayerType *layer_type_find(const char *name) {
  size_t n;
  const LayerType *const *t = all_types(&n);
  for (size_t i = 0; i < n; i++)
    if (t[i] && strcmp(t[i]->name, name) == 0) return t[i];
  return NULL;
}

const char *layer_type_list(void) {
  static char buf[2048];
  if (buf[0]) return buf;
  size_t n, off = 0;
  const LayerType *const *t = all_types(&n);
  for (size_t i = 0; i < n; i++) {
    if (!t[i]) continue;
    off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", off ? ", " : "", t[i]->name);
    if (off >= sizeof buf) break;
  }
  return buf;
}

Blob *layer_add_param(Layer *l, int num_axes, const int *shape,
                      const Caffe__FillerParameter *filler) {
  char name[512];
  snprintf(name, sizeof name, "%s.%d", l->name ? l->name : "?", l->n_params);
  Blob *b = blob_new(name);
  if (!b) return NULL;
  if (blob_reshape(b, num_axes, shape) != 0 ||
      (filler && filler_fill(b, filler, l->rng) != 0)) {
    moka_error_prefix("layer '%s' parameter %d", l->name, l->n_params);
    blob_free(b);
    return NULL;
  }
  Blob **np = moka_realloc(l->params, (size_t)(l->n_params + 1) * sizeof *np);
  if (!np) {
    blob_free(b);
    return NULL;
  }
  l->params = np;
  l->params[l->n_params++] = b;
  return b;
}

static int check_count(const char *what, int n, int lo, int hi, const Caffe__LayerParameter *lp) {
  if ((lo >= 0 && n < lo) || (hi >= 0 && n > hi)) {
    if (lo == hi)
      return moka_errorf("layer '%s' (%s) takes exactly %d %s, got %d", lp->name, lp->type, lo,
                         what, n);
    if (hi < 0)
      return moka_errorf("layer '%s' (%s) takes at least %d %s, got %d", lp->name, lp->type, lo,
                         what, n);
    return moka_errorf("layer '%s' (%s) takes %d to %d %s, got %d", lp->name, lp->type, lo, hi,
                       what, n);
  }
  return 0;
}

Layer *layer_create(const Caffe__LayerParameter *lp, Phase phase, Rng *rng, Blob **bottom,
                    int n_bottom, Blob **top, int n_top) {
  const char *tname = lp->type ? lp->type : "";
  const LayerType *t = layer_type_find(tname);
  if (!t) {
    moka_errorf("layer '%s': unknown layer type '%s' (supported: %s)", lp->name ? lp->name : "",
                tname, layer_type_list());
    return NULL;
  }
  if (check_count("bottom blobs", n_bottom, t->min_bottoms, t->max_bottoms, lp) ||
      check_count("top blobs", n_top, t->min_tops, t->max_tops, lp))
    return NULL;
  Layer *l = moka_calloc(1, sizeof *l);
  if (!l) return NULL;
  l->type = t;
  l->param = lp;
  l->name = moka_strdup(lp->name ? lp->name : "");
  l->phase = phase;
  l->rng = rng;
  l->n_bottom = n_bottom;
  l->n_top = n_top;
  l->bottom = moka_calloc((size_t)n_bottom + 1, sizeof *l->bottom);
  l->top = moka_calloc((size_t)n_top + 1, sizeof *l->top);
  l->propagate_down = moka_calloc((size_t)n_bottom + 1, sizeof *l->propagate_down);
  l->loss_weight = moka_calloc((size_t)n_top + 1, sizeof *l->loss_weight);
  if (t->priv_size) l->priv = moka_calloc(1, t->priv_size);
  if (!l->bottom || !l->top || !l->propagate_down || !l->loss_weight ||
      (t->priv_size && !l->priv)) {
    layer_free(l);
    return NULL;
  }
  for (int i = 0; i < n_bottom; i++) {
    l->bottom[i] = bottom[i];
    l->propagate_down[i] = true;
  }
  for (int i = 0; i < n_top; i++) l->top[i] = top[i];
  /* Loss weights: explicit loss_weight entries, else 1 on top 0 of a loss. */
  if (lp->n_loss_weight) {
    if ((int)lp->n_loss_weight != n_top) {
      moka_errorf("layer '%s': %zu loss_weight values for %d top blobs", l->name,
                  lp->n_loss_weight, n_top);
      layer_free(l);
      return NULL;
    }
    for (int i = 0; i < n_top; i++) l->loss_weight[i] = lp->loss_weight[i];
  } else if (t->is_loss && n_top > 0) {
    l->loss_weight[0] = 1.0f;
  }
  if (t->setup && t->setup(l) != 0) {
    moka_error_prefix("layer '%s' (%s)", l->name, tname);
    layer_free(l);
    return NULL;
  }
  l->lr_mult = moka_calloc((size_t)l->n_params + 1, sizeof *l->lr_mult);
  l->decay_mult = moka_calloc((size_t)l->n_params + 1, sizeof *l->decay_mult);
  if (!l->lr_mult || !l->decay_mult) {
    layer_free(l);
    return NULL;
  }
  if ((int)lp->n_param > l->n_params) {
    moka_errorf("layer '%s' (%s) has %zu param { } blocks but only %d parameter blobs", l->name,
                tname, lp->n_param, l->n_params);
    layer_free(l);
    return NULL;
  }
  for (int i = 0; i < l->n_params; i++) {
    const Caffe__ParamSpec *ps = i < (int)lp->n_param ? lp->param[i] : NULL;
    if (t->params_frozen) {
      if (ps && ps->has_lr_mult && ps->lr_mult != 0.0f) {
        moka_errorf("layer '%s' (%s): param %d has lr_mult %g, but its blobs are statistics, "
                    "not learnable parameters: use lr_mult: 0 (or no param block)",
                    l->name, tname, i, ps->lr_mult);
        layer_free(l);
        return NULL;
      }
      l->lr_mult[i] = 0.0f;
      l->decay_mult[i] = 0.0f;
    } else {
      l->lr_mult[i] = ps ? ps->lr_mult : 1.0f;
      l->decay_mult[i] = ps ? ps->decay_mult : 1.0f;
    }
  }
  if (t->reshape && t->reshape(l) != 0) {
    moka_error_prefix("layer '%s' (%s)", l->name, tname);
    layer_free(l);
    return NULL;
  }
  return l;
}

void layer_free(Layer *l) {
  if (!l) return;
  if (l->type && l->type->destroy && l->priv) l->type->destroy(l);
  for (int i = 0; i < l->n_params; i++) blob_free(l->params[i]);
  free(l->params);
  free(l->lr_mult);
  free(l->decay_mult);
  free(l->bottom);
  free(l->top);
  free(l->propagate_down);
  free(l->loss_weight);
  free(l->priv);
  free(l->name);
  free(l);
}

int layer_forward(Layer *l, Backend b) {
  if (!l->type->forward[b])
    return moka_errorf("layer '%s' (%s) has no forward implementation for the %s backend",
                       l->name, l->type->name, backend_name(b));
  if (l->type->forward[b](l) != 0) return moka_error_prefix("forward of layer '%s'", l->name);
  return 0;
}

int layer_backward(Layer *l, Backend b) {
  if (!l->type->backward[b])
    return moka_errorf("layer '%s' (%s) has no backward implementation for the %s backend",
                       l->name, l->type->name, backend_name(b));
  if (l->type->backward[b](l) != 0) return moka_error_prefix("backward of layer '%s'", l->name);
  return 0;
}
