/* solver_loop.c — Caffe's Solver::Step and Solve (the training loop),
 * testing (TestAll / Test, sharing the trained layers with the test nets),
 * the train and test log lines, and the checks for numerical faults (a loss
 * or a gradient that is not finite). See solver.h for the loop step by step.
 */
#include "solver.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "net_check.h"
#include "solver_internal.h"
#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "net_cuda.h"
#endif

/* The values the solver logs, copied down explicitly on the CUDA backend
 * (loss tops are on the host already; Accuracy and other outputs are not). */
static int outputs_to_host(Net *net, Blob *const *outs, int n) {
#ifdef MOKA_WITH_CUDA
  if (net->cuda)
    for (int j = 0; j < n; j++)
      if (blob_to_host(net->cuda, outs[j])) return moka_error_prefix("net '%s' output", net->name);
#else
  (void)net, (void)outs, (void)n;
#endif
  return 0;
}

/* ---- outputs and logging ------------------------------------------------------------- */

/* Caffe lists a net's outputs in name order (a std::set of names). */
static int sorted_outputs(const Net *net, Blob ***out) {
  Blob **o = moka_calloc((size_t)net->n_outputs + 1, sizeof *o);
  if (!o) return -1;
  for (int i = 0; i < net->n_outputs; i++) o[i] = net->outputs[i];
  for (int i = 1; i < net->n_outputs; i++)
    for (int j = i; j > 0 && strcmp(o[j - 1]->name, o[j]->name) > 0; j--) {
      Blob *t = o[j];
      o[j] = o[j - 1];
      o[j - 1] = t;
    }
  *out = o;
  return net->n_outputs;
}

/* Caffe's blob_loss_weights_: the loss weight of the last layer that has the
 * blob as a top. */
static float blob_loss_weight(const Net *net, const Blob *b) {
  float w = 0;
  for (int i = 0; i < net->n_layers; i++)
    for (int t = 0; t < net->layers[i]->n_top; t++)
      if (net->layers[i]->top[t] == b) w = net->layers[i]->loss_weight[t];
  return w;
}

static void log_output(const char *what, int index, const char *name, float value,
                       float loss_weight) {
  if (loss_weight != 0.0f)
    LOG_INFO("    %s #%d: %s = %g (* %g = %g loss)", what, index, name, (double)value,
             (double)loss_weight, (double)(loss_weight * value));
  else
    LOG_INFO("    %s #%d: %s = %g", what, index, name, (double)value);
}

/* Solver::UpdateSmoothedLoss (float arithmetic, as Caffe). */
static void update_smoothed_loss(Solver *s, float loss, int start_iter, int average_loss) {
  if (s->n_losses < average_loss) {
    s->losses[s->n_losses++] = loss;
    const int size = s->n_losses;
    s->smoothed_loss = (s->smoothed_loss * (float)(size - 1) + loss) / (float)size;
  } else {
    const int idx = (s->iter - start_iter) % average_loss;
    s->smoothed_loss += (loss - s->losses[idx]) / (float)average_loss;
    s->losses[idx] = loss;
  }
}

static SolverAction requested_action(Solver *s) {
  return s->opt.action ? s->opt.action(s->opt.user) : SOLVER_ACTION_NONE;
}

/* ---- testing ------------------------------------------------------------------------- */

int solver_share_trained_layers(Net *dst, const Net *src) {
  const bool on_device = dst->cuda || src->cuda;
  if (on_device && !(dst->cuda && src->cuda))
    return moka_errorf("internal error: sharing parameters from net '%s' (%s) to net '%s' (%s): "
                       "both must be on the device or both on the host",
                       src->name, src->cuda ? "device" : "host", dst->name,
                       dst->cuda ? "device" : "host");
#ifdef MOKA_WITH_CUDA
  /* the train net's stream must have finished its update before the copies */
  if (on_device && moka_cuda_sync(src->cuda)) return -1;
#endif
  for (int i = 0; i < src->n_layers; i++) {
    const Layer *a = src->layers[i];
    Layer *b = net_layer(dst, a->name);
    if (!b) continue;
    if (a->n_params != b->n_params)
      return moka_errorf("Incompatible number of blobs for layer '%s': %d in the train net, %d in "
                         "the test net",
                         a->name, a->n_params, b->n_params);
    for (int k = 0; k < a->n_params; k++) {
      if (!blob_same_shape(a->params[k], b->params[k])) {
        char sa[256], sb[256];
        return moka_errorf("Cannot share param %d of layer '%s' between the train and the test "
                           "net: shapes %s and %s differ",
                           k, a->name, blob_shape_string(a->params[k], sa, sizeof sa),
                           blob_shape_string(b->params[k], sb, sizeof sb));
      }
      const size_t bytes = a->params[k]->count * sizeof(float);
#ifdef MOKA_WITH_CUDA
      if (on_device) {
        if (moka_d2d(dst->cuda->stream, b->params[k]->dev_data, a->params[k]->dev_data, bytes))
          return moka_error_prefix("sharing param %d of layer '%s' with net '%s'", k, a->name,
                                   dst->name);
        continue;
      }
#endif
      memcpy(b->params[k]->data, a->params[k]->data, bytes);
    }
  }
#ifdef MOKA_WITH_CUDA
  /* done before the train net's stream writes its parameters again */
  if (on_device && moka_cuda_sync(dst->cuda)) return -1;
#endif
  return 0;
}

