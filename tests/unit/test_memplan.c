/* test_memplan.c — the activation memory plan (src/net_memplan.h), without a
 * GPU: real nets (a hand-made chain with known answers, the mini ResNet of
 * shared/golden in TEST and TRAIN, ResNet-50 deploy at batch 8 in TEST and a
 * ResNet-50 training net at batch 8) are planned, and an independent checker
 * verifies each plan:
 *
 *   1. every buffer lies inside the arena, aligned;
 *   2. no two buffers share memory while both are *needed*, where "needed"
 *      is worked out here from the layers' accesses alone, not from the
 *      planner's intervals: a data buffer from its first write to its last
 *      forward read, and in training to the last backward of a layer that
 *      has it as a bottom or top (backward may read either); a diff from its
 *      first write in backward to its last read; a diff read before any
 *      write must keep its zeros all pass; outputs, loss tops and source tops
 *      all pass;
 *   3. net outputs (and loss tops, and source tops) share memory with no
 *      other buffer at all;
 *   4. the savings: bytes without / with the plan are printed, and the plan
 *      must be at least a stated fraction smaller (see each test);
 *   5. with fused BatchNorm->Scale(->Eltwise)(->ReLU) chains (the fast CPU
 *      backend plans them as the CUDA one does) the plan is checked for the
 *      chains run fused and run layer by layer;
 *   6. the plan run for real on the host: every blob pointed into one
 *      NaN-filled arena as net_cuda.c does on the device, mini_train trained
 *      two iterations and the mini ResNet run forward must give exactly the
 *      unplanned results (reference layers, and fast layers with fusion).
 *
 * Nets are built on the CPU backends; building does not touch activation
 * memory (calloc'd blobs stay unmapped), so ResNet-50 at batch 8 is cheap.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "net_fuse.h"
#include "net_memplan.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

/* ---- building nets ------------------------------------------------------------------------ */

#include "resnet_nets.h"

static Net *net_from_file(const char *path, Phase phase) {
  NetOptions o;
  net_options_default(&o);
  o.phase = phase;
  o.backend = build_backend;
  o.quiet = true;
  Net *net = net_create_from_file(path, &o);
  if (!net) fprintf(stderr, "    %s: %s\n", path, moka_error());
  return net;
}

static bool net_trains(const Net *net) {
  for (int i = 0; i < net->n_layers; i++)
    if (net->layer_need_backward[i]) return true;
  return false;
}

/* ---- the independent checker -------------------------------------------------------------- */

typedef struct Need {
  bool any;
  int lo, hi; /* steps, inclusive */
} Need;

static void need_add(Need *n, int s) {
  if (!n->any || s < n->lo) n->lo = s;
  if (!n->any || s > n->hi) n->hi = s;
  n->any = true;
}

static int index_of(const Net *net, const Blob *b) {
  for (int k = 0; k < net->n_blobs; k++)
    if (net->blobs[k] == b) return k;
  return -1;
}

/* What each buffer must hold, from the layers' accesses (see the header).
 * need[0..B) data, need[B..2B) diffs; kept[b] for whole-pass blobs. */
static const FusedChain *chain_of_layer(const Net *net, int i) {
  const NetFusePlan *fp = net->fuse;
  if (!fp || !fp->chain_of || fp->chain_of[i] < 0) return NULL;
  return &fp->chains[fp->chain_of[i]];
}

/* fused: run the net's fused chains as one op each (src/net_fuse.h: forward
 * at fwd_at reads x and the shortcut, writes x and y; backward at bwd_at
 * reads y's diff, or the diffs of the Split after it when it sums that Split
 * (c->split, whose own backward then does nothing), writes x's diff (bn_bw)
 * and the shortcut's (shortcut_bw)), instead of their layers. */
