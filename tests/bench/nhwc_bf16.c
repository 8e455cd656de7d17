/* nhwc_bf16.c — times the channels-last bf16 1x1 convolution kernels
 * (src/layers/conv_nhwc_bf16.c) on ResNet-50's 1x1 stride-1 layer shapes:
 *
 *   nhwc_bf16 BATCH [REPS]
 *
 * One line per shape (every 1x1 and 3x3 layer of ResNet-50 has one), then
 * the totals over the 36 1x1 and the 16 3x3 layers: ms and GFLOP/s of the forward (weights packed + GEMM,
 * fp32 output), the data gradient (the same) and the weight gradient,
 * each the median of REPS calls (default 11) after one warm-up, on random
 * bf16 inputs (never zeros); with NHWC_BENCH_COLD=1 in the environment,
 * 96 MiB are written before each call, so that the operands come from
 * memory as they do in a net (the default leaves them in the caches from
 * the call before). Built and run by tests/bench/nhwc_bf16.sh,
 * which puts moka time's figures for the NCHW bf16 layers beside them. A
 * benchmark, not a test. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layers/conv_nhwc_bf16.h"
#include "layers/fast.h"
#include "rng.h"
#include "util.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct Shape {
  const char *layers; /* ResNet-50's layers of this shape */
  int count;          /* how many */
  int C, OC, hw;      /* hw: the output's side */
  int k;              /* kernel size: 1 (1x1 kernels) or 3 (3x3 pad 1: the convolution kernels) */
} Shape;

/* Every 1x1 layer of ResNet-50 (the stride-2 ones as 1x1 stride-1 layers of
 * their subsampled input, as moka runs them: src/net_fuse_sub.c). */
static const Shape shapes[] = {
    {"res2a_branch2a", 1, 64, 64, 56, 1},
    {"res2[abc]_branch2c res2a_branch1", 4, 64, 256, 56, 1},
    {"res2[bc]_branch2a", 2, 256, 64, 56, 1},
    {"res3a_branch2a (s2)", 1, 256, 128, 28, 1},
    {"res3a_branch1 (s2)", 1, 256, 512, 28, 1},
    {"res3[a-d]_branch2c", 4, 128, 512, 28, 1},
    {"res3[b-d]_branch2a", 3, 512, 128, 28, 1},
    {"res4a_branch2a (s2)", 1, 512, 256, 14, 1},
    {"res4a_branch1 (s2)", 1, 512, 1024, 14, 1},
    {"res4[a-f]_branch2c", 6, 256, 1024, 14, 1},
    {"res4[b-f]_branch2a", 5, 1024, 256, 14, 1},
    {"res5a_branch2a (s2)", 1, 1024, 512, 7, 1},
    {"res5a_branch1 (s2)", 1, 1024, 2048, 7, 1},
    {"res5[abc]_branch2c", 3, 512, 2048, 7, 1},
    {"res5[bc]_branch2a", 2, 2048, 512, 7, 1},
    {"res2[abc]_branch2b", 3, 64, 64, 56, 3},
    {"res3[a-d]_branch2b", 4, 128, 128, 28, 3},
    {"res4[a-f]_branch2b", 6, 256, 256, 14, 3},
    {"res5[abc]_branch2b", 3, 512, 512, 7, 3},
};

enum { FWD, DGRAD, WGRAD, KINDS };
enum { FLUSH_BYTES = 96 << 20 }; /* NHWC_BENCH_COLD: written before each call (L3 is 32 MiB) */