int solver_test(Solver *s, int id) {
  const Caffe__SolverParameter *p = s->param;
  if (id < 0 || id >= s->n_test_nets) return moka_errorf("no test net #%d", id);
  LOG_INFO("Iteration %d, Testing net (#%d)", s->iter, id);
  Net *tn = s->test_nets[id];
  if (solver_share_trained_layers(tn, s->net)) return -1;
  const int test_iter = p->test_iter[id];
  Blob **outs;
  int n_out = sorted_outputs(tn, &outs);
  if (n_out < 0) return -1;
  size_t n_scores = 0;
  for (int j = 0; j < n_out; j++) n_scores += outs[j]->count;
  float *score = moka_calloc(n_scores + 1, sizeof *score); /* (n_scores) summed outputs */
  int *score_out = moka_calloc(n_scores + 1, sizeof *score_out);
  int rc = 0;
  if (!score || !score_out) rc = -1;
  float loss = 0;
  for (int i = 0; i < test_iter && !rc; i++) {
    for (SolverAction a = requested_action(s); a != SOLVER_ACTION_NONE; a = requested_action(s)) {
      if (a == SOLVER_ACTION_SNAPSHOT && solver_snapshot(s)) rc = -1;
      if (a == SOLVER_ACTION_STOP) s->requested_early_exit = true;
      if (rc) break;
    }
    if (rc || s->requested_early_exit) break;
    if (s->opt.before_test && s->opt.before_test(s, id, i, s->opt.user)) {
      rc = moka_error_prefix("test net #%d, batch %d", id, i);
      break;
    }
    float iter_loss;
    if (net_forward(tn, &iter_loss)) {
      rc = moka_error_prefix("test net #%d, batch %d", id, i);
      break;
    }
    if (p->test_compute_loss) loss += iter_loss;
    if (outputs_to_host(tn, outs, n_out)) {
      rc = moka_error_prefix("test net #%d, batch %d", id, i);
      break;
    }
    size_t idx = 0;
    for (int j = 0; j < n_out; j++)
      for (size_t k = 0; k < outs[j]->count; k++, idx++) {
        if (i == 0) {
          score[idx] = outs[j]->data[k];
          score_out[idx] = j;
        } else {
          score[idx] += outs[j]->data[k];
        }
      }
  }
  if (!rc && s->requested_early_exit) {
    LOG_INFO("Test interrupted.");
  } else if (!rc) {
    if (p->test_compute_loss) {
      loss /= (float)test_iter;
      LOG_INFO("Test loss: %g", (double)loss);
    }
    if (test_iter > 0)
      for (size_t i = 0; i < n_scores; i++) {
        const Blob *b = outs[score_out[i]];
        const float mean = score[i] / (float)test_iter;
        log_output("Test net output", (int)i, b->name, mean, blob_loss_weight(tn, b));
      }
  }
  free(score);
  free(score_out);
  free(outs);
  return rc;
}

int solver_test_all(Solver *s) {
  for (int i = 0; i < s->n_test_nets && !s->requested_early_exit; i++)
    if (solver_test(s, i)) return -1;
  return 0;
}

/* ---- the loop ------------------------------------------------------------------------ */

static int display_train_outputs(Solver *s) {
  Blob **outs;
  int n_out = sorted_outputs(s->net, &outs);
  if (n_out < 0) return -1;
  if (outputs_to_host(s->net, outs, n_out)) {
    free(outs);
    return -1;
  }
  int index = 0;
  for (int j = 0; j < n_out; j++) {
    const float w = blob_loss_weight(s->net, outs[j]);
    for (size_t k = 0; k < outs[j]->count; k++)
      log_output("Train net output", index++, outs[j]->name, outs[j]->data[k], w);
  }
  free(outs);
  return 0;
}

