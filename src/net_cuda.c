/* net_cuda.c — device memory and explicit copies for a Net on a CUDA device
 * (see net_cuda.h). Compiled only in CUDA builds.
 *
 * Memory. Parameters, their gradients and the SGD momentum are one flat
 * buffer each. Layers keep their own device scratch (BatchNorm's normalised
 * output, pooling's argmax, ...) in their priv structs, and the convolutions
 * share one workspace in the MokaCuda context. Activations (blob data, and
 * diffs when any layer runs backward) are placed one of two ways:
 *   - every blob its own buffers (the default for library users, as Caffe:
 *     every blob stays readable; MOKA_CUDA_MEMPLAN=0 forces it);
 *   - the memory plan (net->plan_device_memory, or the process default that
 *     `moka time/train/test` set; src/net_memplan.h): one arena, every blob's
 *     dev_data/dev_diff a view into it, buffers whose live intervals do not
 *     meet sharing memory. Re-planned (and the arena zeroed, grown if
 *     needed) when a reshape changes a blob's size.
 * In-place layers share their bottom's Blob and so its buffers either way.
 */
#include "net_cuda.h"

/* The process default for nets whose plan_device_memory is not set: off for
 * library users, on in the CLI commands that only read outputs. */
static bool plan_by_default;
void net_cuda_plan_memory_by_default(bool on) { plan_by_default = on; }

#ifdef MOKA_WITH_CUDA

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net_bf16.h"
#include "net_fuse.h"
#include "net_memplan.h"
#include "util.h"

typedef struct NetCudaState {
  size_t free_at_start;   /* cudaMemGetInfo free bytes before net_to_device */
  size_t peak_bytes;      /* largest (free_at_start - free) seen */
  bool with_diff;         /* blobs have device diffs */
  DevBuf segments;        /* (n_params) MokaSgdSegment table for the SGD kernel */
  MokaSgdSegment *host_segments;
  /* The memory plan (planned: activations are views into `arena`). */
  bool planned;
  MemPlan plan;           /* the current plan (its sizes: the blobs' at planning) */
  void *arena;            /* (arena_bytes) every activation buffer */
  size_t arena_bytes;
  bool split_share_logged; /* share_splits said what it did */
} NetCudaState;

static cudaStream_t stream_of(const Net *net) { return net->cuda->stream; }

static int need_cuda(const Net *net) {
  if (!net->cuda)
    return moka_errorf("net '%s' has the CUDA backend but is not on a device: net_to_device was "
                       "not called (this command or code path does not run on the GPU yet)",
                       net->name);
  return 0;
}

/* ---- blobs ------------------------------------------------------------------------------ */

int blob_alloc_device(Blob *b, bool with_diff, const char *what) {
  size_t n = b->count;
  bool need_diff = with_diff && !b->dev_diff;
  if (n <= b->dev_capacity && !need_diff) return 0;
  if (b->dev_capacity == 0 && (b->dev_data || b->dev_diff))
    return moka_errorf("internal error: blob '%s' is a device view; it cannot be reallocated",
                       b->name);
  size_t cap = n > b->dev_capacity ? n : b->dev_capacity;
  char w[512];
  snprintf(w, sizeof w, "%s, blob '%s' (%zu floats)", what ? what : "a blob", b->name, cap);
  /* Zero-filled, like new host blob memory: a top diff that no layer writes
   * (an unused second top) reads as 0, as in Caffe and on the CPU. */
  void *d = NULL, *g = NULL;
  if (moka_dev_calloc(&d, cap * sizeof(float), w)) return -1;
  if (with_diff && moka_dev_calloc(&g, cap * sizeof(float), w)) {
    moka_dev_free(d);
    return -1;
  }
  moka_dev_free(b->dev_data);
  moka_dev_free(b->dev_diff);
  b->dev_data = d;
  b->dev_diff = g;
  b->dev_capacity = cap;
  return 0;
}

