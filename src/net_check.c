/* net_check.c — finiteness scans, fault locators and debug_info lines (see
 * net_check.h). Nothing here changes a value the training computes, except
 * the locators, which replay a pass that has already failed. */
#include "net_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "net_cuda.h"
#endif

/* ---- scans ------------------------------------------------------------------------------- */

bool moka_all_finite(const float *x, size_t n) {
  /* x - x is +0 for every finite x and NaN for NaN and +-inf; a sum of +0s
   * stays +0 in any order, and one NaN makes the sum NaN. The reduction
   * clauses allow the reordering that vectorises it. */
  float acc = 0.0f;
  const long long m = (long long)n;
#pragma omp parallel for simd reduction(+ : acc) schedule(static) if (m > (1LL << 20))
  for (long long k = 0; k < m; k++) acc += x[k] - x[k];
  return acc == 0.0f;
}

size_t moka_first_nonfinite(const float *x, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (!isfinite(x[k])) return k;
  return n;
}

const char *moka_float_text(float v, char buf[32]) {
  if (isnan(v))
    snprintf(buf, 32, "nan");
  else
    snprintf(buf, 32, "%g", (double)v);
  return buf;
}

/* ---- copies down (CUDA) ------------------------------------------------------------------ */

static int data_to_host(Net *net, Blob *b) {
#ifdef MOKA_WITH_CUDA
  if (net->cuda && b->dev_data) return blob_to_host(net->cuda, b);
#endif
  (void)net, (void)b;
  return 0;
}

static int diff_to_host(Net *net, Blob *b) {
#ifdef MOKA_WITH_CUDA
  if (net->cuda && b->dev_diff) return blob_diff_to_host(net->cuda, b);
#endif
  (void)net, (void)b;
  return 0;
}

/* ---- locating a fault -------------------------------------------------------------------- */

static bool blob_fault(const Blob *b, const float *x, NetFaultKind kind, int layer, int index,
                       NetFault *f) {
  const size_t at = moka_first_nonfinite(x, b->count);
  if (at == b->count) return false;
  f->kind = kind;
  f->layer = layer;
  f->index = index;
  f->at = at;
  f->count = b->count;
  f->value = x[at];
  return true;
}

/* The tops of layer i, checked after its forward. */
static int check_tops(Net *net, int i, NetFault *f, bool *found) {
  Layer *l = net->layers[i];
  for (int t = 0; t < l->n_top && !*found; t++) {
    if (data_to_host(net, l->top[t])) return -1;
    *found = blob_fault(l->top[t], l->top[t]->data, NET_FAULT_TOP_DATA, i, t, f);
  }
  return 0;
}

int net_locate_forward_fault(Net *net, NetFault *f) {
  memset(f, 0, sizeof *f);
  f->layer = -1;
  bool found = false;
  /* 1. the source layers' tops, as the failed pass left them */
  for (int i = 0; i < net->n_layers && !found; i++)
    if (net->layers[i]->n_bottom == 0)
      if (check_tops(net, i, f, &found)) return -1;
  if (found) return 0;
  /* 2. forward again from the first layer that has bottoms; the parameters
   * (BatchNorm statistics move in TRAIN) are restored afterwards */
  int rc = 0;
#ifdef MOKA_WITH_CUDA
  if (net->cuda && net_params_to_host(net)) return -1;
#endif
  float *saved = moka_malloc((net->param_count + 1) * sizeof(float)); /* (param_count) */
  if (!saved) return -1;
  memcpy(saved, net->param_data, net->param_count * sizeof(float));
  for (int i = 0; i < net->n_layers && !found && !rc; i++) {
    if (net->layers[i]->n_bottom == 0) continue;
    if (net_forward_layer(net, i)) {
      rc = moka_error_prefix("running layer '%s' again", net->layers[i]->name);
      break;
    }
    rc = check_tops(net, i, f, &found);
  }
  memcpy(net->param_data, saved, net->param_count * sizeof(float));
  free(saved);
  /* 3. every value finite: a loss that overflows once weighted (as net.c
   * sums it: in double, then rounded to float) */
  for (int i = 0; i < net->n_layers && !found && !rc; i++) {
    const Layer *l = net->layers[i];
    for (int t = 0; t < l->n_top && !found; t++) {
      if (l->loss_weight[t] == 0.0f) continue;
      double sum = 0;
      for (size_t k = 0; k < l->top[t]->count; k++) sum += l->top[t]->data[k];
      const float weighted = (float)((double)l->loss_weight[t] * sum);
      if (isfinite(weighted)) continue;
      found = true;
      f->kind = NET_FAULT_LOSS_WEIGHT;
      f->layer = i;
      f->index = t;
      f->count = l->top[t]->count;
      f->value = weighted;
    }
  }
#ifdef MOKA_WITH_CUDA
  if (net->cuda && net_params_to_device(net)) rc = -1;
#endif
  return rc;
}

