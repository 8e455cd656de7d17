/* net_memplan.c — the activation memory plan (see net_memplan.h): live
 * intervals of every blob's data and diff from the layer order, then greedy
 * best-fit placement in one arena. Plain C, no device calls.
 */
#include "net_memplan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net_fuse.h"
#include "util.h"

static size_t align_up(size_t n) { return (n + MEMPLAN_ALIGN - 1) / MEMPLAN_ALIGN * MEMPLAN_ALIGN; }

static int blob_index(const Net *net, const Blob *b) {
  for (int k = 0; k < net->n_blobs; k++)
    if (net->blobs[k] == b) return k;
  return -1;
}

/* ---- placement ----------------------------------------------------------------------------- */

static bool meets(const MemPlanBuffer *a, const MemPlanBuffer *b) {
  return a->first <= b->last && b->first <= a->last;
}

/* Placement order: larger first; ties by earlier start, then by index (stable). */
typedef struct Order {
  const MemPlanBuffer *buf;
  int idx;
} Order;

static int by_size_desc(const void *pa, const void *pb) {
  const Order *a = pa, *b = pb;
  if (a->buf->bytes != b->buf->bytes) return a->buf->bytes > b->buf->bytes ? -1 : 1;
  if (a->buf->first != b->buf->first) return a->buf->first < b->buf->first ? -1 : 1;
  return a->idx - b->idx;
}

static int by_offset(const void *pa, const void *pb) {
  const MemPlanBuffer *a = *(const MemPlanBuffer *const *)pa, *b = *(const MemPlanBuffer *const *)pb;
  if (a->offset != b->offset) return a->offset < b->offset ? -1 : 1;
  return 0;
}

size_t memplan_place(MemPlanBuffer *buf, int n) {
  Order *ord = calloc((size_t)n + 1, sizeof *ord);
  const MemPlanBuffer **placed = calloc((size_t)n + 1, sizeof *placed);
  const MemPlanBuffer **live = calloc((size_t)n + 1, sizeof *live);
  size_t arena = 0;
  if (!ord || !placed || !live) { /* fall back to one buffer after the other */
    for (int i = 0; i < n; i++) {
      buf[i].offset = arena;
      arena += align_up(buf[i].bytes);
    }
    free(ord);
    free(placed);
    free(live);
    return arena;
  }
  int m = 0, n_placed = 0;
  for (int i = 0; i < n; i++) {
    buf[i].offset = 0;
    if (buf[i].used && buf[i].bytes) ord[m++] = (Order){&buf[i], i};
  }
  qsort(ord, (size_t)m, sizeof *ord, by_size_desc);
  for (int k = 0; k < m; k++) {
    MemPlanBuffer *b = &buf[ord[k].idx];
    const size_t need = align_up(b->bytes);
    int n_live = 0;
    for (int j = 0; j < n_placed; j++)
      if (meets(placed[j], b)) live[n_live++] = placed[j];
    qsort(live, (size_t)n_live, sizeof *live, by_offset);
    /* Best fit: the smallest gap between live buffers that holds `need`. */
    size_t end = 0, best = SIZE_MAX, best_gap = SIZE_MAX;
    for (int j = 0; j < n_live; j++) {
      if (live[j]->offset > end) {
        const size_t gap = live[j]->offset - end;
        if (gap >= need && gap < best_gap) {
          best_gap = gap;
          best = end;
        }
      }
      const size_t e = live[j]->offset + align_up(live[j]->bytes);
      if (e > end) end = e;
    }
    b->offset = best != SIZE_MAX ? best : end;
    if (b->offset + need > arena) arena = b->offset + need;
    placed[n_placed++] = b;
  }
  /* Unused buffers all point at one sink above everything else, as large as
   * the largest of them: layers want a pointer for them, and a write there
   * (which the rules say never happens) cannot clobber a live buffer. */
  size_t sink = 0;
  for (int i = 0; i < n; i++)
    if (!buf[i].used && align_up(buf[i].bytes) > sink) sink = align_up(buf[i].bytes);
  for (int i = 0; i < n; i++)
    if (!buf[i].used) buf[i].offset = arena;
  arena += sink;
  free(ord);
  free(placed);
  free(live);
  return arena;
}

