/* fast.c — the fast CPU backend's thread pool, GEMM and workspace. See fast.h. */
#include "fast.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>

#include "util.h"

extern void openblas_set_num_threads(int num_threads); /* OpenBLAS (cblas.h declares it too) */

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;

static void init_once(void) { openblas_set_num_threads(1); }

void fast_init(void) { pthread_once(&g_init_once, init_once); }

int fast_threads(void) {
  int t = omp_get_max_threads();
  return t < 1 ? 1 : t;
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
  for (int i = 0; i < FAST_WS_SLOTS; i++) free(w->buf[i]);
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
    free(t_ws->buf[slot]);
    t_ws->buf[slot] = NULL;
    t_ws->cap[slot] = 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) {
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

void fast_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
  fast_init();
  const int T = omp_in_parallel() ? 1 : fast_threads();
  const double flops = 2.0 * M * N * K;
  if (T == 1 || flops < 2e6) {
    sgemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  /* Split the longer of N and M (columns preferred: each block then packs
   * the whole of op(A) once, which for the convolutions is the small weight
   * matrix). Block edges on multiples of 16. */
  const bool by_cols = N >= 64 * T || N >= M;
  const int len = by_cols ? N : M;
  const int nb = n_blocks(len, T, 64);
  if (nb <= 1) {
    sgemm1(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
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
}
