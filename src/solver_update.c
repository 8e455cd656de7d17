/* solver_update.c — Caffe's learning-rate policies and parameter update
 * rules (SGDSolver::ApplyUpdate, the solvers' ComputeUpdateValue, gradient
 * clipping, normalisation and regularisation), CPU reference, and the switch
 * to the CUDA update. Every numerical step mirrors Caffe 1.0's float32 code
 * (src/caffe/solver.cpp, src/caffe/solvers/ and Caffe's BLAS wrappers), in
 * the same order and the same precision:
 *
 *   caffe_cpu_axpby(n, a, x, b, y)  = sscal(b, y) then saxpy(a, x, y):
 *                                     y = b*y; y = y + a*x   (two float roundings)
 *   caffe_axpy(n, a, x, y)          = y = y + a*x
 *   caffe_powx(x, e)                = powf(x, e)
 *
 * GCC in ISO C mode (-std=c11) does not contract a*b+c into an FMA, so each
 * expression below rounds exactly where Caffe's reference BLAS rounds.
 */
#include "solver.h"

#include <math.h>
#include <string.h>

#include "net_check.h"
#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "net_cuda.h"
#endif

/* ---- learning rate (SGDSolver::GetLearningRate) -------------------------------------- */

/* Precision as in Caffe: Dtype = float; std::pow(float, int) is computed in
 * double (C++11), std::pow(float, float) and exp(float) in float.
 *   fixed:     base_lr
 *   step:      base_lr * gamma ^ floor(iter / stepsize)
 *   exp:       base_lr * gamma ^ iter
 *   inv:       base_lr * (1 + gamma * iter) ^ (-power)
 *   multistep: base_lr * gamma ^ (number of stepvalues passed; advanced one
 *              per call, so current_step is part of the saved state)
 *   poly:      base_lr * (1 - iter/max_iter) ^ power
 *   sigmoid:   base_lr * 1 / (1 + exp(-gamma * (iter - stepsize)))        */
float solver_learning_rate(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  const char *pol = p->lr_policy ? p->lr_policy : "";
  const float base_lr = p->base_lr, gamma = p->gamma, power = p->power;
  const int iter = s->iter;
  if (!strcmp(pol, "fixed")) return base_lr;
  if (!strcmp(pol, "step")) {
    if (p->stepsize <= 0) goto bad;
    s->current_step = iter / p->stepsize;
    return (float)((double)base_lr * pow((double)gamma, s->current_step));
  }
  if (!strcmp(pol, "exp")) return (float)((double)base_lr * pow((double)gamma, iter));
  if (!strcmp(pol, "inv")) return base_lr * powf(1.0f + gamma * (float)iter, -power);
  if (!strcmp(pol, "multistep")) {
    if (s->current_step < (int)p->n_stepvalue && iter >= p->stepvalue[s->current_step]) {
      s->current_step++;
      LOG_INFO("MultiStep Status: Iteration %d, step = %d", iter, s->current_step);
    }
    return (float)((double)base_lr * pow((double)gamma, s->current_step));
  }
  if (!strcmp(pol, "poly"))
    return base_lr * powf(1.0f - ((float)iter / (float)p->max_iter), power);
  if (!strcmp(pol, "sigmoid")) {
    if (p->stepsize <= 0) goto bad;
    return base_lr * (1.0f / (1.0f + expf(-gamma * ((float)iter - (float)p->stepsize))));
  }
bad:
  moka_errorf("Unknown learning rate policy: '%s' (or stepsize <= 0)", pol);
  return NAN;
}

/* ---- the update (SGDSolver::ApplyUpdate and the solvers' ComputeUpdateValue) --------- */

/* ClipGradients: if the L2 norm of all learnable diffs together exceeds
 * clip_gradients, scale every diff by clip_gradients / norm. */
static void clip_gradients(Solver *s) {
  const float clip = s->param->clip_gradients;
  if (clip < 0) return;
  Net *net = s->net;
  float sumsq = 0; /* Caffe: Dtype sum of each blob's sumsq_diff (a float dot) */
  for (int i = 0; i < net->n_params; i++) {
    const Blob *b = net->params[i];
    double acc = 0;
    for (size_t k = 0; k < b->count; k++) acc += (double)b->diff[k] * b->diff[k];
    sumsq += (float)acc;
  }
  const float l2norm = sqrtf(sumsq);
  if (l2norm > clip) {
    const float scale = clip / l2norm;
    LOG_INFO("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
             (double)l2norm, (double)clip, (double)scale);
    for (size_t k = 0; k < net->param_count; k++) net->param_diff[k] *= scale;
  }
}