void blob_free_device(Blob *b) {
  if (b->dev_capacity) {
    moka_dev_free(b->dev_data);
    moka_dev_free(b->dev_diff);
  }
  b->dev_data = b->dev_diff = NULL;
  b->dev_capacity = 0;
}

/* fp32 -> bf16 bits, round to nearest even (NaN stays NaN) */
static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* A bf16 channels-last blob's copy: host (N, C, S) fp32 <-> device (N, S, C) bf16, through
 * a host buffer (explicit copies are rare: inputs, loss, diagnostics). */
static int blob_copy_bf16(MokaCuda *c, Blob *b, void *dev, float *host, bool up) {
  const size_t N = (size_t)blob_legacy_dim(b, 0), C = (size_t)blob_legacy_dim(b, 1);
  const size_t S = N && C ? b->count / (N * C) : 0;
  uint16_t *t = malloc(b->count * sizeof *t + 2);
  if (!t) return moka_errorf("out of host memory converting blob '%s'", b->name);
  int rc = 0;
  if (up) {
    for (size_t n = 0; n < N; n++)
      for (size_t ch = 0; ch < C; ch++)
        for (size_t q = 0; q < S; q++)
          t[(n * S + q) * C + ch] = f32_to_bf16(host[(n * C + ch) * S + q]);
    rc = moka_h2d(c->stream, dev, t, b->count * sizeof *t);
    if (!rc) rc = moka_cuda_sync(c); /* t is freed next */
  } else {
    rc = moka_d2h(c->stream, t, dev, b->count * sizeof *t);
    if (!rc)
      for (size_t n = 0; n < N; n++)
        for (size_t ch = 0; ch < C; ch++)
          for (size_t q = 0; q < S; q++) {
            const uint32_t u = (uint32_t)t[(n * S + q) * C + ch] << 16;
            memcpy(&host[(n * C + ch) * S + q], &u, 4);
          }
  }
  free(t);
  return rc ? moka_error_prefix("copying blob '%s' (bf16 channels-last)", b->name) : 0;
}

static int blob_copy(MokaCuda *c, Blob *b, bool diff, bool up) {
  float *dev = diff ? b->dev_diff : b->dev_data;
  float *host = diff ? b->diff : b->data;
  if (!b->count) return 0;
  if (!dev)
    return moka_errorf("blob '%s' has no device %s (not on the device)", b->name,
                       diff ? "diff" : "data");
  if (!host) return moka_errorf("blob '%s' has no host %s", b->name, diff ? "diff" : "data");
  if (b->dev_bf16) return blob_copy_bf16(c, b, dev, host, up);
  int rc = up ? moka_h2d(c->stream, dev, host, b->count * sizeof(float))
              : moka_d2h(c->stream, host, dev, b->count * sizeof(float));
  return rc ? moka_error_prefix("copying blob '%s'", b->name) : 0;
}

int blob_to_device(MokaCuda *c, Blob *b) { return blob_copy(c, b, false, true); }
int blob_to_host(MokaCuda *c, Blob *b) { return blob_copy(c, b, false, false); }
int blob_diff_to_device(MokaCuda *c, Blob *b) { return blob_copy(c, b, true, true); }
int blob_diff_to_host(MokaCuda *c, Blob *b) { return blob_copy(c, b, true, false); }

/* ---- the net ----------------------------------------------------------------------------- */

int net_cuda_memory(Net *net, size_t *now_bytes, size_t *peak_bytes, bool log) {
  if (need_cuda(net)) return -1;
  NetCudaState *st = net->cuda_state;
  size_t fr, tot;
  if (moka_dev_mem_info(&fr, &tot)) return -1;
  size_t now = st->free_at_start > fr ? st->free_at_start - fr : 0;
  if (now > st->peak_bytes) st->peak_bytes = now;
  if (now_bytes) *now_bytes = now;
  if (peak_bytes) *peak_bytes = st->peak_bytes;
  if (log) {
    char act[160];
    if (st->planned)
      snprintf(act, sizeof act, "; activations %.1f MiB in one arena by the memory plan, %.1f "
               "MiB with every blob its own", st->arena_bytes / 1048576.0,
               st->plan.unplanned_bytes / 1048576.0);
    else
      snprintf(act, sizeof act, "; every blob its own memory (no memory plan)");
    LOG_INFO("GPU memory of net '%s' on device %d (%s): %.1f MiB now, %.1f MiB peak (%.1f MiB "
             "free of %.1f MiB%s)",
             net->name, net->cuda->device, net->cuda->device_name, now / 1048576.0,
             st->peak_bytes / 1048576.0, fr / 1048576.0, tot / 1048576.0, act);
  }
  return 0;
}

