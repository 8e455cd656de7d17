/* conv_nhwc_geom.h — which convolutions kernels/conv_nhwc.cu takes, as plain C (nvcc and the
 * C compiler: conv_nhwc.cu's launchers and the bf16 activation plan, src/net_bf16.c). */
#ifndef MOKA_CONV_NHWC_GEOM_H
#define MOKA_CONV_NHWC_GEOM_H

#include <stdbool.h>

/* dir: 0 forward, 1 data gradient, 2 weight gradient. Group 1, channel counts that are
 * multiples of 8 (16-byte runs of channels), every (N,C,H,W) tensor and the weights under
 * 2^31 values; the data gradient also needs stride 1, or a 1x1 unpadded kernel. */
static inline bool nhwc_conv_geom_ok(int group, int num, int C, int H, int W, int OC, int OH,
                                     int OW, int KH, int KW, int SH, int SW, int PH, int PW,
                                     int dir) {
  if (group != 1 || C % 8 || OC % 8 || num <= 0 || OH <= 0 || OW <= 0) return false;
  const long long lim = 2147483647LL;
  if ((long long)num * C * H * W > lim || (long long)num * OC * OH * OW > lim ||
      (long long)OC * C * KH * KW > lim)
    return false;
  if (dir != 1) return true;
  return (SH == 1 && SW == 1) || (KH == 1 && KW == 1 && PH == 0 && PW == 0);
}

#endif
