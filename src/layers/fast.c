/* fast.c — the fast CPU backend's thread pool, GEMM and workspace. See fast.h. */
#include "fast.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

extern void openblas_set_num_threads(int num_threads); /* OpenBLAS (cblas.h declares it too) */

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;
static bool g_own_sgemm; /* fp32 GEMMs on gemm_f32.c instead of OpenBLAS */
static bool g_sgemm_forced_openblas; /* MOKA_SGEMM=openblas */

/* The fp32 GEMMs run on moka's own AVX-512 GEMM (gemm_f32.c) whenever the
 * CPU has AVX-512, whatever kernel OpenBLAS picked (once, from the CPU or
 * OPENBLAS_CORETYPE): about 1.7x OpenBLAS's Haswell kernel on an AVX-512
 * CPU, and since its transposed A is read in place faster than OpenBLAS's
 * own AVX-512 kernel too (ResNet-50 training at batch 8 with
 * OPENBLAS_CORETYPE unset, OpenBLAS 0.3.21 Cooperlake: 15.71 -> 16.45 img/s,
 * four interleaved pairs; inference at batch 8 50.2 -> 55.9). OpenBLAS
 * runs them on CPUs without AVX-512, or with MOKA_SGEMM=openblas. */

static void init_once(void) {
  openblas_set_num_threads(1);
  g_own_sgemm = fast_avx512_supported();
  const char *env = getenv("MOKA_SGEMM"); /* "openblas" or "moka": force one (benchmarks) */
  if (env && !strcmp(env, "openblas")) g_own_sgemm = false, g_sgemm_forced_openblas = true;
  if (env && !strcmp(env, "moka") && fast_avx512_supported()) g_own_sgemm = true;
}

bool fast_prepacked_allowed(void) {
  fast_init();
  return fast_avx512_supported() && !g_sgemm_forced_openblas;
}

const char *fast_sgemm_name(void) {
  fast_init();
  return g_own_sgemm ? "moka's AVX-512 kernel (gemm_f32.c)" : "OpenBLAS";
}

void fast_init(void) { pthread_once(&g_init_once, init_once); }

int fast_threads(void) {
  int t = omp_get_max_threads();
  return t < 1 ? 1 : t;
}

/* ---- precision ------------------------------------------------------------------------ */

static FastPrecision g_precision = FAST_FP32;
static pthread_once_t g_precision_once = PTHREAD_ONCE_INIT;

const char *fast_precision_name(FastPrecision p) {
  return p == FAST_BF16 ? "bf16" : p == FAST_TF32 ? "tf32" : "fp32";
}

/* The name only: whether the backend can run it is fast_check_precision's
 * question (a CUDA net's bf16 has nothing to do with this CPU's AVX-512). */
static int parse_precision(const char *name, FastPrecision *out) {
  if (!strcmp(name, "fp32")) *out = FAST_FP32;
  else if (!strcmp(name, "bf16")) *out = FAST_BF16;
  else if (!strcmp(name, "tf32")) *out = FAST_TF32;
  else
    return moka_errorf("unknown precision '%s': use fp32 (the default), bf16, or tf32 (CUDA "
                       "only)",
                       name);
  return 0;
}

int fast_check_precision(bool cuda) {
  const FastPrecision p = fast_precision();
  if (cuda || p == FAST_FP32) return 0;
  if (p == FAST_TF32)
    return moka_errorf("precision tf32 is a CUDA mode (TF32 tensor cores); the CPU backends "
                       "have no TF32: use fp32 or bf16 on the CPU, or run on a GPU (--gpu)");
  if (!fast_bf16_supported())
    return moka_errorf("precision bf16 needs a CPU with AVX-512 BF16 (the vdpbf16ps "
                       "instruction: Intel Cooper Lake / Sapphire Rapids or newer, AMD Zen 4 "
                       "or newer); this CPU lacks it: use fp32, or run on a GPU (--gpu)");
  return 0;
}

static void precision_from_env(void) {
  const char *env = getenv("MOKA_PRECISION");
  FastPrecision p;
  if (!env || !*env) return;
  if (parse_precision(env, &p)) {
    LOG_WARN("MOKA_PRECISION=%s ignored: %s", env, moka_error());
    return;
  }
  g_precision = p;
}