int main(int argc, char **argv) {
  const int batch = argc > 1 ? atoi(argv[1]) : 8, reps = argc > 2 ? atoi(argv[2]) : 11;
  if (batch < 1 || reps < 1) {
    fprintf(stderr, "usage: nhwc_bf16 BATCH [REPS]\n");
    return 2;
  }
  if (!fast_bf16_supported()) {
    fprintf(stderr, "nhwc_bf16: this CPU has no AVX-512 BF16\n");
    return 1;
  }
  fast_init();
  Rng rng;
  rng_seed(&rng, 1);
  printf("   batch %d, %d threads, median of %d; ms (GFLOP/s)\n", batch, fast_threads(), reps);
  printf("   %-34s %5s %5s %4s  %15s %15s %15s\n", "layers", "C", "OC", "HW", "forward",
         "data grad", "weight grad");
  double total[2][KINDS] = {{0}};
  char *flush = getenv("NHWC_BENCH_COLD") && *getenv("NHWC_BENCH_COLD") ? malloc(FLUSH_BYTES) : NULL;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const Shape *sh = &shapes[s];
    const int C = sh->C, OC = sh->OC, P = batch * sh->hw * sh->hw;
    float *f = malloc(sizeof(float) * (size_t)P * (C > OC ? C : OC));
    float *w = malloc(sizeof(float) * (size_t)OC * C * 9), *dw = calloc((size_t)OC * C * 9, sizeof(float));
    float *y = malloc(sizeof(float) * (size_t)P * (C > OC ? C : OC));
    uint16_t *x16 = malloc(2 * (size_t)P * C), *dy16 = malloc(2 * (size_t)P * OC);
    const int T = sh->k * sh->k;
    NhwcGeom g = {batch, sh->hw, sh->hw, C, OC, sh->k, sh->k, 1, 1, sh->k / 2, sh->k / 2, 0, 0}, d;
    nhwc_geom_finish(&g);
    if (nhwc_bf16_dgrad_geom(&g, &d)) return 1;
    int32_t *bp = malloc(4 * (nhwc_bf16_packed_b_size(T * C, OC) > nhwc_bf16_packed_b_size(T * OC, C)
                                  ? nhwc_bf16_packed_b_size(T * C, OC)
                                  : nhwc_bf16_packed_b_size(T * OC, C)));
    if (!f || !w || !dw || !y || !x16 || !dy16 || !bp) {
      fprintf(stderr, "nhwc_bf16: out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < (size_t)P * C; i++) f[i] = rng_gaussian(&rng, 0.0f, 1.0f);
    nhwc_bf16_round(f, (size_t)P * C, x16);
    for (size_t i = 0; i < (size_t)P * OC; i++) f[i] = rng_gaussian(&rng, 0.0f, 0.01f);
    nhwc_bf16_round(f, (size_t)P * OC, dy16);
    for (size_t i = 0; i < (size_t)OC * C * T; i++) w[i] = rng_gaussian(&rng, 0.0f, 0.05f);
    const double gflop = 2.0 * P * C * OC * T / 1e9;
    double med[KINDS];
    for (int k = 0; k < KINDS; k++) {
      double *t = malloc(sizeof(double) * reps);
      for (int r = -1; r < reps; r++) {
        if (flush) memset(flush, r & 0xff, FLUSH_BYTES); /* operands from memory, as in a net */
        const double t0 = now_ms();
        int rc = 0;
        if (T == 1 && k == FWD) {
          nhwc_bf16_pack_fwd(w, OC, C, bp);
          rc = nhwc_bf16_gemm(x16, C, P, C, bp, OC, y, NULL, OC);
        } else if (T == 1 && k == DGRAD) {
          nhwc_bf16_pack_dgrad(w, OC, C, bp);
          rc = nhwc_bf16_gemm(dy16, OC, P, OC, bp, C, y, NULL, C);
        } else if (T == 1) {
          rc = nhwc_bf16_wgrad(dy16, x16, P, OC, C, dw);
        } else if (k == FWD) {
          rc = nhwc_bf16_pack_conv_fwd(&g, w, bp) || nhwc_bf16_conv_fwd(&g, x16, bp, y, NULL);
        } else if (k == DGRAD) {
          rc = nhwc_bf16_pack_conv_dgrad(&g, w, bp) || nhwc_bf16_conv_fwd(&d, dy16, bp, y, NULL);
        } else {
          rc = nhwc_bf16_conv_wgrad(&g, dy16, x16, dw);
        }
        if (rc) {
          fprintf(stderr, "nhwc_bf16: %s\n", moka_error());
          return 1;
        }
        if (r >= 0) t[r] = now_ms() - t0;
      }
      qsort(t, reps, sizeof(double), cmp_double);
      med[k] = t[reps / 2];
      total[T > 1][k] += med[k] * sh->count;
      free(t);
    }
    printf("   %-34s %5d %5d %4d  %6.3f (%5.0f)  %6.3f (%5.0f)  %6.3f (%5.0f)\n", sh->layers, C,
           OC, sh->hw, med[FWD], gflop / med[FWD] * 1e3, med[DGRAD], gflop / med[DGRAD] * 1e3,
           med[WGRAD], gflop / med[WGRAD] * 1e3);
    free(f), free(w), free(dw), free(y), free(x16), free(dy16), free(bp);
  }
  for (int k3 = 0; k3 < 2; k3++)
    printf("   all %d %s layers: forward %.2f ms, data gradient %.2f, weight gradient %.2f "
           "(backward %.2f)\n",
           k3 ? 16 : 36, k3 ? "3x3" : "1x1", total[k3][FWD], total[k3][DGRAD], total[k3][WGRAD],
           total[k3][DGRAD] + total[k3][WGRAD]);
  return 0;
}