/* ---- live intervals ------------------------------------------------------------------------ */

/* Diff events in sub-steps h = 3*s + phase, so that the order inside step s
 * is explicit: the net writes a loss top's diff before the loss layer's
 * backward (phase 0), the layer reads its top diffs (1), then writes its
 * bottom diffs (2). The step of h is h / 3. */
enum { SUB_NET_WRITE = 0, SUB_READ = 1, SUB_LAYER_WRITE = 2 };
typedef struct DiffEvents {
  int first_write, first_read, last; /* sub-steps; NONE_LO / NONE_HI when none */
} DiffEvents;

#define NONE_LO 0x3fffffff
#define NONE_HI (-0x3fffffff)

static void ev_write(DiffEvents *e, int h) {
  if (h < e->first_write) e->first_write = h;
  if (h > e->last) e->last = h;
}
static void ev_read(DiffEvents *e, int h) {
  if (h < e->first_read) e->first_read = h;
  if (h > e->last) e->last = h;
}

/* What one way of running the pass does to each blob: the forward steps
 * that touch its data, and its diff events. */
typedef struct Access {
  int fwd_first, fwd_last; /* NONE_LO / NONE_HI when untouched */
  DiffEvents diff;
} Access;

static void fwd_touch(Access *a, int step) {
  if (step < a->fwd_first) a->fwd_first = step;
  if (step > a->fwd_last) a->fwd_last = step;
}

/* Layer i as itself: forward at step i, backward at 2L-1-i. */
static int layer_access(const Net *net, int i, bool with_diff, Access *acc) {
  const int L = net->n_layers;
  const Layer *l = net->layers[i];
  const bool bwd = with_diff && net->layer_need_backward[i];
  const int bs = 2 * L - 1 - i;
  for (int t = 0; t < l->n_top; t++) {
    const int b = blob_index(net, l->top[t]);
    if (b < 0)
      return moka_errorf("internal error: top %d of layer '%s' is not a blob of net '%s'", t,
                         l->name, net->name);
    fwd_touch(&acc[b], i);
    if (bwd) {
      if (l->loss_weight[t] != 0.0f) ev_write(&acc[b].diff, 3 * bs + SUB_NET_WRITE);
      ev_read(&acc[b].diff, 3 * bs + SUB_READ);
    }
  }
  for (int k = 0; k < l->n_bottom; k++) {
    const int b = blob_index(net, l->bottom[k]);
    if (b < 0)
      return moka_errorf("internal error: bottom %d of layer '%s' is not a blob of net '%s'", k,
                         l->name, net->name);
    fwd_touch(&acc[b], i);
    if (bwd && l->propagate_down[k]) ev_write(&acc[b].diff, 3 * bs + SUB_LAYER_WRITE);
  }
  return 0;
}

/* A fused chain (src/net_fuse.h) as one op: forward at fwd_at reads x (and the
 * shortcut) and writes x and y; backward at bwd_at reads y's diff and writes
 * x's (bn_bw or x_diff_dz) and the shortcut's (shortcut_bw). Its members do nothing else. */