static void needs_of(const Net *net, bool train, bool fused, Need *need, bool *kept,
                     bool *kept_diff) {
  const int L = net->n_layers, B = net->n_blobs, end = train ? 2 * L - 1 : L - 1;
  memset(need, 0, 2 * (size_t)B * sizeof *need);
  memset(kept, 0, (size_t)B * sizeof *kept);
  memset(kept_diff, 0, (size_t)B * sizeof *kept_diff);
  for (int o = 0; o < net->n_outputs; o++)
    kept[index_of(net, net->outputs[o])] = kept_diff[index_of(net, net->outputs[o])] = true;
  for (int i = 0; i < L; i++) {
    const Layer *l = net->layers[i];
    for (int t = 0; t < l->n_top; t++) {
      const int b = index_of(net, l->top[t]);
      if (l->n_bottom == 0 || l->loss_weight[t] != 0) kept[b] = true;
      if (l->loss_weight[t] != 0) kept_diff[b] = true;
    }
    const FusedChain *c = fused ? chain_of_layer(net, i) : NULL;
    if (c) {
      if (i == c->fwd_at) {
        need_add(&need[index_of(net, c->x)], i);
        need_add(&need[index_of(net, c->y)], i);
        if (c->shortcut) need_add(&need[index_of(net, c->shortcut)], i);
      }
      continue;
    }
    for (int t = 0; t < l->n_top; t++) need_add(&need[index_of(net, l->top[t])], i);
    for (int k = 0; k < l->n_bottom; k++) need_add(&need[index_of(net, l->bottom[k])], i);
  }
  if (train) {
    /* Simulate backward (layer i at step 2L-1-i): the net sets the loss
     * tops' diffs, the layer reads its top diffs, then writes the bottom
     * diffs it propagates to. A diff read before any write reads zeros,
     * which must survive the whole pass. */
    bool *written = calloc((size_t)B, sizeof *written), *zero_read = calloc((size_t)B, 1);
    for (int i = L - 1; i >= 0; i--) {
      const Layer *l = net->layers[i];
      if (!net->layer_need_backward[i]) continue;
      const int s = 2 * L - 1 - i;
      const FusedChain *c = fused ? chain_of_layer(net, i) : NULL;
      /* A Split whose gradients the chain before it sums (c->split): its backward does
       * nothing; the chain reads its tops' diffs instead of y's. */
      if (fused && net->fuse->split_into && net->fuse->split_into[i] >= 0) continue;
      if (c) {
        if (i != c->bwd_at || !c->need_backward) continue;
        const int y = index_of(net, c->y), x = index_of(net, c->x);
        if (c->split >= 0) {
          const Layer *sp = net->layers[c->split];
          for (int t = 0; t < sp->n_top; t++) {
            const int b = index_of(net, sp->top[t]);
            if (!written[b]) zero_read[b] = true;
            need_add(&need[B + b], s);
          }
        } else {
          if (!written[y]) zero_read[y] = true;
          need_add(&need[B + y], s);
        }
        if (c->bn_bw) {
          written[x] = true;
          need_add(&need[B + x], s);
        }
        if (c->shortcut_bw) {
          const int r = index_of(net, c->shortcut);
          written[r] = true;
          need_add(&need[B + r], s);
        }
        continue;
      }
      for (int t = 0; t < l->n_top; t++) {
        const int b = index_of(net, l->top[t]);
        if (l->loss_weight[t] != 0) {
          written[b] = true;
          need_add(&need[B + b], s);
        }
      }
      for (int t = 0; t < l->n_top; t++) {
        const int b = index_of(net, l->top[t]);
        need_add(&need[b], s); /* backward may read its tops' data */
        if (!written[b]) zero_read[b] = true;
        need_add(&need[B + b], s);
      }
      for (int k = 0; k < l->n_bottom; k++) {
        const int b = index_of(net, l->bottom[k]);
        need_add(&need[b], s); /* and its bottoms' */
        if (l->propagate_down[k]) {
          written[b] = true;
          need_add(&need[B + b], s);
        }
      }
    }
    for (int b = 0; b < B; b++)
      if (zero_read[b] || kept_diff[b]) {
        need[B + b].any = true;
        need[B + b].lo = 0;
        need[B + b].hi = end;
      }
    free(written);
    free(zero_read);
  }
  for (int b = 0; b < B; b++)
    if (kept[b]) {
      need[b].any = true;
      need[b].lo = 0;
      need[b].hi = end;
    }
}

