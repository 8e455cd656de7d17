/* conv_winograd_priv.h — what the Winograd convolution's files share
 * (conv_winograd.c: method, tile choice, transforms, forward and data
 * gradient; conv_winograd_wgrad.c: weight gradient). Internal to
 * src/layers. */
#ifndef MOKA_LAYERS_CONV_WINOGRAD_PRIV_H
#define MOKA_LAYERS_CONV_WINOGRAD_PRIV_H

#include <stdbool.h>
#include <stddef.h>

/* One Winograd convolution: the geometry of its input, output and tiles. */
typedef struct Wino {
  int m, a;         /* output tile m x m, input tile a x a, a = m + 2 */
  int n, cin, cout; /* images, input channels, output channels */
  int h, w, oh, ow; /* input and output planes; oh = h + 2 pad_h - 2 */
  int pad_h, pad_w;
  int th, tw; /* tiles per image: th rows of tw; ceil(oh/m), ceil(ow/m) */
} Wino;

/* How the tile rows are cut into chunks (see conv_winograd.c's first comment). */
typedef struct WinoPlan {
  int rows, chunk, n_chunks; /* tile rows in all, per chunk, chunks */
  bool by_chunk;             /* one chunk per thread at a time */
  int threads;
} WinoPlan;

void wino_init(Wino *z, int m, int n, int cin, int cout, int h, int w, int pad_h, int pad_w);
WinoPlan wino_plan(const Wino *z);

/* G (a x 3) of F(2x2,3x3) and F(4x4,3x3). */
extern const float wino_G2[4][3];
extern const float wino_G4[6][3];

/* The transforms' strips hold a row of a tile row deinterleaved by column phase:
 * strip column xx = idx*m + ph at [ph][idx], idx < tw + 1, so that the
 * horizontal transforms of the tw tiles read and write contiguous runs of tw
 * (tile j's column k is [k % m][j + k / m]). */

/* The horizontal loops run over twp = tw rounded up to 8 tiles (whole
 * vectors, no scalar remainder); the extra tiles compute garbage that lands
 * in scratch, in the next tile row's columns (rewritten when that row is
 * done: a channel's rows are done in order by one thread) or in the padding
 * of the chunk's rows (Pp >= P + 8, chunk_stride). The row length of the
 * phase buffers, ld, leaves room for tile twp's neighbour. */
static inline int tiles_padded(int tw) { return (tw + 7) & ~7; }
static inline int row_ld(int tw) { return (tiles_padded(tw) + 1 + 15) & ~15; }
/* The stride of a chunk's rows of V, M and Y: P tiles, padded. */
static inline size_t chunk_stride(size_t P) { return (P + 8 + 15) & ~(size_t)15; }

/* The distance between the a*a planes of V, M or Y (rows channels of Pp
 * floats each): one cache line more than rows * Pp. The transforms write
 * (and read) a tile row's a*a values in a*a planes at once; at exactly
 * rows * Pp apart, a multiple of 4 KiB for every channel count that is a
 * multiple of 16, those a*a streams all fall in the same L1 cache set. */
static inline size_t plane_stride(size_t rows, size_t Pp) { return rows * Pp + 16; }

/* One input row (W) into the m phases of a strip row (m, ld): [ph][idx] =
 * src[idx*m + ph - pad_w], zero outside the row and for idx in [L, L+8). */
void wino_fill_phases(const float *src, int w, int pad_w, int m, int L, int ld, float *row);
/* The scratch floats of one thread's transforms (FAST_WS_AUX). */
size_t wino_scratch_floats(const Wino *z);
/* A chunk's buffers, from the calling thread's workspace, rows Pp =
 * chunk_stride((r1-r0)*tw) apart: *V (a*a, cin) filled with the input tiles
 * of tile rows [r0, r1) of x (N,cin,H,W) (channels in parallel when par),
 * and *M (a*a, cout) for the caller (`what` names it in errors). 0 / -1. */
int wino_chunk_tiles(const Wino *z, const float *x, int r0, int r1, bool par, const char *what,
                     float **V, float **M);

#endif
