/* pool_geom.h — Caffe's pooling window, shared by the CPU reference
 * (src/layers/pooling.c) and the CUDA kernels (kernels/pooling.cu), so that
 * the two cannot drift apart. (The output size itself, Caffe's ceil rounding,
 * is computed once on the host in pooling.c's reshape.)
 *
 * Window of output o along one axis: [o*stride - pad, o*stride - pad + kernel)
 * clipped to in + pad for the AVE divisor (padding counts, the part past the
 * padded edge does not), then clipped to the image [0, in) for the values.
 */
#ifndef MOKA_POOL_GEOM_H
#define MOKA_POOL_GEOM_H

#ifdef __CUDACC__
#define MOKA_HD __host__ __device__
#else
#define MOKA_HD
#endif

/* [*start, *end) of output o's window clipped to the image; returns the AVE
 * divisor extent (clipped to in + pad only). */
static inline MOKA_HD int pool_window(int o, int stride, int pad, int kernel, int in, int *start,
                                      int *end) {
  int s = o * stride - pad;
  int e = s + kernel < in + pad ? s + kernel : in + pad;
  int extent = e - s;
  *start = s > 0 ? s : 0;
  *end = e < in ? e : in;
  return extent;
}

/* The outputs [*first, *last) along one axis whose window contains input
 * position i (0 <= i < in); out = the number of outputs. */
static inline MOKA_HD void pool_outputs_of(int i, int stride, int pad, int kernel, int out,
                                           int *first, int *last) {
  *first = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  int l = (i + pad) / stride + 1;
  *last = l < out ? l : out;
}

#endif