/* Per parameter blob i (n values at flat offset off), on its diff g:
 *   Normalize:  g = g * (1/iter_size)                   (only when iter_size > 1)
 *   Regularize: local_decay = weight_decay * decay_mult[i]; when non-zero:
 *               L2: g = g + local_decay * w
 *               L1: g = g + local_decay * sign(w)
 *   then the solver's update value, written back into g (see below). */
static void normalize_regularize(Solver *s, int i, size_t off, size_t n) {
  const Caffe__SolverParameter *p = s->param;
  float *w = s->net->param_data + off; /* (n) */
  float *g = s->net->param_diff + off; /* (n) */
  if (p->iter_size != 1) {
    const float a = 1.0f / (float)p->iter_size;
    for (size_t k = 0; k < n; k++) g[k] *= a;
  }
  const float local_decay = p->weight_decay * s->net->param_decay_mult[i];
  if (local_decay != 0.0f) {
    const bool l1 = p->regularization_type && !strcmp(p->regularization_type, "L1");
    if (l1) {
      for (size_t k = 0; k < n; k++) {
        const float sign = (float)((0.0f < w[k]) - (w[k] < 0.0f));
        g[k] = g[k] + local_decay * sign;
      }
    } else {
      for (size_t k = 0; k < n; k++) g[k] = g[k] + local_decay * w[k];
    }
  }
}

/* The update value of each solver, written into g (then w -= g):
 *
 * SGD:       h = momentum*h;  h = h + local_rate*g;  g = h
 *            (local_rate = rate * lr_mult[i]: the rate sits inside the
 *            momentum buffer, unlike PyTorch)
 * Nesterov:  u = h;  h = momentum*h + local_rate*g;
 *            u = -momentum*u;  u = u + (1+momentum)*h;  g = u
 * AdaGrad:   u = g^2;  h = h + u;  u = h^0.5;  u = u + delta;  u = g / u;
 *            g = 0*g;  g = g + local_rate*u
 * RMSProp:   u = g^2;  h = rms_decay*h;  h = h + (1-rms_decay)*u;
 *            u = h^0.5 + delta;  u = g / u;  g = 0*g;  g = g + local_rate*u
 * AdaDelta:  u = g^2;  h1 = momentum*h1;  h1 = h1 + (1-momentum)*u;
 *            u = h2 + delta;  t = h1 + delta;  u = (u / t)^0.5;  g = g*u;
 *            u = g^2;  h2 = momentum*h2;  h2 = h2 + (1-momentum)*u;
 *            g = local_rate*g
 * Adam:      m = beta1*m;  m = m + (1-beta1)*g;  t = g*g;
 *            v = beta2*v;  v = v + (1-beta2)*t;  t = v^0.5 + delta;  t = m / t;
 *            g = (local_rate*correction) * t,  correction =
 *            sqrt(1 - beta2^(iter+1)) / (1 - beta1^(iter+1))   (in double)
 * (x^e is powf, as caffe_powx.) */