/* ---- numerical faults ----------------------------------------------------------------- */

/* The loss of a forward pass is not finite: name the layer, stop. */
static int loss_fault(Solver *s, float loss, int micro_batch) {
  NetFault f;
  char where[2048], snap[4400], mb[64] = "";
  if (net_locate_forward_fault(s->net, &f))
    snprintf(where, sizeof where, "(the layer could not be located: %s)", moka_error());
  else
    net_fault_describe(s->net, &f, where, sizeof where);
  solver_last_snapshot_text(s, snap, sizeof snap);
  if (s->param->iter_size > 1) snprintf(mb, sizeof mb, " (micro-batch %d)", micro_batch);
  char v[32];
  return moka_errorf("iteration %d%s: the training loss is %s, not finite: %s. Training stopped "
                     "before this iteration's update; %s",
                     s->iter, mb, moka_float_text(loss, v), where, snap);
}

#ifdef MOKA_WITH_CUDA
/* Sums of chunks of the device gradients (kernels/channel_sum.cu, one block
 * per chunk, double accumulation) copied down: a NaN or an infinity makes
 * its chunk's sum non-finite. A sum can also overflow float for finite
 * gradients near FLT_MAX, so a non-finite sum is confirmed on the host. */
static int gradients_finite_cuda(Solver *s, bool *finite) {
  Net *net = s->net;
  const size_t chunk = (size_t)1 << 16, n = net->param_count;
  const size_t full = n / chunk, rest = n - full * chunk, n_sums = full + (rest > 0);
  *finite = true;
  if (!n_sums) return 0;
  if (!s->dev_sums) {
    if (moka_dev_alloc((void **)&s->dev_sums, n_sums * sizeof(float), "gradient check sums"))
      return -1;
    if (!(s->host_sums = moka_calloc(n_sums, sizeof(float)))) return -1;
    s->n_sums = n_sums;
  }
  cudaStream_t st = net->cuda->stream;
  if (full && moka_cuda_channel_sum(st, net->dev_param_diff, NULL, s->dev_sums, 1, full, chunk,
                                    false))
    return -1;
  if (rest && moka_cuda_channel_sum(st, net->dev_param_diff + full * chunk, NULL,
                                    s->dev_sums + full, 1, 1, rest, false))
    return -1;
  if (moka_d2h(st, s->host_sums, s->dev_sums, n_sums * sizeof(float))) return -1;
  for (size_t k = 0; k < n_sums; k++)
    if (!isfinite(s->host_sums[k])) *finite = false;
  if (*finite) return 0;
  if (net_param_diffs_to_host(net)) return -1;
  *finite = moka_all_finite(net->param_diff, net->param_count);
  return 0;
}
#endif

/* After backward (all iter_size passes), before the update: every parameter
 * gradient finite, else name the layer and stop. */
static int check_gradients(Solver *s) {
  Net *net = s->net;
  bool finite;
#ifdef MOKA_WITH_CUDA
  if (net->cuda) {
    if (gradients_finite_cuda(s, &finite)) return moka_error_prefix("iteration %d", s->iter);
  } else
#endif
    finite = moka_all_finite(net->param_diff, net->param_count);
  if (finite) return 0;
  int k;
  size_t at;
  float value;
  const Layer *l = solver_first_nonfinite(net, true, &k, &at, &value); /* host copies current */
  char first[1024] = "", v[32];
  if (l)
    snprintf(first, sizeof first, " (first in net order: param blob %d of layer '%s' holds %s at "
             "element %zu)", k, l->name, moka_float_text(value, v), at);
  /* A value that went non-finite in the forward pass (absorbed before the
   * loss: ReLU of -inf, a softmax of -inf) is the cause: look there first,
   * then in the backward pass. The forward replay recomputes the same
   * values, so the backward replay still sees this iteration's state. */
  NetFault f;
  char where[2048], snap[4400];
  int rc = net_locate_forward_fault(net, &f);
  if (!rc && f.kind == NET_FAULT_NONE) rc = net_locate_backward_fault(net, &f);
  if (rc)
    snprintf(where, sizeof where, "(the layer could not be located: %s)", moka_error());
  else
    net_fault_describe(net, &f, where, sizeof where);
  solver_last_snapshot_text(s, snap, sizeof snap);
  return moka_errorf("iteration %d: a parameter gradient is not finite%s: %s. Training stopped "
                     "before this iteration's update; %s",
                     s->iter, first, where, snap);
}

