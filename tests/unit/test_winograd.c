/* test_winograd.c — the fast backend's Winograd convolution
 * (src/layers/conv_winograd.c) against the reference convolution
 * (convolution.c), and whole nets through it against real Caffe's golden runs.
 *
 *  1. Layers: forward (top) and backward (bottom and weight diffs through
 *     Winograd, the bias diff as the GEMM path) of the fast layer with
 *     MOKA_WINOGRAD=2 (F(2x2,3x3)) and 4 (F(4x4,3x3)) against the reference,
 *     on awkward shapes: odd H/W (7x9, 13x5), planes smaller than a tile (3x2,
 *     1x1), batch 1 and 3, channels not multiples of 16, bias on and off, pad
 *     0, 1 and 2, ResNet's 7x7 and 14x14, and shapes cut into several chunks
 *     (on the pool's threads, and one after another on one thread). The
 *     normalised error max|fast - ref| / max|ref| must stay below TOL_F2 /
 *     TOL_F4 (derived from measured errors, see below), and a kernel with one
 *     tap moved must fail that bound by far.
 *  2. Dispatch: MOKA_WINOGRAD=0 turns Winograd off; in auto mode (unset)
 *     ResNet-50's 3x3 shapes take the tile chosen by conv_winograd.c's cost
 *     model, tiny channel counts the GEMM path, bf16 always the GEMM path.
 *  3. Whole nets, every 3x3 convolution through Winograd: the mini ResNet
 *     golden forward (both input sizes, the golden README's rtol 1e-4) with
 *     F(2x2) and F(4x4), and the golden mini_train run (6 SGD iterations:
 *     losses to 1e-4, weights rtol 1e-4) with F(2x2) and F(4x4).
 *
 * Tolerances. Inputs N(0,1), weights N(0,0.5^2), sums of 9*C terms. Measured
 * normalised errors max|fast - ref| / max|ref| on these shapes (this
 * machine; forward, bottom diff, weight diff): F(2x2) up to 5.0e-7, 3.5e-7,
 * 8.7e-7; F(4x4) up to 8.3e-6, 6.1e-6, 3.7e-6 (growing with the channel
 * count; ResNet-50's 512-channel layers reach 1.8e-5, conv_winograd.c). The
 * bounds TOL_F2 = 2e-6 and TOL_F4 = 3e-5 allow 2.3x-4x the worst measured
 * here; a moved tap gives errors of order 0.1, 1000x the bound or more.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "goldentest.h"
#include "layers/conv_winograd.h"
#include "layers/conv_winograd_priv.h"
#include "layers/convolution_priv.h"
#include "layers/fast.h"
#include "net.h"
#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

#define TOL_F2 2e-6
#define TOL_F4 3e-5

static Rng g_rng;
static double g_worst[5][3]; /* [m][forward, bottom diff, weight diff]: the largest errors */

static void fill_random(float *v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = rng_gaussian(&g_rng, 0.0f, scale);
}

static void set_winograd(const char *v) {
  if (v)
    setenv("MOKA_WINOGRAD", v, 1);
  else
    unsetenv("MOKA_WINOGRAD");
}

/* ---- one convolution, reference and fast ---------------------------------------------- */

typedef struct Pair {
  Caffe__LayerParameter *lp;
  Layer *ref, *fast;
  Blob *rb, *rt, *fb, *ft; /* bottoms (N,C,H,W), tops (N,OC,OH,OW) */
} Pair;

static void pair_free(Pair *t) {
  layer_free(t->ref);
  layer_free(t->fast);
  blob_free(t->rb);
  blob_free(t->rt);
  blob_free(t->fb);
  blob_free(t->ft);
  if (t->lp) caffe__layer_parameter__free_unpacked(t->lp, NULL);
  memset(t, 0, sizeof *t);
}

