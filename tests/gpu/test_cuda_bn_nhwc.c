/* test_cuda_bn_nhwc.c — the fused BatchNorm chain on channels-last bf16
 * (kernels/bn_nhwc.cu, the chains of MOKA_BF16_ACT=1) against the fp32 NCHW chain
 * (kernels/bn_fused.cu, which test_cuda_fused checks against the reference layers and real
 * Caffe), on a GPU. Without one it prints "SKIP: ..." and exits 0.
 *
 *   test_cuda_bn_nhwc            the checks
 *   test_cuda_bn_nhwc bench [B]  ResNet-50's 53 chains at batch B (64): forward + backward
 *                                ms of each distinct shape, both chains, and the pass's
 *                                total (one "bn_nhwc_bench ..." line per shape, then
 *                                "bn_nhwc_total ...")
 *
 * Checks. The same inputs (x, the shortcut, dy, dy1 drawn on the bf16 grid, so both chains
 * read the same numbers), the fp32 chain on NCHW copies, the bf16 one on NHWC copies; every
 * output brought back to NCHW fp32 and compared by NMSE: the bf16 outputs carry one bf16
 * rounding (2^-9 relative, NMSE ~1e-6), dx also the bf16 x_norm: bound 1e-4 (a wrong
 * channel or pixel gives ~1). Statistics, running statistics and the parameter gradients
 * (fp32 in both) within 1e-4 of their largest magnitude; dgamma and dbeta by NMSE <= 1e-4
 * (dgamma sums dz times the bf16 x_norm; a value within an ulp of 0 may take the ReLU's
 * other side in one chain). Without a residual dx is written over dy, as in-place chains run.
 * Cases: batch and global statistics, ReLU with and without, the residual in both orders,
 * the Split's second gradient, C = 8 .. 2048, several chunks.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#ifndef MOKA_WITH_CUDA
int main(void) {
  printf("SKIP: no CUDA device (this moka was built without CUDA: CUDA=0 or no nvcc)\n");
  return test_summary();
}
#else

#include "bf16_host.h"
#include "gputest.h"
#include "moka_cuda.h"
#include "rng.h"
#include "util.h"

static MokaCuda *ctx;

static void *dev_copy(const void *h, size_t bytes) {
  void *d = NULL;
  if (moka_dev_alloc(&d, bytes, "test buffer") || (h && moka_h2d(ctx->stream, d, h, bytes))) {
    fprintf(stderr, "%s\n", moka_error());
    return NULL;
  }
  return d;
}
static void *host_copy(const void *d, size_t bytes) {
  void *h = bf16_host_alloc(bytes);
  if (moka_d2h(ctx->stream, h, d, bytes)) {
    fprintf(stderr, "%s\n", moka_error());
    free(h);
    return NULL;
  }
  return h;
}

static double nmse(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)a[i] - b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  return den > 0 ? num / den : num;
}

static void close_nmse(const char *what, const float *got, const float *want, size_t n,
                       double bound) {
  const double e = nmse(got, want, n);
  CHECK_MSG(e <= bound, "%s: NMSE %.3g > %.1g", what, e, bound);
}

static void close_rel(const char *what, const float *got, const float *want, size_t n,
                      double rel) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    worst = fmax(worst, fabs((double)got[i] - want[i]));
    scale = fmax(scale, fabs((double)want[i]));
  }
  CHECK_MSG(worst <= rel * (scale + 1e-3), "%s: max error %.3g against max |value| %.3g", what,
            worst, scale);
}

typedef struct Case {
  size_t N, C, S;
  bool global, relu, dy1;
  int residual;
  float slope;
} Case;

static void run_case(const Case *k) {
  const size_t N = k->N, C = k->C, S = k->S, n = N * C * S;
  MokaBnFusedGeom g = {.N = N, .C = C, .S = S, .eps = 1e-5f, .maf = 0.999f,
                       .bias_correction = N * S > 1 ? (float)(N * S) / (float)(N * S - 1) : 1.0f,
                       .use_global = k->global, .has_relu = k->relu, .relu_bw = k->relu,
                       .slope = k->slope, .residual = k->residual};
  Rng r;
  rng_seed(&r, 17);
  float *x = malloc(n * 4), *sh = malloc(n * 4), *dy = malloc(n * 4), *dy1 = malloc(n * 4);
  float *par = malloc(7 * C * 4);
  REQUIRE(x && sh && dy && dy1 && par);
  for (size_t i = 0; i < n; i++) {
    x[i] = round_bf16(rng_uniform(&r, -1.0f, 2.0f));
    sh[i] = round_bf16(rng_uniform(&r, -1.0f, 1.0f));
    dy[i] = round_bf16(rng_uniform(&r, -1.0f, 1.0f));
    dy1[i] = round_bf16(rng_uniform(&r, -1.0f, 1.0f));
  }
  /* gamma | beta | b0 | b1 | dgamma | dbeta | (b2 at the end) */
  for (size_t c = 0; c < C; c++) {
    par[c] = rng_uniform(&r, 0.3f, 1.2f);
    par[C + c] = rng_uniform(&r, -0.2f, 0.2f);
    par[2 * C + c] = rng_uniform(&r, -0.5f, 0.5f);
    par[3 * C + c] = rng_uniform(&r, 0.5f, 1.5f);
    par[4 * C + c] = rng_uniform(&r, -1.0f, 1.0f);
    par[5 * C + c] = rng_uniform(&r, -1.0f, 1.0f);
  }
  par[6 * C] = 0.8f;
  const bool res = k->residual >= 0;
  uint16_t *hx = nchw_to_nhwc_bf16(x, N, C, S), *hsh = nchw_to_nhwc_bf16(sh, N, C, S);
  uint16_t *hdy = nchw_to_nhwc_bf16(dy, N, C, S), *hdy1 = nchw_to_nhwc_bf16(dy1, N, C, S);
  /* the fp32 NCHW chain (a, fp32) and the bf16 NHWC one (b) on their own buffers */
  float *ax = dev_copy(x, n * 4), *ay = dev_copy(NULL, n * 4), *ar = dev_copy(sh, n * 4);
  float *axn = dev_copy(NULL, n * 4), *ast = dev_copy(NULL, 3 * C * 4);
  float *apar = dev_copy(par, (6 * C + 1) * 4), *ady = dev_copy(dy, n * 4);
  float *ady1 = dev_copy(dy1, n * 4), *adx = dev_copy(NULL, n * 4), *adr = dev_copy(NULL, n * 4);
  uint16_t *bx = dev_copy(hx, n * 2), *by = dev_copy(NULL, n * 2), *br = dev_copy(hsh, n * 2);
  uint16_t *bxn = dev_copy(NULL, n * 2), *bdy = dev_copy(hdy, n * 2);
  uint16_t *bdy1 = dev_copy(hdy1, n * 2), *bdx = dev_copy(NULL, n * 2), *bdr = dev_copy(NULL, n * 2);
  float *bst = dev_copy(NULL, 3 * C * 4), *bpar = dev_copy(par, (6 * C + 1) * 4);
  const size_t ws_a = moka_cuda_bn_fused_scratch_bytes(&g), ws_b = moka_cuda_bn_nhwc_scratch_bytes(&g);
  void *wsa = dev_copy(NULL, ws_a), *wsb = dev_copy(NULL, ws_b);
  REQUIRE(ax && ay && ar && axn && ast && apar && ady && ady1 && adx && adr && bx && by && br &&
          bxn && bdy && bdy1 && bdx && bdr && bst && bpar && wsa && wsb);
  float *ag = apar, *abeta = apar + C, *ab0 = apar + 2 * C, *ab1 = apar + 3 * C;
  float *adg = apar + 4 * C, *adb = apar + 5 * C, *ab2 = apar + 6 * C;
  float *bg = bpar, *bbeta = bpar + C, *bb0 = bpar + 2 * C, *bb1 = bpar + 3 * C;
  float *bdg = bpar + 4 * C, *bdb = bpar + 5 * C, *bb2 = bpar + 6 * C;
  /* forward: xz in place on x (as the nets run it), y the Eltwise's output */
  int rc = moka_cuda_bn_fused_forward(ctx->stream, &g, ax, ax, res ? ay : NULL, res ? ar : NULL,
                                      axn, ast, ab0, ab1, ab2, ag, abeta, wsa);
  if (!rc)
    rc = moka_cuda_bn_nhwc_forward(ctx->stream, &g, bx, bx, res ? by : NULL, res ? br : NULL, bxn,
                                   bst, bb0, bb1, bb2, bg, bbeta, wsb);
  /* backward from the chain's output; without a residual dx overwrites dy, as the nets run
   * an in-place chain (x's diff is y's) */
  const bool alias = !res;
  float *adx_ = alias ? ady : adx;
  uint16_t *bdx_ = alias ? bdy : bdx;
  if (!rc)
    rc = moka_cuda_bn_fused_backward(ctx->stream, &g, ady, k->dy1 ? ady1 : NULL, res ? ay : ax,
                                     axn, ast, ag, adx_, res ? adr : NULL, adg, adb, wsa);
  if (!rc)
    rc = moka_cuda_bn_nhwc_backward(ctx->stream, &g, bdy, k->dy1 ? bdy1 : NULL, res ? by : bx,
                                    bxn, bst, bg, bdx_, res ? bdr : NULL, bdg, bdb, wsb);
  if (!rc) rc = moka_cuda_sync(ctx);
  CHECK_MSG(rc == 0, "N%zu C%zu S%zu: %s", N, C, S, moka_error());
  if (!rc) {
    char what[160];
    const char *tag = k->global ? "global" : "batch";
#define CMP_ACT(name, da, db)                                                                  \
  do {                                                                                         \
    float *ga = host_copy(da, n * 4);                                                          \
    uint16_t *gb = host_copy(db, n * 2);                                                       \
    REQUIRE(ga && gb);                                                                         \
    float *gbf = nhwc_bf16_to_nchw(gb, N, C, S);                                                       \
    snprintf(what, sizeof what, "C%zu S%zu %s %s", C, S, tag, name);                           \
    close_nmse(what, gbf, ga, n, 1e-4);                                                        \
    free(ga), free(gb), free(gbf);                                                             \
  } while (0)
    CMP_ACT("xz", ax, bx);
    CMP_ACT("x_norm", axn, bxn);
    if (res) CMP_ACT("y", ay, by);
    CMP_ACT(alias ? "dx (in place of dy)" : "dx", adx_, bdx_);
    if (res) CMP_ACT("dr", adr, bdr);
#undef CMP_ACT
    float *sa = host_copy(ast, 3 * C * 4), *sb = host_copy(bst, 3 * C * 4);
    float *pa = host_copy(apar, (6 * C + 1) * 4), *pb = host_copy(bpar, (6 * C + 1) * 4);
    REQUIRE(sa && sb && pa && pb);
    snprintf(what, sizeof what, "C%zu S%zu %s statistics", C, S, tag);
    close_rel(what, sb, sa, 3 * C, 1e-4);
    snprintf(what, sizeof what, "C%zu S%zu %s running statistics", C, S, tag);
    close_rel(what, pb + 2 * C, pa + 2 * C, 2 * C + 0, 1e-4);
    CHECK_MSG(fabsf(pb[6 * C] - pa[6 * C]) <= 1e-6f, "running count %g vs %g", pb[6 * C],
              pa[6 * C]);
    /* dgamma sums dz times the bf16 x_norm (2^-9 relative each); dbeta the same dz values,
     * except where an output within an ulp of 0 takes the ReLU's other side in one chain
     * (the two compute z in different roundings): by NMSE, which one such value in a
     * channel's sum barely moves and a wrong channel or sum moves to ~1 */
    snprintf(what, sizeof what, "C%zu S%zu %s dgamma, dbeta", C, S, tag);
    close_nmse(what, pb + 4 * C, pa + 4 * C, 2 * C, 1e-4);
    free(sa), free(sb), free(pa), free(pb);
  }
  void *all[] = {ax, ay, ar, axn, ast, apar, ady, ady1, adx, adr, bx, by,
                 br, bxn, bdy, bdy1, bdx, bdr, bst, bpar, wsa, wsb};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) moka_dev_free(all[i]);
  free(x), free(sh), free(dy), free(dy1), free(par), free(hx), free(hsh), free(hdy), free(hdy1);
}