int solver_step(Solver *s, int iters) {
  const Caffe__SolverParameter *p = s->param;
  const int start_iter = s->iter, stop_iter = s->iter + iters;
  const int average_loss = p->average_loss;
  s->n_losses = 0;
  s->smoothed_loss = 0;
  s->timer_start = moka_now();
  while (s->iter < stop_iter) {
    net_clear_param_diffs(s->net);
    if (p->test_interval && s->iter % p->test_interval == 0 &&
        (s->iter > 0 || p->test_initialization)) {
      if (solver_test_all(s)) return -1;
      if (s->requested_early_exit) break;
    }
    const bool display = p->display && s->iter % p->display == 0;
    /* Caffe: net_->set_debug_info(display && param_.debug_info()) */
    s->net->debug_info = display && s->debug_info;
    /* accumulate the loss and the gradients over iter_size passes */
    float loss = 0;
    for (int i = 0; i < p->iter_size; i++) {
      float l;
      if (s->opt.before_forward && s->opt.before_forward(s, s->iter, i, s->opt.user))
        return moka_error_prefix("iteration %d", s->iter);
      if (net_forward(s->net, &l)) return moka_error_prefix("iteration %d", s->iter);
      if (!isfinite(l)) return loss_fault(s, l, i);
      if (net_backward(s->net)) return moka_error_prefix("iteration %d", s->iter);
      loss += l;
    }
    /* the gradients, before the update can spread a NaN into the weights */
    if (check_gradients(s)) return -1;
    loss /= (float)p->iter_size;
    update_smoothed_loss(s, loss, start_iter, average_loss);
    if (display) {
      /* Caffe's Timer::Seconds() = whole milliseconds / 1000 */
      const double now = moka_now();
      const float lapse = (float)(floor((now - s->timer_start) * 1000.0) / 1000.0);
      const float per_s = (float)(s->iter - s->iterations_last) / (lapse != 0.0f ? lapse : 1.0f);
      LOG_INFO("Iteration %d (%g iter/s, %gs/%d iters), loss = %g", s->iter, (double)per_s,
               (double)lapse, p->display, (double)s->smoothed_loss);
      s->timer_start = now;
      s->iterations_last = s->iter;
      if (display_train_outputs(s)) return -1;
    }
    if (solver_apply_update(s)) return moka_error_prefix("iteration %d", s->iter);
    /* iter counts the updates done */
    ++s->iter;
    const SolverAction request = requested_action(s);
    if ((p->snapshot && s->iter % p->snapshot == 0) || request == SOLVER_ACTION_SNAPSHOT)
      if (solver_snapshot(s)) return -1;
    if (request == SOLVER_ACTION_STOP) {
      s->requested_early_exit = true;
      break;
    }
  }
  return 0;
}

int solver_solve(Solver *s, const char *resume_file) {
  const Caffe__SolverParameter *p = s->param;
  LOG_INFO("Solving %s", s->net->name);
  LOG_INFO("Learning Rate Policy: %s", p->lr_policy ? p->lr_policy : "");
  s->requested_early_exit = false;
  if (solver_check_snapshot_prefix(s)) return -1;
  if (resume_file) {
    LOG_INFO("Restoring previous solver status from %s", resume_file);
    if (solver_restore(s, resume_file)) return -1;
  }
  const int start_iter = s->iter;
  if (solver_step(s, p->max_iter - s->iter)) return -1;
  /* the final snapshot, unless the last iteration just wrote one */
  if (p->snapshot_after_train && (!p->snapshot || s->iter % p->snapshot != 0))
    if (solver_snapshot(s)) return -1;
  if (s->requested_early_exit) {
    LOG_INFO("Optimization stopped early.");
    return 0;
  }
  /* One more forward pass to display the loss after the last update (as in
   * Caffe, it runs in TRAIN mode: BatchNorm statistics and the random stream
   * move on, after the final snapshot). */
  if (p->display && s->iter % p->display == 0) {
    float loss;
    if (s->opt.before_forward && s->opt.before_forward(s, s->iter, 0, s->opt.user))
      return moka_error_prefix("final display pass");
    if (net_forward(s->net, &loss)) return moka_error_prefix("final display pass");
    update_smoothed_loss(s, loss, start_iter, p->average_loss);
    LOG_INFO("Iteration %d, loss = %g", s->iter, (double)s->smoothed_loss);
  }
  if (p->test_interval && s->iter % p->test_interval == 0)
    if (solver_test_all(s)) return -1;
  LOG_INFO("Optimization Done.");
  return 0;
}