/* Check a plan; returns the number of problems found (each printed). */
static int check_plan(const Net *net, const MemPlan *p, bool train) {
  const int B = net->n_blobs;
  int bad = 0;
  Need *need = calloc(2 * (size_t)B, sizeof *need);
  bool *kept = calloc((size_t)B, sizeof *kept), *kept_diff = calloc((size_t)B, sizeof *kept);
  needs_of(net, train, false, need, kept, kept_diff);
  if (net->fuse && net->fuse->n_chains) { /* chains may run fused or not: both must be safe */
    Need *nf = calloc(2 * (size_t)B, sizeof *nf);
    needs_of(net, train, true, nf, kept, kept_diff);
    for (int x = 0; x < 2 * B; x++)
      if (nf[x].any) {
        need_add(&need[x], nf[x].lo);
        need_add(&need[x], nf[x].hi);
      }
    free(nf);
  }
  const MemPlanBuffer **buf = calloc(2 * (size_t)B, sizeof *buf);
  for (int b = 0; b < B; b++) {
    buf[b] = &p->data[b];
    buf[B + b] = &p->diff[b];
  }
  for (int x = 0; x < 2 * B; x++) {
    const MemPlanBuffer *a = buf[x];
    const char *an = net->blobs[x % B]->name, *ak = x < B ? "data" : "diff";
    if (a->offset % MEMPLAN_ALIGN || a->offset + a->bytes > p->arena_bytes) {
      fprintf(stderr, "    %s %s: [%zu, +%zu) outside the arena of %zu or misaligned\n", an, ak,
              a->offset, a->bytes, p->arena_bytes);
      bad++;
    }
    if (need[x].any && a->bytes && !a->used) {
      fprintf(stderr, "    %s %s is accessed but the plan calls it unused\n", an, ak);
      bad++;
    }
  }
  for (int x = 0; x < 2 * B; x++)
    for (int y = x + 1; y < 2 * B; y++) {
      const MemPlanBuffer *a = buf[x], *c = buf[y];
      if (!a->bytes || !c->bytes) continue;
      const bool mem = a->offset < c->offset + c->bytes && c->offset < a->offset + a->bytes;
      if (!mem) continue;
      const bool both_needed = need[x].any && need[y].any && need[x].lo <= need[y].hi &&
                               need[y].lo <= need[x].hi;
      /* outputs / loss / source tops: no sharing at all, even with unused
       * buffers; unused buffers share only with unused ones (the sink) */
      const bool kept_shared = (x < B && kept[x]) || (y < B && kept[y]) ||
                               (x >= B && kept_diff[x - B]) || (y >= B && kept_diff[y - B]);
      const bool sink_shared = a->used != c->used;
      if (both_needed || kept_shared || sink_shared) {
        if (bad < 10)
          fprintf(stderr, "    %s %s (needed %d..%d) and %s %s (needed %d..%d) share memory\n",
                  net->blobs[x % B]->name, x < B ? "data" : "diff", need[x].lo, need[x].hi,
                  net->blobs[y % B]->name, y < B ? "data" : "diff", need[y].lo, need[y].hi);
        bad++;
      }
    }
  free(buf);
  free(need);
  free(kept);
  free(kept_diff);
  return bad;
}

/* Plan, check, print the figures; *ratio = arena / unplanned. */
static bool plan_and_check(Net *net, const char *what, double *ratio) {
  const bool train = net_trains(net);
  MemPlan p;
  if (memplan_net(net, NULL, train, &p)) {
    fprintf(stderr, "    %s: %s\n", what, moka_error());
    return false;
  }
  const int bad = check_plan(net, &p, train);
  CHECK_MSG(bad == 0, "%s: %d conflicts in the plan", what, bad);
  *ratio = p.unplanned_bytes ? (double)p.arena_bytes / (double)p.unplanned_bytes : 1.0;
  printf("    %-34s %s: %9.1f MiB without plan, %9.1f MiB with (%.1f%% less)\n", what,
         train ? "data+diff" : "data     ", p.unplanned_bytes / 1048576.0,
         p.arena_bytes / 1048576.0, 100.0 * (1.0 - *ratio));
  memplan_free(&p);
  return bad == 0;
}

/* ---- tests -------------------------------------------------------------------------------- */

/* input -> ip1 -> ip2 -> ip3 -> ip4 (output), every blob 1000 floats
 * (N=10, 100 outputs). Forward-only: a [1,2], b [2,3], c [3,4]; input and d
 * whole: a and c share, so 4 slots of 4096 bytes (4000 aligned to 256). */