static bool any_backward(const Net *net) {
  for (int i = 0; i < net->n_layers; i++)
    if (net->layer_need_backward[i]) return true;
  return false;
}

/* Whether this net's activations get the memory plan (see the header). */
static bool wants_plan(const Net *net) {
  const char *e = getenv("MOKA_CUDA_MEMPLAN");
  if (e && !strcmp(e, "0")) return false;
  if (e && !strcmp(e, "1")) return true;
  return net->plan_device_memory || plan_by_default;
}

/* Split sharing on the device (MOKA_CUDA_SPLIT_SHARE=0: off): in a training plan every
 * blob's data lives the whole pass (net_memplan.h), so the tops of a Split that no layer
 * writes in place (net_fuse_split_may_share) can point at their bottom's data instead of
 * holding a copy; the Split's forward then copies nothing (split.c skips a top whose
 * device data is its bottom's). The tops keep their own diffs; their planned data space
 * stays unused. Forward-only plans end the bottom's interval at the Split, so they copy. */
static void share_splits(Net *net) {
  NetCudaState *st = net->cuda_state;
  const char *e = getenv("MOKA_CUDA_SPLIT_SHARE");
  if (!st->with_diff || (e && e[0] == '0')) return;
  int n = 0;
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (!net_fuse_split_may_share(net, i)) continue;
    for (int t = 0; t < l->n_top; t++) l->top[t]->dev_data = l->bottom[0]->dev_data;
    n++;
  }
  if (n && !st->split_share_logged) {
    LOG_INFO("Net '%s': %d Splits share their bottom's device data (MOKA_CUDA_SPLIT_SHARE=0: "
             "off)", net->name, n);
    st->split_share_logged = true;
  }
}

/* The memory plan: (re)plan when a blob's size changed since the last plan,
 * grow the arena when needed, zero it (a diff that no layer writes must read
 * as zeros, as in fresh host memory), and point every blob into it. */
static int plan_blobs(Net *net) {
  NetCudaState *st = net->cuda_state;
  if (st->plan.data && st->plan.n_blobs == net->n_blobs) {
    bool same = true;
    for (int b = 0; b < net->n_blobs && same; b++)
      same = st->plan.data[b].bytes ==
             net->blobs[b]->count * blob_dev_elem_bytes(net->blobs[b]);
    if (same) return 0;
  }
  bool *keep = moka_calloc((size_t)net->n_blobs + 1, sizeof *keep);
  if (!keep) return -1;
  for (int k = 0; k < net->n_memplan_keep; k++) {
    const Blob *want = net_blob(net, net->memplan_keep[k]);
    int idx = -1;
    for (int b = 0; b < net->n_blobs && want; b++)
      if (net->blobs[b] == want) idx = b;
    if (idx < 0) {
      free(keep);
      return moka_errorf("memplan_keep names '%s', which is not a blob of net '%s'",
                         net->memplan_keep[k], net->name);
    }
    keep[idx] = true;
  }
  MemPlan plan;
  const int rc = memplan_net(net, keep, st->with_diff, &plan);
  free(keep);
  if (rc) return -1;
  if (plan.arena_bytes > st->arena_bytes) {
    char what[512];
    snprintf(what, sizeof what, "net '%s' activation arena (%zu bytes)", net->name,
             plan.arena_bytes);
    void *a = NULL;
    moka_dev_free(st->arena); /* before the new one: the old contents are not kept */
    st->arena = NULL;
    st->arena_bytes = 0;
    if (moka_dev_calloc(&a, plan.arena_bytes, what)) {
      memplan_free(&plan);
      return -1;
    }
    st->arena = a;
    st->arena_bytes = plan.arena_bytes;
  } else if (st->arena && moka_dev_zero(stream_of(net), st->arena, st->arena_bytes)) {
    memplan_free(&plan);
    return -1;
  }
  char *base = st->arena;
  for (int b = 0; b < net->n_blobs; b++) {
    Blob *x = net->blobs[b];
    blob_free_device(x); /* a view: only forgets the old pointers */
    x->dev_data = (float *)(base + plan.data[b].offset);
    x->dev_diff = st->with_diff ? (float *)(base + plan.diff[b].offset) : NULL;
    x->dev_capacity = 0; /* a view into the arena */
  }
  memplan_free(&st->plan);
  st->plan = plan;
  share_splits(net);
  return 0;
}