int net_locate_backward_fault(Net *net, NetFault *f) {
  memset(f, 0, sizeof *f);
  f->layer = -1;
  net_clear_param_diffs(net);
  for (int i = net->n_layers - 1; i >= 0; i--) {
    if (!net->layer_need_backward[i]) continue;
    Layer *l = net->layers[i];
    if (net_backward_layer(net, i))
      return moka_error_prefix("running the backward of layer '%s' again", l->name);
    for (int k = 0; k < l->n_params; k++) {
      if (!layer_param_needs_grad(l, k)) continue;
      if (diff_to_host(net, l->params[k])) return -1;
      if (blob_fault(l->params[k], l->params[k]->diff, NET_FAULT_PARAM_DIFF, i, k, f)) return 0;
    }
    for (int j = 0; j < l->n_bottom; j++) {
      if (!l->propagate_down[j]) continue;
      if (diff_to_host(net, l->bottom[j])) return -1;
      if (blob_fault(l->bottom[j], l->bottom[j]->diff, NET_FAULT_BOTTOM_DIFF, i, j, f)) return 0;
    }
  }
  return 0;
}

void net_fault_describe(const Net *net, const NetFault *f, char *buf, size_t n) {
  if (f->kind == NET_FAULT_NONE || f->layer < 0 || f->layer >= net->n_layers) {
    snprintf(buf, n, "no layer produced a non-finite value when the pass was run again");
    return;
  }
  const Layer *l = net->layers[f->layer];
  char val[32];
  moka_float_text(f->value, val);
  switch (f->kind) {
    case NET_FAULT_TOP_DATA:
      snprintf(buf, n,
               "the first layer whose output is not finite is '%s' (%s): its top blob '%s' holds "
               "%s at element %zu of %zu",
               l->name, l->type->name, l->top[f->index]->name, val, f->at, f->count);
      break;
    case NET_FAULT_LOSS_WEIGHT: {
      double sum = 0;
      const Blob *b = l->top[f->index];
      for (size_t k = 0; k < b->count; k++) sum += b->data[k];
      snprintf(buf, n,
               "every value is finite, but the loss of layer '%s' (%s), top '%s' = %g, times its "
               "loss_weight %g is %s",
               l->name, l->type->name, b->name, sum, (double)l->loss_weight[f->index], val);
      break;
    }
    case NET_FAULT_PARAM_DIFF:
    case NET_FAULT_BOTTOM_DIFF: {
      char what[512];
      if (f->kind == NET_FAULT_PARAM_DIFF)
        snprintf(what, sizeof what, "the gradient of its param blob %d", f->index);
      else
        snprintf(what, sizeof what, "its bottom blob '%s' diff", l->bottom[f->index]->name);
      /* a bottom whose data (from the forward) is not finite explains it */
      char cause[512] = "";
      for (int j = 0; j < l->n_bottom && !cause[0]; j++) {
        const Blob *b = l->bottom[j];
        const size_t at = moka_first_nonfinite(b->data, b->count);
        char v[32];
        if (at < b->count)
          snprintf(cause, sizeof cause, " (its input '%s' holds %s at element %zu from the forward "
                   "pass)", b->name, moka_float_text(b->data[at], v), at);
      }
      snprintf(buf, n,
               "the first layer, going backward from the loss, whose gradient is not finite is "
               "'%s' (%s): %s holds %s at element %zu of %zu%s",
               l->name, l->type->name, what, val, f->at, f->count, cause);
      break;
    }
    default:
      snprintf(buf, n, "?");
  }
}

int net_first_nonfinite_param(const Net *net, bool diff, size_t *at) {
  for (int p = 0; p < net->n_params; p++) {
    const Blob *b = net->params[p];
    const size_t k = moka_first_nonfinite(diff ? b->diff : b->data, b->count);
    if (k < b->count) {
      if (at) *at = k;
      return p;
    }
  }
  return -1;
}

/* ---- debug_info ---------------------------------------------------------------------------- */

static double asum(const float *x, size_t n) {
  double s = 0;
  for (size_t k = 0; k < n; k++) s += fabs((double)x[k]);
  return s;
}