static const char *CHAIN =
    "name: 'chain'\n"
    "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 10 dim: 100 } } }\n"
    "layer { name: 'ip1' type: 'InnerProduct' bottom: 'x' top: 'a' inner_product_param { "
    "num_output: 100 } }\n"
    "layer { name: 'ip2' type: 'InnerProduct' bottom: 'a' top: 'b' inner_product_param { "
    "num_output: 100 } }\n"
    "layer { name: 'r2' type: 'ReLU' bottom: 'b' top: 'b' }\n"
    "layer { name: 'ip3' type: 'InnerProduct' bottom: 'b' top: 'c' inner_product_param { "
    "num_output: 100 } }\n"
    "layer { name: 'ip4' type: 'InnerProduct' bottom: 'c' top: 'd' inner_product_param { "
    "num_output: 100 } }\n";

static void test_chain_forward(void) {
  Net *net = net_from_text(CHAIN, MOKA_TEST, "chain");
  REQUIRE(net);
  MemPlan p;
  REQUIRE(memplan_net(net, NULL, false, &p) == 0);
  CHECK(check_plan(net, &p, false) == 0);
  CHECK(p.n_steps == 6);
  CHECK(p.unplanned_bytes == 5 * 4096);
  CHECK(p.arena_bytes == 4 * 4096);
  const int a = index_of(net, net_blob(net, "a")), c = index_of(net, net_blob(net, "c"));
  const int b = index_of(net, net_blob(net, "b"));
  CHECK(p.data[a].first == 1 && p.data[a].last == 2);
  CHECK(p.data[b].first == 2 && p.data[b].last == 4); /* ip2, r2 (in place), ip3 */
  CHECK(p.data[a].offset == p.data[c].offset);
  CHECK(p.data[b].offset != p.data[a].offset);
  /* keeping 'a' (a blob the user reads) gives it the whole pass and its own slot */
  bool *keep = calloc((size_t)net->n_blobs, sizeof *keep);
  keep[a] = true;
  MemPlan q;
  REQUIRE(memplan_net(net, keep, false, &q) == 0);
  CHECK(q.data[a].first == 0 && q.data[a].last == 5);
  CHECK(q.arena_bytes == 5 * 4096);
  for (int k = 0; k < net->n_blobs; k++)
    if (k != a) CHECK(q.data[k].offset != q.data[a].offset);
  free(keep);
  memplan_free(&q);
  memplan_free(&p);
  net_free(net);
}

/* The chain with a loss, trained: all data kept; diffs share. Backward steps
 * (L = 8 layers: in, label, ip1..ip4 with r2, loss) run loss first. */
static void test_chain_train(void) {
  char text[4096];
  snprintf(text, sizeof text, "%s%s", CHAIN,
           "layer { name: 'lab' type: 'Input' top: 'label' input_param { shape { dim: 10 } } }\n"
           "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'd' bottom: 'label' top: "
           "'loss' }\n");
  Net *net = net_from_text(text, MOKA_TRAIN, "chain+loss");
  REQUIRE(net);
  REQUIRE(net_trains(net));
  MemPlan p;
  REQUIRE(memplan_net(net, NULL, true, &p) == 0);
  CHECK(check_plan(net, &p, true) == 0);
  const int L = net->n_layers;
  CHECK(p.n_steps == 2 * L);
  for (int k = 0; k < net->n_blobs; k++) {
    CHECK(p.data[k].first == 0 && p.data[k].last == 2 * L - 1); /* training: data kept */
  }
  /* x's diff: ip1 does not propagate to the input: unused, as label's */
  const int x = index_of(net, net_blob(net, "x")), lab = index_of(net, net_blob(net, "label"));
  CHECK(!p.diff[x].used);
  CHECK(!p.diff[lab].used);
  /* d's diff: written by the loss backward, read by ip4's */
  const int d = index_of(net, net_blob(net, "d"));
  const int i_loss = net_layer_index(net, "loss"), i_ip4 = net_layer_index(net, "ip4");
  CHECK(p.diff[d].used && p.diff[d].first == 2 * L - 1 - i_loss &&
        p.diff[d].last == 2 * L - 1 - i_ip4);
  /* a's diff [ip2 bwd, ip1 bwd] and c's diff [ip4 bwd, ip3 bwd] do not meet: shared */
  const int a = index_of(net, net_blob(net, "a")), c = index_of(net, net_blob(net, "c"));
  CHECK(p.diff[a].offset == p.diff[c].offset);
  /* the loss top: its own memory, whole pass */
  const int lo = index_of(net, net_blob(net, "loss"));
  CHECK(p.diff[lo].first == 0 && p.data[lo].first == 0);
  CHECK(p.arena_bytes < p.unplanned_bytes);
  memplan_free(&p);
  net_free(net);
}