static void compute_update_value(Solver *s, int i, size_t off, size_t n, float rate) {
  const Caffe__SolverParameter *p = s->param;
  float *g = s->net->param_diff + off;  /* (n) */
  float *h = s->history[0] + off;       /* (n) */
  float *u = s->update + off;           /* (n) */
  float *t = s->temp + off;             /* (n) */
  const float momentum = p->momentum;
  const float local_rate = rate * s->net->param_lr_mult[i];
  const float delta = p->delta;
  switch (s->kind) {
    case SOLVER_SGD:
      for (size_t k = 0; k < n; k++) {
        h[k] = momentum * h[k];
        h[k] = h[k] + local_rate * g[k];
        g[k] = h[k];
      }
      break;
    case SOLVER_NESTEROV: {
      const float m1 = 1.0f + momentum;
      for (size_t k = 0; k < n; k++) {
        u[k] = h[k];
        h[k] = momentum * h[k];
        h[k] = h[k] + local_rate * g[k];
        u[k] = -momentum * u[k];
        u[k] = u[k] + m1 * h[k];
        g[k] = u[k];
      }
      break;
    }
    case SOLVER_ADAGRAD:
      for (size_t k = 0; k < n; k++) {
        u[k] = powf(g[k], 2.0f);
        h[k] = u[k] + h[k];
        u[k] = powf(h[k], 0.5f);
        u[k] = u[k] + delta;
        u[k] = g[k] / u[k];
        g[k] = 0.0f * g[k];
        g[k] = g[k] + local_rate * u[k];
      }
      break;
    case SOLVER_RMSPROP: {
      const float rms_decay = p->rms_decay, one_minus = 1.0f - rms_decay;
      for (size_t k = 0; k < n; k++) {
        u[k] = powf(g[k], 2.0f);
        h[k] = rms_decay * h[k];
        h[k] = h[k] + one_minus * u[k];
        u[k] = powf(h[k], 0.5f);
        u[k] = u[k] + delta;
        u[k] = g[k] / u[k];
        g[k] = 0.0f * g[k];
        g[k] = g[k] + local_rate * u[k];
      }
      break;
    }
    case SOLVER_ADADELTA: {
      float *h2 = s->history[1] + off; /* (n) history of updates */
      const float one_minus = 1.0f - momentum;
      for (size_t k = 0; k < n; k++) {
        u[k] = powf(g[k], 2.0f);
        h[k] = momentum * h[k];
        h[k] = h[k] + one_minus * u[k];
        t[k] = delta;
        u[k] = t[k] + h2[k];
        t[k] = t[k] + h[k];
        u[k] = u[k] / t[k];
        u[k] = powf(u[k], 0.5f);
        g[k] = g[k] * u[k];
        u[k] = powf(g[k], 2.0f);
        h2[k] = momentum * h2[k];
        h2[k] = h2[k] + one_minus * u[k];
        g[k] = local_rate * g[k];
      }
      break;
    }
    case SOLVER_ADAM: {
      float *v = s->history[1] + off; /* (n) second moment */
      const float beta1 = momentum, beta2 = p->momentum2;
      const int it = s->iter + 1;
      const float correction =
          (float)(sqrt(1.0 - pow((double)beta2, it)) / (1.0 - pow((double)beta1, it)));
      const float step = local_rate * correction;
      for (size_t k = 0; k < n; k++) {
        h[k] = beta1 * h[k];
        h[k] = h[k] + (1.0f - beta1) * g[k];
        t[k] = g[k] * g[k];
        v[k] = beta2 * v[k];
        v[k] = v[k] + (1.0f - beta2) * t[k];
        t[k] = powf(v[k], 0.5f);
        t[k] = t[k] + delta;
        t[k] = h[k] / t[k];
        g[k] = step * t[k];
      }
      break;
    }
  }
}

/* The reference update on the host buffers (net->param_data/param_diff,
 * s->history). */
static void apply_update_host(Solver *s, float rate) {
  clip_gradients(s);
  Net *net = s->net;
  size_t off = 0;
  for (int i = 0; i < net->n_params; i++) {
    const size_t n = net->params[i]->count;
    normalize_regularize(s, i, off, n);
    compute_update_value(s, i, off, n, rate);
    off += n;
  }
  /* debug_info: old Caffe's UpdateDebugInfo, before each blob's update */
  if (net->debug_info)
    for (int i = 0; i < net->n_params; i++) net_debug_update(net, i);
  /* Net::Update: w = w - g for every parameter (one flat buffer). */
  for (size_t k = 0; k < net->param_count; k++)
    net->param_data[k] = net->param_data[k] - net->param_diff[k];
}

#ifdef MOKA_WITH_CUDA
/* The update of a net on the device: a kernel over the flat buffers, or the
 * host path with its explicit copies (chosen and logged by nets_to_device). */
static int apply_update_cuda(Solver *s, float rate) {
  const Caffe__SolverParameter *p = s->param;
  Net *net = s->net;
  const bool l1 = p->regularization_type && !strcmp(p->regularization_type, "L1");
  if (s->update_on_device)
    return s->kind == SOLVER_SGD
               ? net_cuda_sgd_update(net, rate, p->momentum, p->weight_decay, l1, p->iter_size)
               : net_cuda_nesterov_update(net, rate, p->momentum, p->weight_decay, l1,
                                          p->iter_size);
  if (net_params_to_host(net) || net_param_diffs_to_host(net)) return -1;
  apply_update_host(s, rate);
  return net_params_to_device(net) || net_param_diffs_to_device(net) ? -1 : 0;
}
#endif

int solver_apply_update(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  const float rate = solver_learning_rate(s);
  if (isnan(rate)) return -1;
  if (p->display && s->iter % p->display == 0) LOG_INFO("Iteration %d, lr = %g", s->iter, (double)rate);
#ifdef MOKA_WITH_CUDA
  if (s->net->cuda) return apply_update_cuda(s, rate);
#endif
  apply_update_host(s, rate);
  return 0;
}