static void test_against_fp32_chain(void) {
  static const Case cases[] = {
      /* N C S global relu dy1 residual slope */
      {2, 8, 9, false, true, false, -1, 0.0f},
      {3, 24, 25, false, true, true, 0, 0.0f},
      {2, 64, 196, false, false, false, 1, 0.0f},
      {4, 136, 49, true, true, false, -1, 0.1f},
      {1, 2048, 49, false, true, true, 1, 0.0f},
      {8, 128, 784, false, true, false, 0, 0.0f}, /* several chunks */
      {2, 512, 49, true, false, true, 0, 0.0f},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
}

/* ---- benchmark: ResNet-50's 53 chains ------------------------------------------------------ */

typedef struct ChainShape {
  const char *name;
  int C, HW, count;
  bool residual, relu;
} ChainShape;

static const ChainShape chain_shapes[] = {
    {"bn_conv1", 64, 112, 1, false, true},  {"res2 2a/2b", 64, 56, 6, false, true},
    {"res2 branch1", 256, 56, 1, false, false}, {"res2 2c+sum", 256, 56, 3, true, true},
    {"res3 2a/2b", 128, 28, 8, false, true}, {"res3 branch1", 512, 28, 1, false, false},
    {"res3 2c+sum", 512, 28, 4, true, true}, {"res4 2a/2b", 256, 14, 12, false, true},
    {"res4 branch1", 1024, 14, 1, false, false}, {"res4 2c+sum", 1024, 14, 6, true, true},
    {"res5 2a/2b", 512, 7, 6, false, true},  {"res5 branch1", 2048, 7, 1, false, false},
    {"res5 2c+sum", 2048, 7, 3, true, true},
};

static int bench(int batch) {
  const int iters = 10;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  double tot_a = 0, tot_b = 0;
  int fails = 0;
  printf("fused BatchNorm chains, ResNet-50 at batch %d, device %s: forward+backward ms\n", batch,
         ctx->device_name);
  for (size_t i = 0; i < sizeof chain_shapes / sizeof chain_shapes[0]; i++) {
    const ChainShape *cs = &chain_shapes[i];
    const size_t N = batch, C = cs->C, S = (size_t)cs->HW * cs->HW, n = N * C * S;
    MokaBnFusedGeom g = {.N = N, .C = C, .S = S, .eps = 1e-5f, .maf = 0.999f,
                         .bias_correction = 1.0f, .use_global = false, .has_relu = cs->relu,
                         .relu_bw = cs->relu, .slope = 0.0f, .residual = cs->residual ? 0 : -1};
    float *a = dev_copy(NULL, 5 * n * 4), *par = dev_copy(NULL, 9 * C * 4 + 4);
    uint16_t *b = dev_copy(NULL, 5 * n * 2);
    void *wsa = dev_copy(NULL, moka_cuda_bn_fused_scratch_bytes(&g));
    void *wsb = dev_copy(NULL, moka_cuda_bn_nhwc_scratch_bytes(&g));
    if (!a || !par || !b || !wsa || !wsb) {
      printf("bn_nhwc_bench_error shape=%s: %s\n", cs->name, moka_error());
      fails++;
      moka_dev_free(a), moka_dev_free(par), moka_dev_free(b), moka_dev_free(wsa), moka_dev_free(wsb);
      continue;
    }
    /* zeros everywhere: finite (sd = sqrt(eps)); the timing does not depend on the values */
    cudaMemsetAsync(a, 0, 5 * n * 4, ctx->stream);
    cudaMemsetAsync(b, 0, 5 * n * 2, ctx->stream);
    cudaMemsetAsync(par, 0, 9 * C * 4 + 4, ctx->stream);
    float *stats = par, *g0 = par + 3 * C, *p0 = par + 4 * C, *p1 = par + 5 * C;
    float *dg = par + 6 * C, *db = par + 7 * C, *beta = par + 8 * C, *p2 = par + 9 * C;
    double ms[2] = {-1, -1};
    for (int which = 0; which < 2; which++) {
      int rc = 0;
      for (int it = -1; it < iters && !rc; it++) {
        if (it == 0) cudaEventRecord(e0, ctx->stream);
        if (which == 0) {
          float *x = a, *y = a + n, *r = a + 2 * n, *xn = a + 3 * n, *d = a + 4 * n;
          rc = moka_cuda_bn_fused_forward(ctx->stream, &g, x, x, cs->residual ? y : NULL,
                                          cs->residual ? r : NULL, xn, stats, p0, p1, p2, g0,
                                          beta, wsa) ||
               moka_cuda_bn_fused_backward(ctx->stream, &g, d, NULL, cs->residual ? y : x, xn,
                                           stats, g0, d, cs->residual ? r : NULL, dg, db, wsa);
        } else {
          uint16_t *x = b, *y = b + n, *r = b + 2 * n, *xn = b + 3 * n, *d = b + 4 * n;
          rc = moka_cuda_bn_nhwc_forward(ctx->stream, &g, x, x, cs->residual ? y : NULL,
                                         cs->residual ? r : NULL, xn, stats, p0, p1, p2, g0, beta,
                                         wsb) ||
               moka_cuda_bn_nhwc_backward(ctx->stream, &g, d, NULL, cs->residual ? y : x, xn,
                                          stats, g0, d, cs->residual ? r : NULL, dg, db, wsb);
        }
      }
      cudaEventRecord(e1, ctx->stream);
      if (!rc) rc = moka_cuda_sync(ctx);
      float t = 0;
      if (!rc && cudaEventElapsedTime(&t, e0, e1) == cudaSuccess) ms[which] = t / iters;
      if (rc) {
        printf("bn_nhwc_bench_error shape=%s chain=%s: %s\n", cs->name,
               which ? "nhwc_bf16" : "nchw_fp32", moka_error());
        fails++;
      }
    }
    printf("bn_nhwc_bench shape=\"%s\" C=%d HW=%dx%d count=%d nchw_fp32_ms=%.4f nhwc_bf16_ms=%.4f\n",
           cs->name, cs->C, cs->HW, cs->HW, cs->count, ms[0], ms[1]);
    if (ms[0] > 0) tot_a += ms[0] * cs->count;
    if (ms[1] > 0) tot_b += ms[1] * cs->count;
    moka_dev_free(a), moka_dev_free(par), moka_dev_free(b), moka_dev_free(wsa), moka_dev_free(wsb);
  }
  printf("bn_nhwc_total batch=%d nchw_fp32_ms=%.3f nhwc_bf16_ms=%.3f ratio=%.2f\n", batch, tot_a,
         tot_b, tot_b > 0 ? tot_a / tot_b : 0.0);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return fails ? 1 : 0;
}

int main(int argc, char **argv) {
  const int g = gpu_test_open(&ctx);
  if (g) return g > 0 ? test_summary() : 1;
  if (argc > 1 && !strcmp(argv[1], "bench")) {
    const int b = argc > 2 ? atoi(argv[2]) : 64;
    const int rc = bench(b > 0 ? b : 64);
    moka_cuda_destroy(ctx);
    return rc;
  }
  RUN(test_against_fp32_chain);
  moka_cuda_destroy(ctx);
  return test_summary();
}
#endif
