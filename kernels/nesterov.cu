/* nesterov.cu — Caffe's NesterovSolver update over the net's flat parameter
 * buffers, one thread per value, the segment (parameter blob) found in the
 * segment table as in sgd.cu. Per value, in the CPU solver's order and
 * rounding (src/solver.c: normalize_regularize, compute_update_value
 * SOLVER_NESTEROV, Net::Update; __fmul_rn/__fadd_rn, no FMA):
 *
 *   g = diff
 *   g = g * (1/iter_size)                          when iter_size > 1
 *   g = g + local_decay * w                        (L2; L1: sign(w)), when
 *                                                  local_decay != 0
 *   u = h                                          (Caffe: update_ = history_)
 *   h = momentum * h;  h = h + local_rate * g      (the rate inside the momentum)
 *   u = -momentum * u;  u = u + (1 + momentum) * h
 *   diff = u;  w = w - diff                        (Net::Update)
 *
 * local_rate = rate * lr_mult, local_decay = weight_decay * decay_mult of the
 * value's parameter blob; 1 + momentum is rounded to float once, as on the
 * CPU. Gradient clipping is not done here: the solver runs a clipped update
 * on the host (src/solver.c).
 */
#include "cuda_internal.h"

__global__ void nesterov_update_kernel(float *w, float *diff, float *hist,
                                       const MokaSgdSegment *seg, int n_seg, size_t total,
                                       float momentum, float one_plus_momentum,
                                       float inv_iter_size, bool normalize, bool l1) {
  MOKA_GRID_LOOP(e, total) {
    const int k = moka_segment_of(seg, n_seg, e);
    const float rate = seg[k].local_rate, decay = seg[k].local_decay;
    const float wv = w[e];
    float g = diff[e];
    if (normalize) g = __fmul_rn(g, inv_iter_size);
    if (decay != 0.0f) {
      const float r = l1 ? (float)((0.0f < wv) - (wv < 0.0f)) : wv;
      g = __fadd_rn(g, __fmul_rn(decay, r));
    }
    const float h_old = hist[e];
    float h = __fmul_rn(momentum, h_old);
    h = __fadd_rn(h, __fmul_rn(rate, g));
    float u = __fmul_rn(-momentum, h_old);
    u = __fadd_rn(u, __fmul_rn(one_plus_momentum, h));
    hist[e] = h;
    diff[e] = u;
    w[e] = __fsub_rn(wv, u);
  }
}

int moka_cuda_nesterov_update(cudaStream_t s, float *w, float *diff, float *history,
                              const MokaSgdSegment *seg_dev, int n_seg, size_t total,
                              float momentum, int iter_size, bool l1) {
  if (!total || n_seg <= 0) return 0;
  if (iter_size < 1) return moka_errorf("iter_size must be >= 1, got %d", iter_size);
  const float inv = 1.0f / (float)iter_size;
  const float m1 = 1.0f + momentum;
  nesterov_update_kernel<<<moka_blocks(total), MOKA_THREADS, 0, s>>>(
      w, diff, history, seg_dev, n_seg, total, momentum, m1, inv, iter_size != 1, l1);
  return moka_cuda_launched(s, "nesterov_update_kernel", __FILE__, __LINE__);
}