static int pair_make(Pair *t, int n, int c, int h, int w, int oc, int pad, bool bias) {
  memset(t, 0, sizeof *t);
  char text[256];
  snprintf(text, sizeof text,
           "name: 'conv' type: 'Convolution' convolution_param { num_output: %d kernel_size: 3 "
           "pad: %d bias_term: %s }",
           oc, pad, bias ? "true" : "false");
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return -1;
  }
  t->lp = (Caffe__LayerParameter *)m;
  const int shape[4] = {n, c, h, w};
  t->rb = blob_new("bottom");
  t->fb = blob_new("bottom");
  t->rt = blob_new("top");
  t->ft = blob_new("top");
  if (!t->rb || !t->fb || !t->rt || !t->ft || blob_reshape(t->rb, 4, shape) ||
      blob_reshape(t->fb, 4, shape))
    return -1;
  fill_random(t->rb->data, t->rb->count, 1.0f);
  memcpy(t->fb->data, t->rb->data, t->rb->count * sizeof(float));
  Rng r1, r2;
  rng_seed(&r1, 5);
  rng_seed(&r2, 5);
  t->ref = layer_create(t->lp, MOKA_TRAIN, &r1, &t->rb, 1, &t->rt, 1);
  t->fast = layer_create(t->lp, MOKA_TRAIN, &r2, &t->fb, 1, &t->ft, 1);
  if (!t->ref || !t->fast) {
    fprintf(stderr, "    layer_create: %s\n", moka_error());
    return -1;
  }
  for (int k = 0; k < t->ref->n_params; k++) {
    Blob *a = t->ref->params[k], *b = t->fast->params[k];
    fill_random(a->data, a->count, k == 0 ? 0.5f : 1.0f);
    memcpy(b->data, a->data, a->count * sizeof(float));
  }
  return 0;
}

/* Forward and backward both; the normalised errors of the top (ef), the
 * bottom diff (eb) and the parameter diffs (ew, the larger). used_f/used_b:
 * whether the fast layer took Winograd. */
static int pair_run(Pair *t, double *ef, double *eb, double *ew, bool *used_f, bool *used_b) {
  const ConvPriv *p = t->fast->priv;
  if (layer_forward(t->ref, MOKA_BACKEND_CPU) || layer_forward(t->fast, MOKA_BACKEND_CPU_FAST)) {
    fprintf(stderr, "    forward: %s\n", moka_error());
    return -1;
  }
  *used_f = conv_winograd_applies(p, false);
  *used_b = conv_winograd_applies(p, true);
  *ef = norm_err(t->ft->data, t->rt->data, t->rt->count);
  fill_random(t->rt->diff, t->rt->count, 1.0f);
  memcpy(t->ft->diff, t->rt->diff, t->rt->count * sizeof(float));
  for (int k = 0; k < t->ref->n_params; k++) {
    fill_random(t->ref->params[k]->diff, t->ref->params[k]->count, 0.1f);
    memcpy(t->fast->params[k]->diff, t->ref->params[k]->diff,
           t->ref->params[k]->count * sizeof(float));
  }
  /* A stale bottom diff: the data gradient must be written, not added. */
  fill_random(t->fb->diff, t->fb->count, 1.0f);
  t->ref->propagate_down[0] = t->fast->propagate_down[0] = true;
  if (layer_backward(t->ref, MOKA_BACKEND_CPU) || layer_backward(t->fast, MOKA_BACKEND_CPU_FAST)) {
    fprintf(stderr, "    backward: %s\n", moka_error());
    return -1;
  }
  *eb = norm_err(t->fb->diff, t->rb->diff, t->rb->count);
  *ew = 0;
  for (int k = 0; k < t->ref->n_params; k++)
    *ew = fmax(
        *ew, norm_err(t->fast->params[k]->diff, t->ref->params[k]->diff, t->ref->params[k]->count));
  return 0;
}

typedef struct Case {
  const char *name;
  int n, c, h, w, oc, pad;
  bool bias;
} Case;