/* A consumer that does not propagate down to a blob whose producer still
 * runs backward (for its parameters): that producer reads a diff nobody
 * writes, which must read as zeros, as on the CPU: its diff is kept all
 * pass and shares memory with nothing. */
static void test_zero_read_diff(void) {
  const char *t =
      "name: 'pd'\n"
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 4 dim: 50 } } }\n"
      "layer { name: 'lab' type: 'Input' top: 'label' input_param { shape { dim: 4 } } }\n"
      "layer { name: 'ip1' type: 'InnerProduct' bottom: 'x' top: 'a' inner_product_param { "
      "num_output: 50 } }\n"
      "layer { name: 'ip2' type: 'InnerProduct' bottom: 'a' top: 'b' propagate_down: false "
      "inner_product_param { num_output: 50 } }\n"
      "layer { name: 'ip3' type: 'InnerProduct' bottom: 'b' top: 'o' inner_product_param { "
      "num_output: 5 } }\n"
      "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'o' bottom: 'label' top: 'loss' }\n";
  Net *net = net_from_text(t, MOKA_TRAIN, "propagate_down");
  REQUIRE(net);
  MemPlan p;
  REQUIRE(memplan_net(net, NULL, true, &p) == 0);
  CHECK(check_plan(net, &p, true) == 0);
  const int a = index_of(net, net_blob(net, "a"));
  const int i1 = net_layer_index(net, "ip1"), i2 = net_layer_index(net, "ip2");
  CHECK(!net->layers[i2]->propagate_down[0]);
  /* moka's net (as Caffe's) finds that ip1 no longer leads to the loss and
   * skips its backward: then nobody reads 'a''s diff. Either way the plan
   * must keep a diff that is read unwritten. */
  if (net->layer_need_backward[i1])
    CHECK(p.diff[a].used && p.diff[a].first == 0 && p.diff[a].last == p.n_steps - 1);
  else
    CHECK(!p.diff[a].used);
  for (int k = 0; k < 2 * net->n_blobs; k++) {
    const MemPlanBuffer *o = k < net->n_blobs ? &p.data[k] : &p.diff[k - net->n_blobs];
    if (o == &p.diff[a] || !o->bytes || !p.diff[a].used) continue;
    CHECK(o->offset + o->bytes <= p.diff[a].offset || p.diff[a].offset + p.diff[a].bytes <= o->offset);
  }
  memplan_free(&p);
  net_free(net);
}

static void test_mini_resnet(void) {
  double r;
  Net *net = net_from_file(shared_path("golden/mini_resnet/deploy.prototxt"), MOKA_TEST);
  REQUIRE(net);
  CHECK(plan_and_check(net, "mini ResNet deploy (TEST)", &r));
  CHECK(r < 0.6);
  net_free(net);
  net = net_from_file(shared_path("golden/mini_train/train.prototxt"), MOKA_TRAIN);
  REQUIRE(net);
  REQUIRE(net_trains(net));
  CHECK(plan_and_check(net, "mini_train (TRAIN)", &r));
  CHECK(r < 0.8);
  net_free(net);
  /* the same training definition in TEST phase: forward-only */
  net = net_from_file(shared_path("golden/mini_train/train.prototxt"), MOKA_TEST);
  REQUIRE(net);
  if (!net_trains(net)) CHECK(plan_and_check(net, "mini_train (TEST phase)", &r));
  net_free(net);
}

/* ResNet-50 inference, batch 8. The largest live set at any step is a few
 * activations (a block's input kept for the shortcut, the branch's current
 * blob and its output, the first stage's 56x56x256 blobs being the largest)
 * out of ~150 blobs: the plan must be at least 80% smaller. */