static int alloc_blobs(Net *net) {
  NetCudaState *st = net->cuda_state;
  if (st->planned) return plan_blobs(net);
  for (int b = 0; b < net->n_blobs; b++) {
    char what[512];
    snprintf(what, sizeof what, "net '%s'", net->name);
    if (blob_alloc_device(net->blobs[b], st->with_diff, what)) return -1;
  }
  return 0;
}

int net_to_device(Net *net, int device) {
  if (net->cuda) return moka_errorf("net '%s' is already on a CUDA device", net->name);
  size_t fr0 = 0, tot = 0;
  MokaCuda *c = moka_cuda_create(device);
  if (!c) return -1;
  net->cuda = c;
  NetCudaState *st = moka_calloc(1, sizeof *st);
  if (!st) goto fail;
  net->cuda_state = st;
  if (moka_dev_mem_info(&fr0, &tot)) goto fail;
  st->free_at_start = fr0;
  st->with_diff = any_backward(net);
  st->planned = wants_plan(net);

  /* The flat parameter, gradient and momentum buffers. */
  size_t pbytes = net->param_count * sizeof(float);
  char what[512];
  snprintf(what, sizeof what, "net '%s' parameters (%zu floats)", net->name, net->param_count);
  if (moka_dev_alloc((void **)&net->dev_param_data, pbytes, what) ||
      moka_dev_alloc((void **)&net->dev_param_diff, pbytes, what) ||
      moka_dev_alloc((void **)&net->dev_history, pbytes, what))
    goto fail;
  if (moka_dev_zero(c->stream, net->dev_param_diff, pbytes) ||
      moka_dev_zero(c->stream, net->dev_history, pbytes))
    goto fail;
  size_t off = 0;
  for (int p = 0; p < net->n_params; p++) {
    Blob *b = net->params[p];
    if (b->data != net->param_data + off) {
      moka_errorf("internal error: parameter %d of net '%s' is not in the flat buffer", p,
                  net->name);
      goto fail;
    }
    b->dev_data = net->dev_param_data + off;
    b->dev_diff = net->dev_param_diff + off;
    b->dev_capacity = 0; /* a view */
    off += b->count;
  }
  if (net_params_to_device(net)) goto fail;
  for (int i = 0; i < net->n_layers; i++) net->layers[i]->cuda = c;
  /* MOKA_BF16_ACT=1: which activations live as bf16 channels-last (before any is made) */
  if (net_bf16_plan(net)) goto fail;
  if (alloc_blobs(net)) goto fail;
  net->backend = MOKA_BACKEND_CUDA;
  if (moka_cuda_sync(c)) goto fail;
  size_t now;
  if (net_cuda_memory(net, &now, NULL, false)) goto fail;
  LOG_INFO("Net '%s' on CUDA device %d (%s, sm_%d%d): %.1f MiB of device memory for %d blobs "
           "and %zu parameters (blobs %s diffs; %s)",
           net->name, device, c->device_name, c->cc_major, c->cc_minor, now / 1048576.0,
           net->n_blobs, net->param_count, st->with_diff ? "with" : "without",
           st->planned ? "memory plan on" : "every blob its own memory");
  if (st->planned) memplan_log(&st->plan, net->name);
  return 0;
fail:
  moka_error_prefix("moving net '%s' to CUDA device %d", net->name, device);
  net_cuda_free(net);
  return -1;
}