static const Case g_cases[] = {
    {"odd 7x9, batch 1, bias", 1, 5, 7, 9, 6, 1, true},
    {"13x5, batch 3, 17 -> 19 channels", 3, 17, 13, 5, 19, 1, false},
    {"3x2: smaller than a tile", 2, 3, 3, 2, 4, 1, true},
    {"1x1 plane", 2, 4, 1, 1, 3, 1, true},
    {"pad 0 (backward pad 2)", 2, 6, 9, 8, 5, 0, true},
    {"pad 2 (backward pad 0)", 1, 3, 6, 7, 4, 2, false},
    {"ResNet 7x7", 3, 20, 7, 7, 24, 1, false},
    {"ResNet 14x14", 2, 16, 14, 14, 32, 1, true},
    {"several chunks (20x22, 48 -> 40 channels)", 2, 48, 20, 22, 40, 1, false},
    {"wide rows (5x70: rows of 18-36 tiles)", 1, 3, 5, 70, 4, 1, true},
};

static int check_case(const Case *c, int m) {
  char v[4];
  snprintf(v, sizeof v, "%d", m);
  set_winograd(v);
  const double tol = m == 2 ? TOL_F2 : TOL_F4;
  Pair t;
  double ef = 0, eb = 0, ew = 0;
  bool uf = false, ub = false;
  int ok = pair_make(&t, c->n, c->c, c->h, c->w, c->oc, c->pad, c->bias) == 0 &&
           pair_run(&t, &ef, &eb, &ew, &uf, &ub) == 0;
  if (ok) {
    g_worst[m][0] = fmax(g_worst[m][0], ef);
    g_worst[m][1] = fmax(g_worst[m][1], eb);
    g_worst[m][2] = fmax(g_worst[m][2], ew);
    if (!uf || !ub || !(ef <= tol) || !(eb <= tol) || !(ew <= tol) || getenv("WINO_VERBOSE")) {
      fprintf(stderr,
              "    F(%dx%d) %s: Winograd used %d/%d, errors forward %.3g, bottom diff %.3g "
              "(bound %.3g), parameter diffs %.3g\n",
              m, m, c->name, uf, ub, ef, eb, tol, ew);
      ok = uf && ub && ef <= tol && eb <= tol && ew <= tol;
    }
  }
  pair_free(&t);
  set_winograd(NULL);
  return ok;
}

static void test_shapes(void) {
  for (size_t i = 0; i < MOKA_ARRAY_LEN(g_cases); i++) {
    CHECK_MSG(check_case(&g_cases[i], 2), "F(2x2,3x3): %s", g_cases[i].name);
    CHECK_MSG(check_case(&g_cases[i], 4), "F(4x4,3x3): %s", g_cases[i].name);
  }
  fprintf(stderr,
          "    measured normalised errors: F(2x2) forward %.2g, bottom diff %.2g, "
          "weight diff %.2g; F(4x4) forward %.2g, bottom diff %.2g, weight diff %.2g\n",
          g_worst[2][0], g_worst[2][1], g_worst[2][2], g_worst[4][0], g_worst[4][1], g_worst[4][2]);
}

/* Chunks one after another with the steps split over the pool (a pool of
 * one thread also takes that path). */
static void test_one_thread(void) {
  const int T = omp_get_max_threads();
  omp_set_num_threads(1);
  const Case c = {"one thread, several chunks", 2, 48, 20, 22, 40, 1, true};
  CHECK(check_case(&c, 2));
  CHECK(check_case(&c, 4));
  omp_set_num_threads(T);
}

/* One kernel tap moved to its neighbour (in the fast layer only) must fail
 * the bounds by far: they are tight enough to see a wrong tap. */
static void test_moved_tap(void) {
  for (int m = 2; m <= 4; m += 2) {
    set_winograd(m == 2 ? "2" : "4");
    Pair t;
    REQUIRE(pair_make(&t, 2, 6, 9, 7, 5, 1, false) == 0);
    float *wt = t.fast->params[0]->data; /* (OC,C,3,3): move tap (oc 3, c 2, 1, 1) to (1, 2) */
    float *k = wt + (3 * 6 + 2) * 9;
    k[5] += k[4];
    k[4] = 0.0f;
    double ef, eb, ew;
    bool uf, ub;
    CHECK(pair_run(&t, &ef, &eb, &ew, &uf, &ub) == 0);
    CHECK(uf && ub);
    const double tol = m == 2 ? TOL_F2 : TOL_F4;
    CHECK_MSG(ef > 1000 * tol && eb > 1000 * tol, "F(%dx%d): moved tap gives %.3g / %.3g", m, m, ef,
              eb);
    pair_free(&t);
  }
  set_winograd(NULL);
}