static void test_resnet50_deploy(void) {
  Net *net = resnet50_deploy(8);
  REQUIRE(net);
  double r;
  CHECK(plan_and_check(net, "ResNet-50 deploy, batch 8 (TEST)", &r));
  CHECK_MSG(r <= 0.20, "ResNet-50 deploy: the plan is %.1f%% of the unplanned size, want <= 20%%",
            100 * r);
  net_free(net);
}

/* ResNet-50 training, batch 8: all data is kept (conservative), so at best
 * half the bytes (the diffs) can be saved; diffs of one stage die before the
 * next is written, so most of that half goes: the plan must be at least 35%
 * smaller. */
static void test_resnet50_train(void) {
  Net *net = resnet50_train(8);
  REQUIRE(net);
  REQUIRE(net_trains(net));
  double r;
  CHECK(plan_and_check(net, "ResNet-50 train, batch 8 (TRAIN)", &r));
  CHECK_MSG(r <= 0.65, "ResNet-50 train: the plan is %.1f%% of the unplanned size, want <= 65%%",
            100 * r);
  net_free(net);
}

static int n_chains(const Net *net) { return net->fuse ? net->fuse->n_chains : 0; }

/* The same nets with fused BatchNorm->Scale(->Eltwise)(->ReLU) chains (the
 * fast CPU backend plans them at set-up): the plan must be safe whether the
 * chains run fused or layer by layer. */
static void test_fused_nets(void) {
  build_backend = MOKA_BACKEND_CPU_FAST;
  double r;
  Net *net = net_from_file(shared_path("golden/mini_train/train.prototxt"), MOKA_TRAIN);
  REQUIRE(net);
  printf("    mini_train: %d fused chains\n", n_chains(net));
  CHECK(n_chains(net) > 0);
  CHECK(plan_and_check(net, "mini_train fused (TRAIN)", &r));
  net_free(net);
  net = resnet50_train(8);
  REQUIRE(net);
  printf("    ResNet-50 train: %d fused chains\n", n_chains(net));
  CHECK(n_chains(net) >= 50); /* 53 BatchNorm->Scale pairs, 16 of them ending in Eltwise */
  CHECK(plan_and_check(net, "ResNet-50 train fused, batch 8", &r));
  CHECK(r <= 0.65);
  net_free(net);
  net = resnet50_deploy(8);
  REQUIRE(net);
  CHECK(n_chains(net) >= 50);
  CHECK(plan_and_check(net, "ResNet-50 deploy fused, batch 8", &r));
  CHECK(r <= 0.20);
  net_free(net);
  build_backend = MOKA_BACKEND_CPU;
}

/* ---- the plan run for real, on the host ------------------------------------------------ */

/* Point every blob of `net` into a host arena laid out by `p` (what
 * net_cuda.c does on the device), keeping the blobs' own pointers in
 * `saved` to put back before net_free. The arena starts as NaN, except the
 * diffs kept all pass (zeros, as the device arena, for diffs read unwritten):
 * any read of a buffer the plan thinks dead shows up as NaN or a wrong value. */
typedef struct Saved {
  float *data, *diff;
  bool owns;
} Saved;

static float *apply_plan(Net *net, const MemPlan *p, Saved *saved) {
  float *arena = aligned_alloc(MEMPLAN_ALIGN, p->arena_bytes ? p->arena_bytes : MEMPLAN_ALIGN);
  const size_t nf = p->arena_bytes / sizeof(float);
  for (size_t i = 0; i < nf; i++) arena[i] = NAN;
  for (int b = 0; b < net->n_blobs; b++) {
    const MemPlanBuffer *g = &p->diff[b];
    if (p->with_diff && g->used && g->first == 0 && g->last == p->n_steps - 1)
      memset((char *)arena + g->offset, 0, g->bytes);
  }
  for (int b = 0; b < net->n_blobs; b++) {
    Blob *x = net->blobs[b];
    saved[b] = (Saved){x->data, x->diff, x->owns};
    x->data = (float *)((char *)arena + p->data[b].offset);
    if (p->with_diff) x->diff = (float *)((char *)arena + p->diff[b].offset);
    x->owns = false;
  }
  /* The fast backend's Split layers share their bottom's host memory with
   * their tops (a host-only trick, src/net_fuse.h): not with views. */
  if (net->fuse && net->fuse->split_share)
    for (int i = 0; i < net->n_layers; i++) net->fuse->split_share[i] = false;
  return arena;
}

