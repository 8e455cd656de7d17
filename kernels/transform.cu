/* transform.cu — Caffe's DataTransformer on the device (crop, mirror, mean,
 * scale) for a raw batch: N uint8 (C,H,W) images of possibly different sizes
 * and their per-image crop offsets and mirror flags (src/data/raw_batch.h),
 * drawn on the host in Caffe's order. The same float operations as the CPU
 * transformer (src/data/transform.c), rounded the same way (__fsub_rn /
 * __fmul_rn: no contraction), so the top is bit-identical to the host path;
 * the oracle is transform_apply_raw_host.
 *
 * One thread per output value (n, c, h, w'), w' the written column: it reads
 * column w = mirror ? OW-1-w' : w' of the crop, so writes are coalesced.
 * With MOKA_TRANSFORM_EMULATE defined, only the kernel is compiled, for the
 * CPU emulation in tests/unit/test_transform_raw.c (the grid loop becomes a
 * plain loop, __fsub_rn/__fmul_rn float operations).
 */
#ifndef MOKA_TRANSFORM_EMULATE /* tests/unit/test_transform_raw.c runs the kernel on the CPU */
#include "cuda_internal.h"
#endif

__global__ void transform_kernel(const uint8_t *batch, MokaTransformParams p, float *y,
                                 float *labels) {
  const TransformRawItem *items = (const TransformRawItem *)batch;
  const size_t ow = (size_t)p.out_w, oh = (size_t)p.out_h, C = (size_t)p.channels;
  const size_t total = (size_t)p.num * C * oh * ow;
  MOKA_GRID_LOOP(i, total) {
    if (labels && i < (size_t)p.num) labels[i] = items[i].label;
    const size_t wd = i % ow; /* the written column */
    size_t r = i / ow;
    const size_t h = r % oh;
    r /= oh;
    const size_t c = r % C;
    const size_t n = r / C;
    const TransformRawItem it = items[n];
    const size_t w = it.mirror ? ow - 1 - wd : wd; /* the read column of the crop */
    const size_t src = ((size_t)c * it.h + it.h_off + h) * it.w + it.w_off + w; /* (C,H,W) */
    const float x = (float)batch[it.offset + src];
    float v;
    if (p.mean)
      v = __fmul_rn(__fsub_rn(x, p.mean[src]), p.scale);
    else if (p.n_mean_values)
      v = __fmul_rn(__fsub_rn(x, p.mean_values[p.n_mean_values == 1 ? 0 : c]), p.scale);
    else
      v = __fmul_rn(x, p.scale);
    y[i] = v;
  }
}

#ifndef MOKA_TRANSFORM_EMULATE
int moka_cuda_transform(cudaStream_t s, const MokaTransformParams *p, const uint8_t *batch,
                        float *y, float *labels) {
  if (p->num <= 0 || p->channels <= 0 || p->out_h <= 0 || p->out_w <= 0 || !batch || !y)
    return moka_errorf("moka_cuda_transform: invalid arguments (N=%d C=%d OH=%d OW=%d)", p->num,
                       p->channels, p->out_h, p->out_w);
  if (p->n_mean_values != 0 && p->n_mean_values != 1 && p->n_mean_values != p->channels)
    return moka_errorf("moka_cuda_transform: %d mean values for %d channels", p->n_mean_values,
                       p->channels);
  if (p->n_mean_values && !p->mean_values)
    return moka_errorf("moka_cuda_transform: %d mean values but no pointer", p->n_mean_values);
  if (p->mean && p->n_mean_values)
    return moka_errorf("moka_cuda_transform: a mean file and mean values (use one)");
  const size_t n = (size_t)p->num * p->channels * p->out_h * p->out_w;
  transform_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(batch, *p, y, labels);
  return moka_cuda_launched(s, "transform_kernel", __FILE__, __LINE__);
}
#endif