static void chain_access(const Net *net, const FusedChain *c, bool with_diff, Access *acc) {
  const int L = net->n_layers;
  const int x = blob_index(net, c->x), y = blob_index(net, c->y);
  const int r = c->shortcut ? blob_index(net, c->shortcut) : -1;
  if (x < 0 || y < 0) return; /* cannot happen: the chain's blobs are the net's */
  fwd_touch(&acc[x], c->fwd_at);
  fwd_touch(&acc[y], c->fwd_at);
  if (r >= 0) fwd_touch(&acc[r], c->fwd_at);
  if (!with_diff || !net->layer_need_backward[c->bwd_at] || !c->need_backward) return;
  const int bs = 2 * L - 1 - c->bwd_at;
  ev_read(&acc[y].diff, 3 * bs + SUB_READ);
  /* A Split the chain sums (c->split): its tops' diffs are read here, not (only) at the
   * Split's own step; the Split's layer accesses stay planned too (conservative). */
  if (c->split >= 0)
    for (int t = 0; t < net->layers[c->split]->n_top; t++) {
      const int b = blob_index(net, net->layers[c->split]->top[t]);
      if (b >= 0) ev_read(&acc[b].diff, 3 * bs + SUB_READ);
    }
  /* x_diff_dz: the CPU chain leaves dz in x's diff as the unfused layers do
   * (the CUDA chain skips that write: nobody reads it); planned either way. */
  if (c->bn_bw || c->x_diff_dz) ev_write(&acc[x].diff, 3 * bs + SUB_LAYER_WRITE);
  if (c->shortcut_bw && r >= 0) ev_write(&acc[r].diff, 3 * bs + SUB_LAYER_WRITE);
}

/* Fill acc[0..B) for one way of running: every layer by itself (fused false),
 * or the net's fused chains as ops and the other layers by themselves. */
static int collect(const Net *net, bool fused, bool with_diff, Access *acc) {
  for (int b = 0; b < net->n_blobs; b++)
    acc[b] = (Access){NONE_LO, NONE_HI, {NONE_LO, NONE_LO, NONE_HI}};
  const NetFusePlan *fp = fused ? net->fuse : NULL;
  for (int i = 0; i < net->n_layers; i++) {
    if (fp && fp->chain_of && fp->chain_of[i] >= 0) continue;
    if (layer_access(net, i, with_diff, acc)) return -1;
  }
  if (fp)
    for (int k = 0; k < fp->n_chains; k++) chain_access(net, &fp->chains[k], with_diff, acc);
  return 0;
}

static bool reads_zeros(const DiffEvents *e) {
  return e->first_read != NONE_LO && e->first_read < e->first_write;
}