/* Caffe's asum / count, in float as Caffe (the sum in double). */
static float mean_abs(const float *x, size_t n) { return (float)asum(x, n) / (float)n; }

static double sum_sq(const float *x, size_t n) {
  double s = 0;
  for (size_t k = 0; k < n; k++) s += (double)x[k] * x[k];
  return s;
}

/* Caffe's param_display_names_: the ParamSpec's name, else the index. */
static void param_display_name(const Layer *l, int k, char *buf, size_t n) {
  const Caffe__LayerParameter *lp = l->param;
  if (lp && (size_t)k < lp->n_param && lp->param[k]->name && *lp->param[k]->name)
    snprintf(buf, n, "%s", lp->param[k]->name);
  else
    snprintf(buf, n, "%d", k);
}

void net_debug_forward(Net *net, int i) {
  Layer *l = net->layers[i];
  for (int t = 0; t < l->n_top; t++) {
    Blob *b = l->top[t];
    if (data_to_host(net, b)) {
      LOG_WARN("debug_info: %s", moka_error());
      return;
    }
    char v[32];
    LOG_INFO("    [Forward] Layer %s, top blob %s data: %s", l->name, b->name,
             moka_float_text(mean_abs(b->data, b->count), v));
  }
  for (int k = 0; k < l->n_params; k++) {
    Blob *b = l->params[k];
    if (data_to_host(net, b)) {
      LOG_WARN("debug_info: %s", moka_error());
      return;
    }
    char name[256], v[32];
    param_display_name(l, k, name, sizeof name);
    LOG_INFO("    [Forward] Layer %s, param blob %s data: %s", l->name, name,
             moka_float_text(mean_abs(b->data, b->count), v));
  }
}

void net_debug_backward(Net *net, int i) {
  Layer *l = net->layers[i];
  for (int j = 0; j < l->n_bottom; j++) {
    if (!l->propagate_down[j]) continue;
    Blob *b = l->bottom[j];
    if (diff_to_host(net, b)) {
      LOG_WARN("debug_info: %s", moka_error());
      return;
    }
    char v[32];
    LOG_INFO("    [Backward] Layer %s, bottom blob %s diff: %s", l->name, b->name,
             moka_float_text(mean_abs(b->diff, b->count), v));
  }
  for (int k = 0; k < l->n_params; k++) {
    if (!layer_param_needs_grad(l, k)) continue;
    Blob *b = l->params[k];
    if (diff_to_host(net, b)) {
      LOG_WARN("debug_info: %s", moka_error());
      return;
    }
    char v[32];
    LOG_INFO("    [Backward] Layer %s, param blob %d diff: %s", l->name, k,
             moka_float_text(mean_abs(b->diff, b->count), v));
  }
}

void net_debug_backward_summary(Net *net) {
  /* Caffe sums over learnable_params_ (BatchNorm's statistics are params
   * with lr_mult 0 there too) in Dtype, each blob's asum / sumsq */
  float asum_data = 0, asum_diff = 0, sumsq_data = 0, sumsq_diff = 0;
  for (int p = 0; p < net->n_params; p++) {
    Blob *b = net->params[p];
    if (data_to_host(net, b) || diff_to_host(net, b)) {
      LOG_WARN("debug_info: %s", moka_error());
      return;
    }
    asum_data += (float)asum(b->data, b->count);
    asum_diff += (float)asum(b->diff, b->count);
    sumsq_data += (float)sum_sq(b->data, b->count);
    sumsq_diff += (float)sum_sq(b->diff, b->count);
  }
  /* (Caffe logs this one line at ERROR level; moka keeps ERROR for errors,
   * so that a quiet log level, errors only, stays quiet) */
  char a[32], b[32], c[32], d[32];
  LOG_INFO("    [Backward] All net params (data, diff): L1 norm = (%s, %s); L2 norm = (%s, %s)",
           moka_float_text(asum_data, a), moka_float_text(asum_diff, b),
           moka_float_text(sqrtf(sumsq_data), c), moka_float_text(sqrtf(sumsq_diff), d));
}

void net_debug_update(const Net *net, int p) {
  const Blob *b = net->params[p];
  const Layer *l = net->layers[net->param_layer[p]];
  int k = 0;
  while (k < l->n_params && l->params[k] != b) k++;
  char name[256], v[32], w[32];
  param_display_name(l, k, name, sizeof name);
  LOG_INFO("    [Update] Layer %s, param %s data: %s; diff: %s", l->name, name,
           moka_float_text(mean_abs(b->data, b->count), v),
           moka_float_text(mean_abs(b->diff, b->count), w));
}