static void unapply_plan(Net *net, const Saved *saved) {
  for (int b = 0; b < net->n_blobs; b++) {
    net->blobs[b]->data = saved[b].data;
    net->blobs[b]->diff = saved[b].diff;
    net->blobs[b]->owns = saved[b].owns;
  }
}

static double nmse(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  return den > 0 ? num / den : num;
}

static bool set_input(Net *net, const char *blob, const char *file) {
  Blob *b = net_blob(net, blob);
  size_t n;
  float *v = read_f32(shared_path(file), &n);
  const bool ok = b && v && n == b->count;
  if (ok) memcpy(b->data, v, n * sizeof(float));
  free(v);
  return ok;
}

/* mini_train, TRAIN, two iterations on golden batches 0 and 1: the same
 * net with every blob its own memory and with the plan's shared arena give
 * the same loss, gradients and BN statistics (the same operations on the
 * same values: any difference means the plan let a live buffer be
 * overwritten). */
static void plan_runs_like_unplanned(Backend be, const char *what) {
  build_backend = be;
  Net *a = net_from_file(shared_path("golden/mini_train/train.prototxt"), MOKA_TRAIN);
  Net *b = net_from_file(shared_path("golden/mini_train/train.prototxt"), MOKA_TRAIN);
  build_backend = MOKA_BACKEND_CPU;
  REQUIRE(a && b && a->param_count == b->param_count);
  memcpy(b->param_data, a->param_data, a->param_count * sizeof(float));
  MemPlan p;
  REQUIRE(memplan_net(b, NULL, true, &p) == 0);
  CHECK(p.arena_bytes < p.unplanned_bytes);
  Saved *saved = calloc((size_t)b->n_blobs, sizeof *saved);
  float *arena = apply_plan(b, &p, saved);
  for (int it = 0; it < 2; it++) {
    char d[128], l[128];
    snprintf(d, sizeof d, "golden/mini_train/batches/batch%d_data.f32", it);
    snprintf(l, sizeof l, "golden/mini_train/batches/batch%d_label.f32", it);
    REQUIRE(set_input(a, "data", d) && set_input(a, "label", l) && set_input(b, "data", d) &&
            set_input(b, "label", l));
    net_clear_param_diffs(a);
    net_clear_param_diffs(b);
    float la = 0, lb = 0;
    REQUIRE(net_forward(a, &la) == 0 && net_backward(a) == 0);
    CHECK_MSG(net_forward(b, &lb) == 0 && net_backward(b) == 0, "%s: %s", what, moka_error());
    const double eg = nmse(b->param_diff, a->param_diff, a->param_count);
    const double ep = nmse(b->param_data, a->param_data, a->param_count);
    CHECK_MSG(la == lb, "%s iteration %d: loss %.9g planned, %.9g unplanned", what, it,
              (double)lb, (double)la);
    CHECK_MSG(eg <= 1e-12, "%s iteration %d: gradients differ, NMSE %.3g", what, it, eg);
    CHECK_MSG(ep <= 1e-12, "%s iteration %d: BN statistics differ, NMSE %.3g", what, it, ep);
  }
  printf("    %-34s planned run = unplanned run (2 iterations, %.2f of the memory)\n", what,
         (double)p.arena_bytes / (double)p.unplanned_bytes);
  unapply_plan(b, saved);
  free(saved);
  free(arena);
  memplan_free(&p);
  net_free(a);
  net_free(b);
}

static void test_run_planned_reference(void) {
  plan_runs_like_unplanned(MOKA_BACKEND_CPU, "mini_train, reference layers");
}
static void test_run_planned_fused(void) {
  plan_runs_like_unplanned(MOKA_BACKEND_CPU_FAST, "mini_train, fast CPU, fused chains");
}

/* The mini ResNet in TEST (forward-only: blobs die after their last
 * reader): its output `prob` is the same with the plan. */