/* The strips' phase fill (wino_fill_phases: AVX-512 where the CPU has it)
 * against its definition, [ph][idx] = src[idx*m + ph - pad] inside the row,
 * 0 outside it and for idx in [L, L+8), on every row width 1..100, pad
 * 0..2 and both tiles; the row sits between guard values that must not
 * show up (columns from L+8 on are scratch: not checked). */
static void test_fill_phases(void) {
  enum { GUARD = 64 };
  float buf[GUARD + 100 + GUARD], out[4 * 160];
  for (int i = 0; i < (int)MOKA_ARRAY_LEN(buf); i++)
    buf[i] = i < GUARD || i >= GUARD + 100 ? 1e30f : (float)i;
  const float *src = buf + GUARD;
  int bad = 0;
  for (int m = 2; m <= 4; m += 2)
    for (int pad = 0; pad <= 2; pad++)
      for (int w = 1; w <= 100; w++) {
        const int ow = w + 2 * pad - 2;
        if (ow < 1) continue;
        const int tw = (ow + m - 1) / m, L = tw + 1, ld = row_ld(tw); /* as the transforms */
        for (int i = 0; i < 4 * 160; i++) out[i] = -7.0f;
        wino_fill_phases(src, w, pad, m, L, ld, out);
        for (int ph = 0; ph < m; ph++)
          for (int idx = 0; idx < ld; idx++) {
            const int col = idx * m + ph - pad;
            const float want = idx < L ? (col >= 0 && col < w ? src[col] : 0.0f)
                                       : idx < L + 8 ? 0.0f : out[ph * ld + idx];
            if (out[ph * ld + idx] != want || out[ph * ld + idx] == 1e30f) {
              if (bad++ < 5)
                fprintf(stderr, "    m %d pad %d w %d: [%d][%d] = %g, want %g\n", m, pad, w, ph,
                        idx, out[ph * ld + idx], want);
            }
          }
      }
  CHECK_MSG(bad == 0, "%d wrong values", bad);
}

/* ---- dispatch ------------------------------------------------------------------------- */

/* The tile the fast layer would use (0: the GEMM path), -1 on error. */
static int tile_of(int n, int c, int h, int w, int oc, int pad, bool backward) {
  Pair t;
  int r = -1;
  if (pair_make(&t, n, c, h, w, oc, pad, false) == 0)
    r = conv_winograd_tile(t.fast->priv, backward);
  else
    fprintf(stderr, "    %s\n", moka_error());
  pair_free(&t);
  return r;
}

static void test_dispatch(void) {
  set_winograd("0");
  CHECK(tile_of(8, 64, 14, 14, 64, 1, false) == 0);
  CHECK(tile_of(8, 64, 14, 14, 64, 1, true) == 0);
  set_winograd(NULL);
  /* Auto: ResNet-50's 3x3 convolutions at batch 8, as measured
   * (conv_winograd.c, wino_cost): F(4x4) at 56x56 and 28x28, F(2x2) at
   * 14x14, the GEMM path at 7x7 (its 512x512 kernels transformed cost more
   * than the 98 tiles per image save). */
  for (int bwd = 0; bwd < 2; bwd++) {
    CHECK(tile_of(8, 64, 56, 56, 64, 1, bwd) == 4);
    CHECK(tile_of(8, 128, 28, 28, 128, 1, bwd) == 4);
    CHECK(tile_of(8, 256, 14, 14, 256, 1, bwd) == 2);
    CHECK(tile_of(8, 512, 7, 7, 512, 1, bwd) == 0);
  }
  CHECK(tile_of(1, 512, 7, 7, 512, 1, false) == 0);
  CHECK(tile_of(1, 64, 56, 56, 64, 1, false) == 4);
  /* Few channels: the GEMM path. */
  CHECK(tile_of(2, 3, 14, 14, 8, 1, false) == 0);
  /* Not eligible whatever the setting: pad 3. */
  set_winograd("2");
  CHECK(tile_of(1, 4, 9, 9, 4, 3, false) == 0);
  CHECK(tile_of(1, 4, 9, 9, 4, 2, false) == 2);
  set_winograd(NULL);
  /* bf16 precision keeps the GEMM path. */
  if (fast_bf16_supported()) {
    REQUIRE(fast_set_precision("bf16") == 0);
    CHECK(tile_of(8, 64, 56, 56, 64, 1, false) == 0);
    REQUIRE(fast_set_precision("fp32") == 0);
  }
}