int fast_set_precision(const char *name) {
  pthread_once(&g_precision_once, precision_from_env);
  FastPrecision p;
  if (parse_precision(name, &p)) return -1;
  g_precision = p;
  return 0;
}

FastPrecision fast_precision(void) {
  pthread_once(&g_precision_once, precision_from_env);
  return g_precision;
}

/* ---- workspace ------------------------------------------------------------------------ */

/* This thread's buffers. A pthread key frees them when a thread ends; the
 * thread-local pointers also keep them reachable for LeakSanitizer. */
typedef struct Workspace {
  float *buf[FAST_WS_SLOTS];
  size_t cap[FAST_WS_SLOTS]; /* floats */
} Workspace;

static _Thread_local Workspace *t_ws;
static pthread_key_t g_ws_key;
static pthread_once_t g_ws_once = PTHREAD_ONCE_INIT;

static void ws_free(void *p) {
  Workspace *w = p;
  if (!w) return;
  for (int i = 0; i < FAST_WS_SLOTS; i++) moka_free_big(w->buf[i], w->cap[i] * sizeof(float));
  free(w);
}

static void ws_key_init(void) { (void)pthread_key_create(&g_ws_key, ws_free); }

float *fast_workspace(int slot, size_t count, const char *what) {
  if (slot < 0 || slot >= FAST_WS_SLOTS) {
    moka_errorf("internal: workspace slot %d out of range", slot);
    return NULL;
  }
  pthread_once(&g_ws_once, ws_key_init);
  if (!t_ws) {
    t_ws = moka_calloc(1, sizeof *t_ws);
    if (!t_ws) return NULL;
    (void)pthread_setspecific(g_ws_key, t_ws);
  }
  if (count == 0) count = 1;
  if (count > t_ws->cap[slot]) {
    size_t bytes;
    if (!moka_mul_size(count, sizeof(float), &bytes)) {
      moka_errorf("%s: workspace of %zu floats overflows", what, count);
      return NULL;
    }
    moka_free_big(t_ws->buf[slot], t_ws->cap[slot] * sizeof(float));
    t_ws->buf[slot] = NULL;
    t_ws->cap[slot] = 0;
    void *p = moka_alloc_big(bytes); /* huge pages from 2 MiB on */
    if (!p) {
      moka_errorf("%s: cannot allocate a %.1f MiB workspace", what, bytes / 1048576.0);
      return NULL;
    }
    t_ws->buf[slot] = p;
    t_ws->cap[slot] = count;
  }
  return t_ws->buf[slot];
}

void fast_workspace_release(void) {
  if (!t_ws) return;
  (void)pthread_setspecific(g_ws_key, NULL);
  ws_free(t_ws);
  t_ws = NULL;
}

/* ---- GEMM ----------------------------------------------------------------------------- */

static void sgemm1(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float *c = &C[(size_t)i * ldc + j];
        *c = beta == 0.0f ? 0.0f : beta * *c;
      }
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
              N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* How many blocks to cut `len` into for T threads: about 2 per thread when
 * each stays at least `min_len` long (a second round evens out a thread
 * that another process slowed down), fewer otherwise. */
static int n_blocks(int len, int T, int min_len) {
  int nb = 2 * T;
  while (nb > 1 && len / nb < min_len) nb--;
  return nb;
}

