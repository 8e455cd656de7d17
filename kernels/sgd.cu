/* sgd.cu — Caffe's SGDSolver update over the net's flat parameter buffers,
 * one thread per value, the segment (parameter blob) found by binary search
 * in the segment table. Per value, in the CPU solver's order and rounding
 * (src/solver.c: normalize_regularize, compute_update_value, Net::Update;
 * __fmul_rn/__fadd_rn, no FMA):
 *
 *   g = diff                                   (Caffe's Normalize:)
 *   g = g * (1/iter_size)                      when iter_size > 1
 *   g = g + local_decay * w                    (Regularize, L2; L1: sign(w)),
 *                                              when local_decay != 0
 *   h = momentum * h;  h = h + local_rate * g  (ComputeUpdateValue: the rate
 *   diff = h                                    sits inside the momentum)
 *   w = w - diff                               (Net::Update)
 *
 * with local_rate = rate * lr_mult and local_decay = weight_decay *
 * decay_mult of the value's parameter blob. Gradient clipping is not done
 * here: the solver runs a clipped update on the host (src/solver.c).
 */
#include "cuda_internal.h"

__global__ void sgd_update_kernel(float *w, float *diff, float *hist, const MokaSgdSegment *seg,
                                  int n_seg, size_t total, float momentum, float inv_iter_size,
                                  bool normalize, bool l1) {
  MOKA_GRID_LOOP(e, total) {
    const int lo = moka_segment_of(seg, n_seg, e);
    const float rate = seg[lo].local_rate, decay = seg[lo].local_decay;
    const float wv = w[e];
    float g = diff[e];
    if (normalize) g = __fmul_rn(g, inv_iter_size);
    if (decay != 0.0f) {
      const float r = l1 ? (float)((0.0f < wv) - (wv < 0.0f)) : wv;
      g = __fadd_rn(g, __fmul_rn(decay, r));
    }
    float h = __fmul_rn(momentum, hist[e]);
    h = __fadd_rn(h, __fmul_rn(rate, g));
    hist[e] = h;
    diff[e] = h;
    w[e] = __fsub_rn(wv, h);
  }
}

int moka_cuda_sgd_update(cudaStream_t s, float *w, float *diff, float *history,
                         const MokaSgdSegment *seg_dev, int n_seg, size_t total, float momentum,
                         int iter_size, bool l1) {
  if (!total || n_seg <= 0) return 0;
  if (iter_size < 1) return moka_errorf("iter_size must be >= 1, got %d", iter_size);
  const float inv = 1.0f / (float)iter_size;
  sgd_update_kernel<<<moka_blocks(total), MOKA_THREADS, 0, s>>>(
      w, diff, history, seg_dev, n_seg, total, momentum, inv, iter_size != 1, l1);
  return moka_cuda_launched(s, "sgd_update_kernel", __FILE__, __LINE__);
}