/* ---- frozen weights ------------------------------------------------------------------- */

/* Layer.weights_frozen (inference tools): the fast convolution keeps its
 * weights packed (GEMM path) or transformed and packed (Winograd) from the
 * first forward on. The frozen forward must match the reference as the
 * unfrozen one does, keep matching on a second forward (the kept copy), and
 * really have made the copy (on CPUs with AVX-512, whose GEMM it feeds). */
static void test_frozen_weights(void) {
  static const char *const modes[] = {"0", "2", "4"};
  static const double tol[] = {1e-6, TOL_F2, TOL_F4};
  for (int k = 0; k < 3; k++) {
    set_winograd(modes[k]);
    Pair t;
    if (pair_make(&t, 2, 24, 13, 14, 40, 1, true)) {
      CHECK(0);
      pair_free(&t);
      continue;
    }
    t.fast->weights_frozen = true;
    for (int pass = 0; pass < 2; pass++) {
      CHECK(layer_forward(t.ref, MOKA_BACKEND_CPU) == 0);
      CHECK(layer_forward(t.fast, MOKA_BACKEND_CPU_FAST) == 0);
      const double e = norm_err(t.ft->data, t.rt->data, t.rt->count);
      CHECK_MSG(e < tol[k], "MOKA_WINOGRAD=%s pass %d: error %.3g", modes[k], pass, e);
    }
    const ConvPriv *p = t.fast->priv;
    if (fast_prepacked_allowed())
      CHECK_MSG(k == 0 ? p->wpack != NULL : p->wino_pack != NULL, "MOKA_WINOGRAD=%s: no copy",
                modes[k]);
    pair_free(&t);
  }
  set_winograd(NULL);
}

/* ---- whole nets ----------------------------------------------------------------------- */

static void test_mini_resnet_golden(void) {
  for (int m = 2; m <= 4; m += 2) {
    set_winograd(m == 2 ? "2" : "4");
    CHECK_MSG(golden_forward("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/input.bin",
                             "", 19),
              "F(%dx%d)", m, m);
    CHECK_MSG(golden_forward("golden/mini_resnet/deploy_67x61.prototxt",
                             "golden/mini_resnet/input_67x61.bin", "odd/", 19),
              "F(%dx%d), 67x61", m, m);
  }
  set_winograd(NULL);
}

static void mini_train(const char *wino) {
  set_winograd(wino);
  moka_set_log_level(1);
  Feed f;
  Solver *s = golden_mini_train_start(MOKA_BACKEND_CPU_FAST, &f);
  REQUIRE(s);
  char label[64];
  snprintf(label, sizeof label, "MOKA_WINOGRAD=%s: ", wino);
  double worst = golden_mini_train_check(s, &f, label);
  fprintf(stderr, "    MOKA_WINOGRAD=%s: largest loss difference from Caffe %.2g\n", wino, worst);
  solver_free(s);
  feed_free(&f);
  moka_set_log_level(0);
  set_winograd(NULL);
}

static void test_mini_train_golden(void) {
  mini_train("2");
  mini_train("4");
}

int main(void) {
  rng_seed(&g_rng, 2024);
  fast_init();
  RUN(test_shapes);
  RUN(test_one_thread);
  RUN(test_moved_tap);
  RUN(test_fill_phases);
  RUN(test_dispatch);
  RUN(test_frozen_weights);
  RUN(test_mini_resnet_golden);
  RUN(test_mini_train_golden);
  return test_summary();
}