void net_cuda_free(Net *net) {
  if (!net || (!net->cuda && !net->cuda_state)) return; /* never on a device */
  for (int i = 0; i < net->n_layers; i++) net->layers[i]->cuda = NULL;
  for (int b = 0; b < net->n_blobs; b++) {
    blob_free_device(net->blobs[b]);
    net->blobs[b]->dev_bf16 = false;
  }
  for (int p = 0; p < net->n_params; p++) {
    net->params[p]->dev_data = net->params[p]->dev_diff = NULL;
    net->params[p]->dev_capacity = 0;
  }
  moka_dev_free(net->dev_param_data);
  moka_dev_free(net->dev_param_diff);
  moka_dev_free(net->dev_history);
  net->dev_param_data = net->dev_param_diff = net->dev_history = NULL;
  if (net->cuda_state) {
    moka_dev_free(net->cuda_state->arena);
    memplan_free(&net->cuda_state->plan);
    moka_devbuf_free(&net->cuda_state->segments);
    free(net->cuda_state->host_segments);
    free(net->cuda_state);
    net->cuda_state = NULL;
  }
  moka_cuda_destroy(net->cuda);
  net->cuda = NULL;
}

int net_params_to_device(Net *net) {
  if (need_cuda(net)) return -1;
  return moka_h2d(stream_of(net), net->dev_param_data, net->param_data,
                  net->param_count * sizeof(float));
}

int net_params_to_host(Net *net) {
  if (need_cuda(net)) return -1;
  return moka_d2h(stream_of(net), net->param_data, net->dev_param_data,
                  net->param_count * sizeof(float));
}

int net_param_diffs_to_host(Net *net) {
  if (need_cuda(net)) return -1;
  return moka_d2h(stream_of(net), net->param_diff, net->dev_param_diff,
                  net->param_count * sizeof(float));
}

int net_param_diffs_to_device(Net *net) {
  if (need_cuda(net)) return -1;
  return moka_h2d(stream_of(net), net->dev_param_diff, net->param_diff,
                  net->param_count * sizeof(float));
}

int net_history_to_host(Net *net, float *dst) {
  if (need_cuda(net)) return -1;
  return moka_d2h(stream_of(net), dst, net->dev_history, net->param_count * sizeof(float));
}

int net_history_to_device(Net *net, const float *src) {
  if (need_cuda(net)) return -1;
  return moka_h2d(stream_of(net), net->dev_history, src, net->param_count * sizeof(float));
}

static bool is_source(const Layer *l) {
  return l->n_bottom == 0 && !l->type->forward[MOKA_BACKEND_CUDA];
}

static int source_tops_to_device(Net *net, Layer *l) {
  for (int t = 0; t < l->n_top; t++)
    if (blob_to_device(net->cuda, l->top[t]))
      return moka_error_prefix("layer '%s' top %d", l->name, t);
  return 0;
}

int net_inputs_to_device(Net *net) {
  if (need_cuda(net)) return -1;
  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i]->n_bottom == 0 && source_tops_to_device(net, net->layers[i])) return -1;
  return 0;
}

int net_cuda_forward_layer(Net *net, int i) {
  if (need_cuda(net)) return -1;
  Layer *l = net->layers[i];
  if (is_source(l)) {
    /* Source layers read files or the caller's input on the host; their
     * tops go up right after (the net's one host->device copy per pass),
     * unless an Input layer's tops are resident (net->inputs_resident). */
    if (net->inputs_resident && strcmp(l->type->name, "Input") == 0) {
      /* Input's forward computes nothing; its tops are on the device. */
    } else if (layer_forward(l, MOKA_BACKEND_CPU) || source_tops_to_device(net, l)) {
      return -1;
    }
  } else if (layer_forward(l, MOKA_BACKEND_CUDA)) {
    return -1;
  }
  /* Loss tops (scalars) come down for net_forward's loss sum. */
  for (int t = 0; t < l->n_top; t++)
    if (l->loss_weight[t] != 0.0f && blob_to_host(net->cuda, l->top[t]))
      return moka_error_prefix("layer '%s' loss", l->name);
  return 0;
}