int fast_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
  if (fast_precision() == FAST_BF16)
    return fast_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (fast_precision() == FAST_TF32) /* never silently fp32 */
    return fast_check_precision(false);
  fast_init();
  if (g_own_sgemm) return fast_gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const int T = omp_in_parallel() ? 1 : fast_threads();
  const double flops = 2.0 * M * N * K;
  if (T == 1 || flops < 2e6) {
    sgemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
  }
  /* Split the longer of N and M: each block packs the whole of the other
   * operand, so the shorter one is the one duplicated. Block edges on
   * multiples of 16. */
  const bool by_cols = N >= M;
  const int len = by_cols ? N : M;
  const int nb = n_blocks(len, T, 64);
  if (nb <= 1) {
    sgemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
  for (int b = 0; b < nb; b++) {
    int lo = (int)(((long)len * b / nb) & ~15L), hi = (int)(((long)len * (b + 1) / nb) & ~15L);
    if (b == nb - 1) hi = len;
    if (hi <= lo) continue;
    if (by_cols) {
      /* op(B) columns [lo,hi): B (K,N) -> B + lo; B^T stored (N,K) -> rows lo.. */
      const float *Bb = tb ? B + (size_t)lo * ldb : B + lo;
      sgemm1(ta, tb, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo, ldc);
    } else {
      /* op(A) rows [lo,hi): A (M,K) -> rows lo..; A^T stored (K,M) -> A + lo */
      const float *Ab = ta ? A + lo : A + (size_t)lo * lda;
      sgemm1(ta, tb, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc);
    }
  }
  return 0;
}

int fast_chunked_wgrad(int T, int n_chunks, float *wdiff, size_t wcount,
                       int (*fn)(void *ctx, int k, float *wacc), void *ctx) {
  return fast_chunked_wgrad_parts(T, n_chunks, wdiff, wcount, fn, ctx, NULL);
}

int fast_chunked_wgrad_parts(int T, int n_chunks, float *wdiff, size_t wcount,
                             int (*fn)(void *ctx, int k, float *wacc), void *ctx,
                             float **parts) {
  float *acc[64] = {0};
  if (T > 64) return moka_errorf("internal: more than 64 threads");
  int rc = 0;
#pragma omp parallel num_threads(T) reduction(| : rc)
  {
    const int t = omp_get_thread_num();
    float *wacc = wdiff;
    if (wdiff && t > 0) {
      wacc = fast_workspace(FAST_WS_AUX, wcount, "convolution weight-gradient buffer");
      if (wacc) memset(wacc, 0, wcount * sizeof(float));
      else rc |= 1;
      acc[t] = wacc;
    }
    for (int k = t; k < n_chunks && !rc; k += T) rc |= fn(ctx, k, wacc) != 0;
  }
  if (!rc && parts) {
    for (int t = 0; t < T; t++) parts[t] = t ? acc[t] : wdiff;
    return 0;
  }
  if (!rc && wdiff) {
#pragma omp parallel for simd schedule(static) if (wcount >= FAST_GRAIN)
    for (size_t k = 0; k < wcount; k++) {
      float v = wdiff[k];
      for (int t = 1; t < T; t++)
        if (acc[t]) v += acc[t][k];
      wdiff[k] = v;
    }
  }
  return rc ? -1 : 0;
}

int fast_chunked_wgrad_fresh(int T, int n_chunks, float *wacc0, size_t wcount,
                             int (*fn)(void *ctx, int k, float *wacc, bool fresh), void *ctx,
                             float **parts) {
  float *acc[64] = {0};
  if (T > 64) return moka_errorf("internal: more than 64 threads");
  int rc = 0;
#pragma omp parallel num_threads(T) reduction(| : rc)
  {
    const int t = omp_get_thread_num();
    float *wacc = t ? fast_workspace(FAST_WS_AUX, wcount, "convolution weight-gradient buffer")
                    : wacc0;
    if (!wacc) {
      rc |= 1;
    } else {
      acc[t] = wacc;
      bool fresh = true;
      for (int k = t; k < n_chunks && !rc; k += T, fresh = false)
        rc |= fn(ctx, k, wacc, fresh) != 0;
      if (fresh) memset(wacc, 0, wcount * sizeof(float)); /* no chunk of its own */
    }
  }
  for (int t = 0; t < T && !rc; t++)
    if (!acc[t]) rc = moka_errorf("internal: the pool ran fewer than %d threads", T) != 0;
  if (rc) return -1;
  for (int t = 0; t < T; t++) parts[t] = acc[t];
  return 0;
}

bool fast_gemm_prepare_c(int M, int N, int K, float beta, float *C, int ldc) {
  if (beta != 0.0f && beta != 1.0f)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
  if (K > 0) return false;
  if (beta == 0.0f)
    for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
  return true;
}