static void test_run_planned_forward(void) {
  for (int k = 0; k < 2; k++) {
    build_backend = k ? MOKA_BACKEND_CPU_FAST : MOKA_BACKEND_CPU;
    Net *a = net_from_file(shared_path("golden/mini_resnet/deploy.prototxt"), MOKA_TEST);
    Net *b = net_from_file(shared_path("golden/mini_resnet/deploy.prototxt"), MOKA_TEST);
    build_backend = MOKA_BACKEND_CPU;
    REQUIRE(a && b);
    REQUIRE(net_copy_from_file(a, shared_path("golden/mini_resnet/weights.caffemodel")) == 0 &&
            net_copy_from_file(b, shared_path("golden/mini_resnet/weights.caffemodel")) == 0);
    MemPlan p;
    REQUIRE(memplan_net(b, NULL, net_trains(b), &p) == 0);
    Saved *saved = calloc((size_t)b->n_blobs, sizeof *saved);
    float *arena = apply_plan(b, &p, saved);
    REQUIRE(set_input(a, "data", "golden/mini_resnet/input.bin") &&
            set_input(b, "data", "golden/mini_resnet/input.bin"));
    float la, lb;
    REQUIRE(net_forward(a, &la) == 0);
    CHECK_MSG(net_forward(b, &lb) == 0, "%s", moka_error());
    Blob *pa = net_blob(a, "prob"), *pb = net_blob(b, "prob");
    REQUIRE(pa && pb);
    const double e = nmse(pb->data, pa->data, pa->count);
    CHECK_MSG(e <= 1e-12, "mini ResNet (%s) prob differs with the plan: NMSE %.3g",
              k ? "fast, fused" : "reference", e);
    unapply_plan(b, saved);
    free(saved);
    free(arena);
    memplan_free(&p);
    net_free(a);
    net_free(b);
  }
}

/* memplan_place on its own: three buffers, two meeting. */
/* moka_alloc_big (blobs, BatchNorm's x_norm, the fast backend's
 * workspaces): zeroed, 64-byte aligned, 2 MiB aligned from 2 MiB on (its own
 * mapping on huge pages; not under AddressSanitizer, where it stays on the
 * heap), every byte writable, released by moka_free_big; sizes around both
 * switches (64 KiB, 2 MiB) and odd ones. */
static void test_alloc_big(void) {
  const size_t huge = (size_t)2 << 20;
  const size_t sizes[] = {0,    1,        4,    4095,           65535,    65536,
                          65537, huge - 1, huge, huge + 1, 3 * huge + 4100, 5 * huge};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    const size_t n = sizes[i];
    unsigned char *p = moka_alloc_big(n);
    REQUIRE(p != NULL);
    CHECK_MSG((uintptr_t)p % 64 == 0, "%zu bytes: not 64-byte aligned", n);
#if !defined(__SANITIZE_ADDRESS__) /* the SANITIZE build keeps everything on the heap */
    if (n >= huge) CHECK_MSG((uintptr_t)p % huge == 0, "%zu bytes: not 2 MiB aligned", n);
#endif
    size_t nonzero = 0;
    for (size_t k = 0; k < n; k++) nonzero += p[k] != 0;
    CHECK_MSG(nonzero == 0, "%zu bytes: %zu not zero", n, nonzero);
    memset(p, 0xA5, n);
    moka_free_big(p, n);
  }
  moka_free_big(NULL, huge); /* a no-op, as free(NULL) */
}

static void test_place(void) {
  MemPlanBuffer b[4] = {
      {.bytes = 1000, .used = true, .first = 0, .last = 1},
      {.bytes = 1000, .used = true, .first = 1, .last = 2},
      {.bytes = 600, .used = true, .first = 2, .last = 3},
      {.bytes = 5000, .used = false},
  };
  const size_t arena = memplan_place(b, 4);
  /* 1024-byte slots: 0 at [0,1024), 1 at [1024,2048); 2 meets only 1: at 0;
   * the unused 5000 bytes go to the sink above them (5120 aligned) */
  CHECK(b[0].offset == 0 && b[1].offset == 1024 && b[2].offset == 0);
  CHECK(b[3].offset == 2048);
  CHECK(arena == 2048 + 5120);
}

int main(void) {
  RUN(test_place);
  RUN(test_alloc_big);
  RUN(test_chain_forward);
  RUN(test_chain_train);
  RUN(test_zero_read_diff);
  RUN(test_mini_resnet);
  RUN(test_resnet50_deploy);
  RUN(test_resnet50_train);
  RUN(test_fused_nets);
  RUN(test_run_planned_reference);
  RUN(test_run_planned_fused);
  RUN(test_run_planned_forward);
  return test_summary();
}
