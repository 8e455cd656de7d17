/* conv_nhwc_priv.h — what the channels-last bf16 kernels (conv_nhwc_bf16.c) share with their
 * AMX forward (conv_nhwc_amx.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_CONV_NHWC_PRIV_H
#define MOKA_LAYERS_CONV_NHWC_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conv_nhwc_bf16.h"

enum {
  NHWC_MAX_TAPS = 64, /* kernel taps at most (KH*KW) */
  NHWC_PATCH_C = 16   /* fewer channels: the stem (its weight gradient over whole patches) */
};

/* rows[t*unit + m] = tile row m's input row under tap t (x32: x as dwords, channel pairs), or
 * zero where the tap falls into the padding (and for rows past mr); rows of output pixels
 * m0.. */
void nhwc_tap_rows(const NhwcGeom *g, const int32_t *x32, const int32_t *zero, long m0, int mr,
                   int unit, const int32_t **rows);
/* The stem's: rows[kh*unit + m] = tile row m's run kh (KW*C values) in its padded input xp32
 * (rows past mr: row 0's). */
void nhwc_stem_rows(const NhwcGeom *g, const int32_t *xp32, long m0, int mr, int unit,
                    const int32_t **rows);

/* With AMX (conv_nhwc_amx.c): nhwc_bf16_gemm's y = a x B (a32 rows lda32 dwords apart, K =
 * 2*kpt, kpt a multiple of 16; B packed in 32-column panels), and conv_fwd's forward of g
 * (zero: a zero row of C/2 + 16 dwords; the stem's any C; otherwise C a multiple of 32), on
 * nth threads. 0, or -1 with moka_errorf. */
int nhwc_amx_gemm(const int32_t *a32, size_t lda32, long P, int kpt, const int32_t *bp, int N,
                  float *y, uint16_t *y16, size_t ldy, int nth);
int nhwc_amx_conv_fwd(const NhwcGeom *g, const int32_t *x32, const int32_t *zero,
                      const int32_t *bp, const float *bias, float *y, uint16_t *y16, bool stem,
                      int nth);

#endif