int memplan_net(const Net *net, const bool *keep, bool with_diff, MemPlan *plan) {
  memset(plan, 0, sizeof *plan);
  const int L = net->n_layers, B = net->n_blobs;
  plan->n_layers = L;
  plan->n_steps = with_diff ? 2 * L : L;
  plan->with_diff = with_diff;
  plan->n_blobs = B;
  plan->data = moka_calloc((size_t)B + 1, sizeof *plan->data);
  plan->diff = moka_calloc((size_t)B + 1, sizeof *plan->diff);
  bool *whole = moka_calloc((size_t)B + 1, sizeof *whole);           /* data all pass */
  bool *whole_diff = moka_calloc((size_t)B + 1, sizeof *whole_diff); /* diff all pass */
  Access *acc = moka_calloc(2 * (size_t)B + 1, sizeof *acc); /* [B] unfused, [B] fused */
  MemPlanBuffer *all = moka_calloc(2 * (size_t)B + 1, sizeof *all);
  if (!plan->data || !plan->diff || !whole || !whole_diff || !acc || !all) goto fail;
  const int last_step = plan->n_steps - 1;

  /* Blobs that stay readable: the caller's, outputs, loss tops; source tops
   * (their values come from the host once per pass) keep their data. */
  for (int b = 0; b < B; b++)
    if (keep && keep[b]) whole[b] = whole_diff[b] = true;
  for (int o = 0; o < net->n_outputs; o++) {
    const int b = blob_index(net, net->outputs[o]);
    if (b >= 0) whole[b] = whole_diff[b] = true;
  }
  for (int i = 0; i < L; i++) {
    const Layer *l = net->layers[i];
    for (int t = 0; t < l->n_top; t++) {
      const int b = blob_index(net, l->top[t]);
      if (b < 0) continue; /* reported by collect */
      if (l->n_bottom == 0 || l->loss_weight[t] != 0.0f) whole[b] = true;
      if (l->loss_weight[t] != 0.0f) whole_diff[b] = true;
    }
  }

  /* The pass as the layers run it, and (when the net has fused chains, which
   * may run fused or not: debug_info turns them off) as the chains run it:
   * each buffer gets the union of both, and reads zeros if either does. */
  Access *unf = acc, *fus = acc + B;
  if (collect(net, false, with_diff, unf)) goto fail;
  const bool has_fused = net->fuse && net->fuse->n_chains > 0;
  if (has_fused && collect(net, true, with_diff, fus)) goto fail;

  for (int b = 0; b < B; b++) {
    const size_t bytes = net->blobs[b]->count * blob_dev_elem_bytes(net->blobs[b]);
    MemPlanBuffer *d = &plan->data[b], *g = &plan->diff[b];
    int f0 = unf[b].fwd_first, f1 = unf[b].fwd_last;
    DiffEvents e = unf[b].diff;
    bool zeros = reads_zeros(&e);
    if (has_fused) {
      const Access *q = &fus[b];
      if (q->fwd_first < f0) f0 = q->fwd_first;
      if (q->fwd_last > f1) f1 = q->fwd_last;
      zeros = zeros || reads_zeros(&q->diff);
      if (q->diff.first_write < e.first_write) e.first_write = q->diff.first_write;
      if (q->diff.first_read < e.first_read) e.first_read = q->diff.first_read;
      if (q->diff.last > e.last) e.last = q->diff.last;
    }
    d->bytes = bytes;
    d->used = true;
    if (with_diff || whole[b] || f0 == NONE_LO) {
      d->first = 0; /* training: backward reads data in ways each layer decides */
      d->last = last_step;
    } else {
      d->first = f0;
      d->last = f1;
    }
    plan->unplanned_bytes += align_up(bytes);
    if (!with_diff) continue;
    g->bytes = bytes;
    plan->unplanned_bytes += align_up(bytes);
    if (whole_diff[b] || zeros) {
      g->used = true; /* reads zeros, or must stay readable: the whole pass */
      g->first = 0;
      g->last = last_step;
    } else if (e.first_write != NONE_LO) {
      g->used = true;
      g->first = e.first_write / 3;
      g->last = e.last / 3;
    } else {
      g->used = false; /* never read nor written */
    }
  }
  /* One arena for data and diffs: place all 2B buffers together. */
  memcpy(all, plan->data, (size_t)B * sizeof *all);
  memcpy(all + B, plan->diff, (size_t)B * sizeof *all);
  plan->arena_bytes = memplan_place(all, 2 * B);
  memcpy(plan->data, all, (size_t)B * sizeof *all);
  memcpy(plan->diff, all + B, (size_t)B * sizeof *all);
  free(all);
  free(whole);
  free(whole_diff);
  free(acc);
  return 0;
fail:
  free(all);
  free(whole);
  free(whole_diff);
  free(acc);
  memplan_free(plan);
  return -1;
}

void memplan_free(MemPlan *plan) {
  free(plan->data);
  free(plan->diff);
  memset(plan, 0, sizeof *plan);
}

void memplan_log(const MemPlan *plan, const char *net_name) {
  const double mib = 1.0 / 1048576.0;
  const double saved = plan->unplanned_bytes
                           ? 100.0 * (1.0 - (double)plan->arena_bytes / (double)plan->unplanned_bytes)
                           : 0.0;
  LOG_INFO("Memory plan of net '%s': activations (%s) in one arena of %.1f MiB instead of %.1f "
           "MiB with every blob its own (%.0f%% less)",
           net_name, plan->with_diff ? "data and diffs" : "data", plan->arena_bytes * mib,
           plan->unplanned_bytes * mib, saved);
}