int net_cuda_backward_layer(Net *net, int i) {
  if (need_cuda(net)) return -1;
  Layer *l = net->layers[i];
  if (!net->layer_need_backward[i]) return 0;
  for (int t = 0; t < l->n_top; t++) {
    if (l->loss_weight[t] == 0.0f) continue;
    Blob *b = l->top[t];
    for (size_t k = 0; k < b->count; k++) b->diff[k] = l->loss_weight[t];
    if (blob_diff_to_device(net->cuda, b)) return moka_error_prefix("layer '%s' loss", l->name);
  }
  /* A source layer has no bottoms and no parameters: nothing to propagate. */
  if (is_source(l) && l->n_params == 0) return 0;
  return layer_backward(l, MOKA_BACKEND_CUDA);
}

int net_cuda_reshape(Net *net) {
  if (need_cuda(net)) return -1;
  /* MOKA_BF16_ACT: the new geometry decides again (the plan below follows the sizes) */
  if (net_bf16_plan(net)) return -1;
  return alloc_blobs(net);
}

int net_cuda_clear_param_diffs(Net *net) {
  if (need_cuda(net)) return -1;
  return moka_dev_zero(stream_of(net), net->dev_param_diff, net->param_count * sizeof(float));
}

/* The segment table of the update kernels (one entry per parameter blob:
 * its offset in the flat buffers, rate * lr_mult, weight_decay * decay_mult),
 * made on the host and copied up. */
static int upload_segments(Net *net, float rate, float weight_decay) {
  NetCudaState *st = net->cuda_state;
  if (!st->host_segments) {
    st->host_segments = moka_calloc((size_t)net->n_params, sizeof *st->host_segments);
    if (!st->host_segments) return -1;
  }
  size_t off = 0;
  for (int p = 0; p < net->n_params; p++) {
    MokaSgdSegment *s = &st->host_segments[p];
    s->offset = off;
    s->count = net->params[p]->count;
    s->local_rate = rate * net->param_lr_mult[p];
    s->local_decay = weight_decay * net->param_decay_mult[p];
    off += s->count;
  }
  size_t bytes = (size_t)net->n_params * sizeof(MokaSgdSegment);
  if (moka_devbuf_reserve(&st->segments, bytes, "the SGD segment table") ||
      moka_h2d(stream_of(net), st->segments.ptr, st->host_segments, bytes))
    return -1;
  return 0;
}

int net_cuda_sgd_update(Net *net, float rate, float momentum, float weight_decay, bool l1,
                        int iter_size) {
  if (need_cuda(net)) return -1;
  if (!net->n_params) return 0;
  if (upload_segments(net, rate, weight_decay)) return -1;
  return moka_cuda_sgd_update(stream_of(net), net->dev_param_data, net->dev_param_diff,
                              net->dev_history, (const MokaSgdSegment *)net->cuda_state->segments.ptr,
                              net->n_params, net->param_count, momentum, iter_size, l1);
}

int net_cuda_nesterov_update(Net *net, float rate, float momentum, float weight_decay, bool l1,
                             int iter_size) {
  if (need_cuda(net)) return -1;
  if (!net->n_params) return 0;
  if (upload_segments(net, rate, weight_decay)) return -1;
  return moka_cuda_nesterov_update(stream_of(net), net->dev_param_data, net->dev_param_diff,
                                   net->dev_history,
                                   (const MokaSgdSegment *)net->cuda_state->segments.ptr,
                                   net->n_params, net->param_count, momentum, iter_size, l1);
}

#endif /* MOKA_WITH_CUDA */
