/* fast.h — what the fast CPU backend (MOKA_BACKEND_CPU_FAST) shares between
 * its layers: one thread pool, one GEMM, one workspace.
 *
 * Threads. There is a single pool: OpenMP's. OpenBLAS is switched to one
 * thread (once, by fast_init) and fast_gemm splits a GEMM into column (or
 * row) blocks that the OpenMP threads run side by side, each block one
 * single-threaded cblas_sgemm. So OpenBLAS's own threads never compete with
 * OpenMP's (no oversubscription, no spinning pool stealing the other's
 * cores), and BLAS is only ever called from inside a parallel region while
 * it is single-threaded. The reference backend never calls fast_init: when
 * only the reference runs, OpenBLAS keeps its own threading.
 *
 * Workspace. Scratch buffers (column buffers, gathered/transposed blocks)
 * come from fast_workspace(slot, count): a few grow-only buffers per thread,
 * shared by every layer of every net that runs on that thread, so all
 * convolutions together hold one column buffer sized to the largest. A
 * buffer is valid until the next fast_workspace call for the same slot;
 * layers never keep them across calls.
 *
 * Loops. Element-wise loops use `#pragma omp parallel for simd` over ranges
 * of at least FAST_GRAIN elements (smaller ones run on one thread: a parallel
 * region costs microseconds). Internal to src/layers.
 */
#ifndef MOKA_LAYERS_FAST_H
#define MOKA_LAYERS_FAST_H

#include <stdbool.h>
#include <stddef.h>

/* Work below this many elements runs single-threaded. */
#define FAST_GRAIN 32768

/* Workspace slots (independent buffers). */
enum { FAST_WS_COL = 0, FAST_WS_OUT = 1, FAST_WS_AUX = 2, FAST_WS_SLOTS = 3 };

/* Once per process: OpenBLAS to one thread (see above). Cheap to call again. */
void fast_init(void);

/* The OpenMP pool size (>= 1). */
int fast_threads(void);

/* A scratch buffer of at least `count` floats (64-byte aligned), this
 * thread's buffer for `slot`; its contents are undefined. NULL with
 * moka_errorf() naming `what` when it cannot be allocated. */
float *fast_workspace(int slot, size_t count, const char *what);

/* Free this thread's workspace (a later call allocates again). */
void fast_workspace_release(void);

/* C (M,N) = alpha * op(A) * op(B) + beta * C, row-major with leading
 * dimensions, op(A) (M,K) and op(B) (K,N) as in moka_gemm. Runs on the
 * OpenMP pool: blocks of columns (or rows, when N is small) in parallel,
 * each a single-threaded OpenBLAS call. Called from inside a parallel region
 * it runs on the calling thread only. */
void fast_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
