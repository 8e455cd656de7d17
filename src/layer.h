/* layer.h — the layer object and the layer-type table.
 *
 * A layer type is one table entry (LayerType): its Caffe type name, how many
 * bottoms and tops it takes (checked in one place, net.c), and its functions:
 *
 *   setup(l)     read l->param into the per-type struct l->priv, validate it,
 *                declare learnable blobs with layer_add_param() (filled at
 *                once by their fillers, in Caffe's order, from l->rng);
 *                bottoms already have their shapes.
 *   reshape(l)   shape the tops from the bottoms (called after setup and
 *                whenever an input shape changes).
 *   forward[b](l), backward[b](l)
 *                one per backend b. The reference CPU backend is plain loops
 *                and double accumulators for long sums; other backends must
 *                agree with it. A NULL entry means "not implemented for this
 *                backend": the net refuses to run, naming the layer; it
 *                never falls back silently. A type that has no separate fast
 *                CPU path says so by pointing the CPU_FAST slot at the
 *                reference function.
 *   destroy(l)   free what setup allocated inside l->priv (the priv block
 *                itself is freed by the net).
 *
 * Backward reads top diffs and writes bottom diffs where
 * l->propagate_down[i] is set; it ADDS parameter gradients into
 * l->params[i]->diff (the net zeroes them before each forward/backward), so
 * that iter_size accumulation works. Bottom diffs are overwritten, not
 * accumulated: the net inserts Split layers where a blob has several
 * consumers, exactly as Caffe does.
 */
#ifndef MOKA_LAYER_H
#define MOKA_LAYER_H

#include <stdbool.h>

#include "blob.h"
#include "caffe.pb-c.h"
#include "rng.h"

typedef enum Backend {
  MOKA_BACKEND_CPU = 0,      /* reference: plain loops (the oracle) */
  MOKA_BACKEND_CPU_FAST = 1, /* threaded / BLAS / fused CPU path */
  MOKA_BACKEND_CUDA = 2,     /* moka's own kernels */
  MOKA_BACKEND_COUNT = 3
} Backend;

const char *backend_name(Backend b);

typedef enum Phase { MOKA_TRAIN = 0, MOKA_TEST = 1 } Phase; /* = caffe.Phase */

typedef struct Layer Layer;

typedef struct LayerType {
  const char *name;  /* Caffe's type string, e.g. "Convolution" */
  int min_bottoms, max_bottoms; /* -1 = no limit */
  int min_tops, max_tops;
  bool is_loss;      /* top 0 gets loss_weight 1 by default */
  bool in_place_ok;  /* top may be the same blob as bottom */
  bool params_frozen; /* blobs are statistics, not learnable (BatchNorm):
                         lr_mult/decay_mult forced to 0; a ParamSpec asking
                         for a non-zero lr_mult is an error */
  size_t priv_size;  /* bytes of l->priv, zeroed by the net */
  int (*setup)(Layer *l);
  int (*reshape)(Layer *l);
  int (*forward[MOKA_BACKEND_COUNT])(Layer *l);
  int (*backward[MOKA_BACKEND_COUNT])(Layer *l);
  void (*destroy)(Layer *l);
} LayerType;

struct Layer {
  const LayerType *type;
  const Caffe__LayerParameter *param; /* owned by the net's NetParameter */
  char *name;
  Phase phase;
  Rng *rng;          /* the net's random stream (fillers, Dropout) */

  int n_bottom, n_top;
  Blob **bottom;     /* [n_bottom], owned by the net */
  Blob **top;        /* [n_top], owned by the net */
  bool *propagate_down; /* [n_bottom] */
  float *loss_weight;   /* [n_top]; 0 = not a loss output */

  int n_params;
  Blob **params;     /* Caffe's blobs_: learnable (and BN statistics) */
  float *lr_mult;    /* [n_params] from ParamSpec (default 1) */
  float *decay_mult; /* [n_params] from ParamSpec (default 1) */

  void *priv;        /* per-type parameter/state struct */
  /* The weights will not change again (net_freeze_weights: inference
   * tools): a layer may keep prepared copies of them (the fast convolution
   * keeps its weights packed for the GEMM, Winograd its transformed ones). */
  bool weights_frozen;

  /* CUDA backend: the device context (stream, cuBLAS/cuDNN handles, shared
   * workspace) the CUDA forward/backward run on; set by net_to_device (or a
   * test), NULL otherwise. Not owned. */
  struct MokaCuda *cuda;
};

/* Create a layer outside a net (the net uses it too): checks the bottom/top
 * counts, reads lr_mult/decay_mult, runs setup and reshape. The layer keeps
 * pointers to lp, rng and the given blobs (which the caller owns). Returns
 * NULL with moka_error() naming the layer. */
Layer *layer_create(const Caffe__LayerParameter *lp, Phase phase, Rng *rng, Blob **bottom,
                    int n_bottom, Blob **top, int n_top);
/* Free a layer made by layer_create (not its bottom/top blobs). */
void layer_free(Layer *l);
/* Run forward/backward on one backend; a missing implementation is an error
 * naming the layer and backend. */
int layer_forward(Layer *l, Backend b);
int layer_backward(Layer *l, Backend b);

/* Caffe's param_propagate_down: a parameter with lr_mult 0 (frozen, e.g.
 * the trunk of a fine-tuned net) needs no gradient, so backward skips that
 * work. */
static inline bool layer_param_needs_grad(const Layer *l, int i) {
  return i < l->n_params && l->lr_mult[i] != 0.0f;
}

/* Declare the next parameter blob with this shape, and fill it with `filler`
 * (NULL = constant 0), drawing from l->rng. Returns the blob or NULL. */
Blob *layer_add_param(Layer *l, int num_axes, const int *shape,
                      const Caffe__FillerParameter *filler);

/* Fillers (Caffe's constant, gaussian, positive_unitball, uniform, xavier,
 * msra, bilinear). Returns 0 / -1 (unknown type, bad parameter). */
int filler_fill(Blob *b, const Caffe__FillerParameter *f, Rng *rng);

/* The registry. */
const LayerType *layer_type_find(const char *name);
/* Comma-separated list of every supported type (for error messages). */
const char *layer_type_list(void);

#endif
