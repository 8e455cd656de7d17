/* net.c — building and running a Net (see net.h for the steps). */
#include "net.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "net_bf16.h"
#include "net_check.h"
#include "net_cuda.h"
#include "net_fuse.h"
#include "proto_io.h"
#include "prototxt.h"
#include "util.h"

void net_options_default(NetOptions *o) {
  memset(o, 0, sizeof *o);
  o->phase = MOKA_TEST;
  o->backend = MOKA_BACKEND_CPU;
}

/* Deep copy of any message (pack + unpack). */
static ProtobufCMessage *proto_clone(const ProtobufCMessage *m) {
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = moka_malloc(len);
  if (!buf) return NULL;
  protobuf_c_message_pack(m, buf);
  ProtobufCMessage *c = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
  free(buf);
  if (!c) moka_errorf("internal error: cannot copy a %s", m->descriptor->name);
  return c;
}

/* ---- NetState filtering (Caffe's StateMeetsRule / FilterNet) ------------------------ */

static bool has_stage(const NetOptions *o, const char *s) {
  for (int i = 0; i < o->n_stages; i++)
    if (strcmp(o->stages[i], s) == 0) return true;
  return false;
}

static bool state_meets_rule(const NetOptions *o, const Caffe__NetStateRule *r) {
  if (r->has_phase && (int)r->phase != (int)o->phase) return false;
  if (r->has_min_level && o->level < r->min_level) return false;
  if (r->has_max_level && o->level > r->max_level) return false;
  for (size_t i = 0; i < r->n_stage; i++)
    if (!has_stage(o, r->stage[i])) return false;
  for (size_t i = 0; i < r->n_not_stage; i++)
    if (has_stage(o, r->not_stage[i])) return false;
  return true;
}

static int filter_layers(Caffe__NetParameter *p, const NetOptions *o, const char *source) {
  size_t kept = 0;
  for (size_t i = 0; i < p->n_layer; i++) {
    Caffe__LayerParameter *l = p->layer[i];
    if (l->n_include && l->n_exclude)
      return moka_errorf("%s: layer '%s' specifies both include and exclude rules; use one",
                         source, l->name ? l->name : "");
    bool in = l->n_include == 0;
    for (size_t k = 0; k < l->n_exclude; k++)
      if (state_meets_rule(o, l->exclude[k])) in = false;
    for (size_t k = 0; k < l->n_include; k++)
      if (state_meets_rule(o, l->include[k])) in = true;
    if (in)
      p->layer[kept++] = l;
    else
      caffe__layer_parameter__free_unpacked(l, NULL);
  }
  p->n_layer = kept;
  return 0;
}

/* ---- implicit Split layers (Caffe's InsertSplits) ------------------------------------ */

typedef struct {
  int layer, top;
} TopRef;

static char *fmt_split(const char *blob, const char *layer, int top, int k) {
  char buf[2048];
  if (k < 0)
    snprintf(buf, sizeof buf, "%s_%s_%d_split", blob, layer, top);
  else
    snprintf(buf, sizeof buf, "%s_%s_%d_split_%d", blob, layer, top, k);
  return moka_strdup(buf);
}

static int insert_splits(Caffe__NetParameter *p, const char *source) {
  size_t nl = p->n_layer;
  /* For every (layer, top): how many bottoms read it (+1 if it has a loss weight). */
  int **count = moka_calloc(nl + 1, sizeof *count);
  int **next_split = moka_calloc(nl + 1, sizeof *next_split);
  TopRef **src = moka_calloc(nl + 1, sizeof *src);
  if (!count || !next_split || !src) goto oom;
  for (size_t i = 0; i < nl; i++) {
    Caffe__LayerParameter *l = p->layer[i];
    count[i] = moka_calloc(l->n_top + 1, sizeof **count);
    next_split[i] = moka_calloc(l->n_top + 1, sizeof **next_split);
    src[i] = moka_calloc(l->n_bottom + 1, sizeof **src);
    if (!count[i] || !next_split[i] || !src[i]) goto oom;
  }
  for (size_t i = 0; i < nl; i++) {
    Caffe__LayerParameter *l = p->layer[i];
    for (size_t j = 0; j < l->n_bottom; j++) {
      /* the last producer of this name before layer i */
      TopRef r = {-1, -1};
      for (size_t a = 0; a < i; a++)
        for (size_t t = 0; t < p->layer[a]->n_top; t++)
          if (strcmp(p->layer[a]->top[t], l->bottom[j]) == 0) r = (TopRef){(int)a, (int)t};
      if (r.layer < 0) {
        moka_errorf("%s: layer '%s' (%s): unknown bottom blob '%s' (no earlier layer produces it)",
                    source, l->name ? l->name : "", l->type ? l->type : "", l->bottom[j]);
        goto fail;
      }
      src[i][j] = r;
      count[r.layer][r.top]++;
    }
    for (size_t t = 0; t < l->n_top; t++)
      if (t < l->n_loss_weight && l->loss_weight[t] != 0.0f) count[i][t]++;
  }
  size_t n_new = nl;
  for (size_t i = 0; i < nl; i++)
    for (size_t t = 0; t < p->layer[i]->n_top; t++)
      if (count[i][t] > 1) n_new++;
  if (n_new == nl) goto done;
  Caffe__LayerParameter **out = moka_calloc(n_new, sizeof *out);
  if (!out) goto oom;
  size_t k = 0;
  for (size_t i = 0; i < nl; i++) {
    Caffe__LayerParameter *l = p->layer[i];
    out[k++] = l;
    for (size_t j = 0; j < l->n_bottom; j++) {
      TopRef r = src[i][j];
      if (count[r.layer][r.top] > 1) {
        char *nb = fmt_split(l->bottom[j], p->layer[r.layer]->name ? p->layer[r.layer]->name : "",
                             r.top, next_split[r.layer][r.top]++);
        if (!nb) goto oom_out;
        free(l->bottom[j]);
        l->bottom[j] = nb;
      }
    }
    for (size_t t = 0; t < l->n_top; t++) {
      int c = count[i][t];
      if (c <= 1) continue;
      const char *lname = l->name ? l->name : "";
      Caffe__LayerParameter *s = moka_malloc(sizeof *s);
      if (!s) goto oom_out;
      caffe__layer_parameter__init(s);
      out[k++] = s;
      s->name = fmt_split(l->top[t], lname, (int)t, -1);
      s->type = moka_strdup("Split");
      s->bottom = moka_calloc(1, sizeof *s->bottom);
      s->top = moka_calloc((size_t)c, sizeof *s->top);
      if (!s->name || !s->type || !s->bottom || !s->top) goto oom_out;
      s->n_bottom = 1;
      s->bottom[0] = moka_strdup(l->top[t]);
      s->n_top = (size_t)c;
      for (int q = 0; q < c; q++) s->top[q] = fmt_split(l->top[t], lname, (int)t, q);
      float lw = t < l->n_loss_weight ? l->loss_weight[t] : 0.0f;
      if (lw != 0.0f) {
        /* The loss moves to the Split's first top, as in Caffe. */
        s->loss_weight = moka_calloc((size_t)c, sizeof *s->loss_weight);
        if (!s->loss_weight) goto oom_out;
        s->n_loss_weight = (size_t)c;
        s->loss_weight[0] = lw;
        l->loss_weight[t] = 0.0f;
        next_split[i][t]++;
      }
    }
  }
  free(p->layer);
  p->layer = out;
  p->n_layer = k;
  goto done;
oom_out:
  /* the new layers were appended to `out`; the old ones are still in p->layer */
  for (size_t q = 0; q < k; q++) {
    bool old = false;
    for (size_t i = 0; i < nl; i++)
      if (out[q] == p->layer[i]) old = true;
    if (!old) caffe__layer_parameter__free_unpacked(out[q], NULL);
  }
  free(out);
oom:
  moka_errorf("out of memory while inserting Split layers");
fail:
  for (size_t i = 0; i < nl && count; i++) {
    free(count[i]);
    if (next_split) free(next_split[i]);
    if (src) free(src[i]);
  }
  free(count);
  free(next_split);
  free(src);
  return -1;
done:
  for (size_t i = 0; i < nl; i++) {
    free(count[i]);
    free(next_split[i]);
    free(src[i]);
  }
  free(count);
  free(next_split);
  free(src);
  return 0;
}

/* ---- building ---------------------------------------------------------------------- */

Blob *net_blob(const Net *net, const char *name) {
  for (int i = net->n_blobs - 1; i >= 0; i--)
    if (strcmp(net->blobs[i]->name, name) == 0) return net->blobs[i];
  return NULL;
}

int net_layer_index(const Net *net, const char *name) {
  for (int i = 0; i < net->n_layers; i++)
    if (strcmp(net->layers[i]->name, name) == 0) return i;
  return -1;
}

Layer *net_layer(const Net *net, const char *name) {
  int i = net_layer_index(net, name);
  return i < 0 ? NULL : net->layers[i];
}

static Blob *add_blob(Net *net, const char *name) {
  Blob **nb = moka_realloc(net->blobs, (size_t)(net->n_blobs + 1) * sizeof *nb);
  if (!nb) return NULL;
  net->blobs = nb;
  Blob *b = blob_new(name);
  if (!b) return NULL;
  net->blobs[net->n_blobs++] = b;
  return b;
}

static int flatten_params(Net *net) {
  int np = 0;
  size_t total = 0;
  for (int i = 0; i < net->n_layers; i++) {
    np += net->layers[i]->n_params;
    for (int k = 0; k < net->layers[i]->n_params; k++) total += net->layers[i]->params[k]->count;
  }
  net->n_params = np;
  net->param_count = total;
  net->params = moka_calloc((size_t)np + 1, sizeof *net->params);
  net->param_layer = moka_calloc((size_t)np + 1, sizeof *net->param_layer);
  net->param_lr_mult = moka_calloc((size_t)np + 1, sizeof *net->param_lr_mult);
  net->param_decay_mult = moka_calloc((size_t)np + 1, sizeof *net->param_decay_mult);
  if (!net->params || !net->param_layer || !net->param_lr_mult || !net->param_decay_mult)
    return moka_error_prefix("allocating %zu parameters", total);
  /* The flat arrays count against the blob memory limit (net_free releases
   * them); the layers' own copies are freed just below, once copied. */
  char what[300];
  snprintf(what, sizeof what, "net '%s': the flat parameter arrays (2 x %zu floats)", net->name,
           total + 1);
  if (blob_memory_reserve(2 * (total + 1) * sizeof(float), what)) return -1;
  /* Zeroed, and on huge pages from 2 MiB on (moka_alloc_big): the layers walk the weights
   * in blocks of rows to pack them and the solver streams them every iteration. */
  net->param_data = moka_alloc_big((total + 1) * sizeof(float));
  net->param_diff = moka_alloc_big((total + 1) * sizeof(float));
  if (!net->param_data || !net->param_diff) {
    moka_free_big(net->param_data, (total + 1) * sizeof(float));
    moka_free_big(net->param_diff, (total + 1) * sizeof(float));
    net->param_data = net->param_diff = NULL;
    blob_memory_release(2 * (total + 1) * sizeof(float));
    return moka_error_prefix("allocating %zu parameters", total);
  }
  size_t off = 0;
  int p = 0;
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    for (int k = 0; k < l->n_params; k++, p++) {
      Blob *b = l->params[k];
      if (b->count) memcpy(net->param_data + off, b->data, b->count * sizeof(float));
      if (blob_set_view(b, b->num_axes, b->shape, net->param_data + off, net->param_diff + off))
        return -1;
      net->params[p] = b;
      net->param_layer[p] = i;
      net->param_lr_mult[p] = l->lr_mult[k];
      net->param_decay_mult[p] = l->decay_mult[k];
      off += b->count;
    }
  }
  return 0;
}

static int check_param_sharing(const Net *net) {
  /* Caffe shares a parameter between layers whose ParamSpecs carry the same
   * name. moka does not implement sharing yet: refuse rather than train two
   * independent copies. */
  for (int i = 0; i < net->n_layers; i++) {
    const Caffe__LayerParameter *a = net->layers[i]->param;
    for (size_t k = 0; k < a->n_param; k++) {
      const char *n = a->param[k]->name;
      if (!n || !*n) continue;
      for (int j = 0; j <= i; j++) {
        const Caffe__LayerParameter *b = net->layers[j]->param;
        for (size_t q = 0; q < b->n_param; q++) {
          if ((j == i && q == k) || !b->param[q]->name) continue;
          if (strcmp(b->param[q]->name, n) == 0)
            return moka_errorf("layers '%s' and '%s' share parameter '%s': shared parameters "
                               "are not supported yet",
                               net->layers[j]->name, net->layers[i]->name, n);
        }
      }
    }
  }
  return 0;
}

static void decide_backward(Net *net) {
  int nl = net->n_layers;
  bool *blob_need = calloc((size_t)net->n_blobs + 1, 1);
  bool *under_loss = calloc((size_t)net->n_blobs + 1, 1);
  bool *skip_backp = calloc((size_t)net->n_blobs + 1, 1);
  MOKA_CHECK(blob_need && under_loss && skip_backp);
  for (int i = 0; i < nl; i++) {
    Layer *l = net->layers[i];
    bool need = false;
    for (int j = 0; j < l->n_bottom; j++) {
      int id = -1;
      for (int q = 0; q < net->n_blobs; q++)
        if (net->blobs[q] == l->bottom[j]) id = q;
      bool nb = id >= 0 && blob_need[id];
      if (l->param->n_propagate_down > (size_t)j) nb = l->param->propagate_down[j] != 0;
      l->propagate_down[j] = nb;
      need |= nb;
    }
    for (int k = 0; k < l->n_params; k++) need |= l->lr_mult[k] != 0.0f;
    net->layer_need_backward[i] = need;
    if (need)
      for (int t = 0; t < l->n_top; t++)
        for (int q = 0; q < net->n_blobs; q++)
          if (net->blobs[q] == l->top[t]) blob_need[q] = true;
  }
  for (int i = nl - 1; i >= 0; i--) {
    Layer *l = net->layers[i];
    bool contributes = false, skip = true;
    for (int t = 0; t < l->n_top; t++) {
      int id = -1;
      for (int q = 0; q < net->n_blobs; q++)
        if (net->blobs[q] == l->top[t]) id = q;
      if (l->loss_weight[t] != 0.0f || (id >= 0 && under_loss[id])) contributes = true;
      if (id >= 0 && !skip_backp[id]) skip = false;
      if (contributes && !skip) break;
    }
    if (net->layer_need_backward[i] && skip) {
      net->layer_need_backward[i] = false;
      for (int j = 0; j < l->n_bottom; j++) l->propagate_down[j] = false;
    }
    if (!contributes) net->layer_need_backward[i] = false;
    for (int j = 0; j < l->n_bottom; j++) {
      int id = -1;
      for (int q = 0; q < net->n_blobs; q++)
        if (net->blobs[q] == l->bottom[j]) id = q;
      if (contributes) {
        if (id >= 0) under_loss[id] = true;
      } else {
        l->propagate_down[j] = false;
      }
      if (!l->propagate_down[j] && id >= 0) skip_backp[id] = true;
    }
  }
  if (net->param->force_backward) {
    for (int i = 0; i < nl; i++) {
      Layer *l = net->layers[i];
      net->layer_need_backward[i] = true;
      for (int j = 0; j < l->n_bottom; j++) l->propagate_down[j] = true;
    }
  }
  free(blob_need);
  free(under_loss);
  free(skip_backp);
}

Net *net_create(const Caffe__NetParameter *param_in, const NetOptions *o_in, const char *source) {
  NetOptions o;
  if (o_in)
    o = *o_in;
  else
    net_options_default(&o);
  if (!source) source = "net";
  Net *net = moka_calloc(1, sizeof *net);
  if (!net) return NULL;
  net->phase = o.phase;
  net->backend = o.backend;
  rng_seed(&net->rng, o.has_seed ? o.seed : rng_entropy_seed());
  net->param = (Caffe__NetParameter *)proto_clone(&param_in->base);
  if (!net->param) goto fail;
  net->name = moka_strdup(net->param->name ? net->param->name : "");
  if (net_param_upgrade(net->param, source) || filter_layers(net->param, &o, source) ||
      insert_splits(net->param, source))
    goto fail;
  Caffe__NetParameter *p = net->param;
  net->debug_info = p->debug_info;
  if (!o.quiet)
    LOG_INFO("Initializing net '%s' from %s (phase %s)", net->name, source,
             o.phase == MOKA_TRAIN ? "TRAIN" : "TEST");
  net->layers = moka_calloc(p->n_layer + 1, sizeof *net->layers);
  net->layer_need_backward = moka_calloc(p->n_layer + 1, sizeof *net->layer_need_backward);
  if (!net->layers || !net->layer_need_backward) goto fail;
  size_t param_total = 0;
  for (size_t i = 0; i < p->n_layer; i++) {
    Caffe__LayerParameter *lp = p->layer[i];
    const char *lname = lp->name ? lp->name : "";
    if (!lp->type || !*lp->type) {
      moka_errorf("%s: layer '%s' has no type", source, lname);
      goto fail;
    }
    for (int q = 0; q < net->n_layers; q++)
      if (strcmp(net->layers[q]->name, lname) == 0) {
        moka_errorf("%s: two layers are named '%s'", source, lname);
        goto fail;
      }
    Blob *bottoms[256], *tops[256];
    if (lp->n_bottom > 256 || lp->n_top > 256) {
      moka_errorf("%s: layer '%s' has too many bottoms or tops", source, lname);
      goto fail;
    }
    for (size_t j = 0; j < lp->n_bottom; j++) {
      bottoms[j] = net_blob(net, lp->bottom[j]);
      if (!bottoms[j]) {
        moka_errorf("%s: layer '%s': unknown bottom blob '%s'", source, lname, lp->bottom[j]);
        goto fail;
      }
    }
    for (size_t t = 0; t < lp->n_top; t++) {
      Blob *in_place = NULL;
      for (size_t j = 0; j < lp->n_bottom; j++)
        if (strcmp(lp->bottom[j], lp->top[t]) == 0) in_place = bottoms[j];
      if (in_place) {
        tops[t] = in_place;
        continue;
      }
      if (net_blob(net, lp->top[t])) {
        moka_errorf("%s: layer '%s': top blob '%s' is produced by more than one layer", source,
                    lname, lp->top[t]);
        goto fail;
      }
      tops[t] = add_blob(net, lp->top[t]);
      if (!tops[t]) goto fail;
    }
    if (strcmp(lp->type, "Python") == 0) {
      /* moka never executes or loads code named by a model or data file. */
      const Caffe__PythonParameter *pp = lp->python_param;
      moka_errorf("%s: layer '%s' has type Python (module '%s', class '%s'): moka never runs "
                  "code named by a model file, so Python layers are refused; replace the "
                  "layer with built-in ones",
                  source, lname, pp && pp->module ? pp->module : "",
                  pp && pp->layer ? pp->layer : "");
      goto fail;
    }
    if (!o.quiet) LOG_INFO("Creating Layer %s", lname);
    Layer *l = layer_create(lp, o.phase, &net->rng, bottoms, (int)lp->n_bottom, tops, (int)lp->n_top);
    if (!l) {
      moka_error_prefix("%s", source);
      goto fail;
    }
    for (int k = 0; k < l->n_params; k++) param_total += l->params[k]->count;
    if (param_total > (size_t)MOKA_MAX_NET_PARAMS) {
      moka_errorf("%s: layer '%s' (%s) brings the net's parameters to %zu values, over the "
                  "limit of %lld (8 GiB of float32)",
                  source, lname, lp->type, param_total, (long long)MOKA_MAX_NET_PARAMS);
      layer_free(l);
      goto fail;
    }
    if (l->n_top && l->bottom && !l->type->in_place_ok)
      for (int t = 0; t < l->n_top; t++)
        for (int j = 0; j < l->n_bottom; j++)
          if (l->top[t] == l->bottom[j]) {
            moka_errorf("%s: layer '%s' (%s) cannot compute in place (top '%s' = bottom)",
                        source, lname, lp->type, lp->top[t]);
            net->layers[net->n_layers++] = l;
            goto fail;
          }
    net->layers[net->n_layers++] = l;
    if (!o.quiet) {
      for (int t = 0; t < l->n_top; t++) {
        char sb[256];
        LOG_INFO("Top shape: %s", blob_shape_string(l->top[t], sb, sizeof sb));
      }
    }
  }
  if (check_param_sharing(net) || flatten_params(net)) goto fail;
  decide_backward(net);
  /* outputs: blobs that no layer reads */
  net->outputs = moka_calloc((size_t)net->n_blobs + 1, sizeof *net->outputs);
  if (!net->outputs) goto fail;
  for (int b = 0; b < net->n_blobs; b++) {
    bool used = false;
    for (int i = 0; i < net->n_layers && !used; i++)
      for (int j = 0; j < net->layers[i]->n_bottom; j++)
        if (net->layers[i]->bottom[j] == net->blobs[b]) {
          /* an in-place consumer that writes it again keeps it an output */
          bool rewrites = false;
          for (int t = 0; t < net->layers[i]->n_top; t++)
            if (net->layers[i]->top[t] == net->blobs[b]) rewrites = true;
          if (!rewrites) used = true;
        }
    if (!used) {
      net->outputs[net->n_outputs++] = net->blobs[b];
      if (!o.quiet) LOG_INFO("This network produces output %s", net->blobs[b]->name);
    }
  }
  /* Fused BN -> Scale (-> Eltwise) (-> ReLU) chains and shared Split tops
   * (fast backends only; src/net_fuse.h). Its one summary line is logged
   * even when quiet: `moka time` readers must know where a chain's time
   * shows. */
  if (net_fuse_plan(net, false)) goto fail;
  /* --precision=bf16 on the fast CPU backend: which activations are bf16 channels-last
   * (src/net_bf16.h; the CUDA backend decides in net_to_device). */
  if (net->backend == MOKA_BACKEND_CPU_FAST && net_bf16_plan(net)) goto fail;
  if (!o.quiet) LOG_INFO("Network initialization done.");
  return net;
fail:
  net_free(net);
  return NULL;
}

Net *net_create_from_file(const char *prototxt, const NetOptions *o) {
  ProtobufCMessage *m;
  if (prototxt_read_file(&caffe__net_parameter__descriptor, prototxt, &m)) return NULL;
  Net *net = net_create((Caffe__NetParameter *)m, o, prototxt);
  protobuf_c_message_free_unpacked(m, NULL);
  return net;
}

void net_free(Net *net) {
  if (!net) return;
#ifdef MOKA_WITH_CUDA
  net_cuda_free(net); /* the blobs' device memory and the context (layers free their own) */
#endif
  net_fuse_free(net);
  for (int i = 0; i < net->n_layers; i++) layer_free(net->layers[i]);
  free(net->layers);
  free(net->layer_need_backward);
  for (int i = 0; i < net->n_blobs; i++) blob_free(net->blobs[i]);
  free(net->blobs);
  free(net->params);
  free(net->param_layer);
  free(net->param_lr_mult);
  free(net->param_decay_mult);
  if (net->param_data) blob_memory_release(2 * (net->param_count + 1) * sizeof(float));
  moka_free_big(net->param_data, (net->param_count + 1) * sizeof(float));
  moka_free_big(net->param_diff, (net->param_count + 1) * sizeof(float));
  free(net->outputs);
  if (net->param) caffe__net_parameter__free_unpacked(net->param, NULL);
  free(net->name);
  free(net);
}

/* ---- running ----------------------------------------------------------------------- */

static double layer_loss(const Layer *l) {
  double loss = 0;
  for (int t = 0; t < l->n_top; t++) {
    if (l->loss_weight[t] == 0.0f) continue;
    double s = 0;
    for (size_t i = 0; i < l->top[t]->count; i++) s += l->top[t]->data[i];
    loss += (double)l->loss_weight[t] * s;
  }
  return loss;
}

/* A fused chain (src/net_fuse.h) on the net's backend. */
static int fused_forward(Net *net, const FusedChain *c) {
  int rc = -1;
  if (net->backend == MOKA_BACKEND_CPU_FAST) rc = net_fuse_cpu_forward(net, c);
#if defined(MOKA_WITH_CUDA) && MOKA_FUSE_CUDA_READY
  if (net->backend == MOKA_BACKEND_CUDA) rc = net_fuse_cuda_forward(net, c);
#endif
  return rc ? moka_error_prefix("fused chain at layer '%s' (forward)", net->layers[c->bn]->name)
            : 0;
}

static int fused_backward(Net *net, const FusedChain *c) {
  int rc = -1;
  if (net->backend == MOKA_BACKEND_CPU_FAST) rc = net_fuse_cpu_backward(net, c);
#if defined(MOKA_WITH_CUDA) && MOKA_FUSE_CUDA_READY
  if (net->backend == MOKA_BACKEND_CUDA) rc = net_fuse_cuda_backward(net, c);
#endif
  return rc ? moka_error_prefix("fused chain at layer '%s' (backward)", net->layers[c->bn]->name)
            : 0;
}

int net_forward_layer(Net *net, int i) {
  if (net->fuse) {
    FusedChain *c = NULL;
    FuseRole role = net_fuse_forward_role(net, i, &c);
    if (role == FUSE_SKIP) return 0; /* runs at the chain's fwd_at */
    if (role == FUSE_RUN) return fused_forward(net, c);
    net_fuse_split_share(net, i);
  }
#ifdef MOKA_WITH_CUDA
  if (net->backend == MOKA_BACKEND_CUDA) return net_cuda_forward_layer(net, i);
#endif
  if (net->backend == MOKA_BACKEND_CPU_FAST && net_bf16_layer_check(net->layers[i]))
    return -1;
  if (net->fuse && net_fuse_sub_enter(net, i, true)) return -1;
  const int rc = layer_forward(net->layers[i], net->backend);
  if (net->fuse) net_fuse_sub_leave(net, i);
  return rc;
}

int net_backward_layer(Net *net, int i) {
  Layer *l = net->layers[i];
  if (!net->layer_need_backward[i]) return 0;
  if (net->fuse) {
    FusedChain *c = NULL;
    FuseRole role = net_fuse_backward_role(net, i, &c);
    if (role == FUSE_SKIP) return 0; /* runs at the chain's bwd_at */
    if (role == FUSE_RUN) return fused_backward(net, c);
  }
#ifdef MOKA_WITH_CUDA
  if (net->backend == MOKA_BACKEND_CUDA) return net_cuda_backward_layer(net, i);
#endif
  for (int t = 0; t < l->n_top; t++)
    if (l->loss_weight[t] != 0.0f)
      for (size_t k = 0; k < l->top[t]->count; k++) l->top[t]->diff[k] = l->loss_weight[t];
  if (net->backend == MOKA_BACKEND_CPU_FAST && net_bf16_layer_check(l)) return -1;
  if (net->fuse && net_fuse_sub_enter(net, i, false)) return -1;
  const int rc = layer_backward(l, net->backend);
  if (net->fuse) net_fuse_sub_leave(net, i);
  return rc;
}

int net_forward_to(Net *net, int end, float *loss) {
  double total = 0;
  if (net->fuse) net->fuse->forward_end = end; /* chains running past `end` run unfused */
  int rc = 0;
  for (int i = 0; i <= end && i < net->n_layers; i++) {
    if (net_forward_layer(net, i)) {
      rc = -1;
      break;
    }
    total += layer_loss(net->layers[i]);
    if (net->debug_info) net_debug_forward(net, i);
  }
  if (net->fuse) net->fuse->forward_end = net->n_layers - 1;
  if (loss && !rc) *loss = (float)total;
  return rc;
}

int net_forward(Net *net, float *loss) { return net_forward_to(net, net->n_layers - 1, loss); }

int net_backward(Net *net) {
  for (int i = net->n_layers - 1; i >= 0; i--) {
    if (net_backward_layer(net, i)) return -1;
    if (net->debug_info && net->layer_need_backward[i]) net_debug_backward(net, i);
  }
  if (net->debug_info) net_debug_backward_summary(net);
  return 0;
}

void net_freeze_weights(Net *net) {
  for (int i = 0; i < net->n_layers; i++) net->layers[i]->weights_frozen = true;
}

void net_clear_param_diffs(Net *net) {
  if (net->param_count) memset(net->param_diff, 0, net->param_count * sizeof(float));
#ifdef MOKA_WITH_CUDA
  /* An asynchronous memset: a failure here (a broken context) is reported by
   * the next launch. */
  if (net->cuda) (void)net_cuda_clear_param_diffs(net);
#endif
}

int net_reshape(Net *net) {
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (l->type->reshape && l->type->reshape(l))
      return moka_error_prefix("reshaping layer '%s'", l->name);
  }
  /* The chains' geometry may have changed: plan again, before the device memory, whose plan
   * (and MOKA_BF16_ACT's choice of formats) reads the chains. */
  if (net->fuse && net_fuse_plan(net, true)) return -1;
  if (net->backend == MOKA_BACKEND_CPU_FAST && net_bf16_plan(net)) return -1;
#ifdef MOKA_WITH_CUDA
  if (net->cuda && net_cuda_reshape(net)) return -1; /* grow the device blobs */
#endif
  return 0;
}

/* ---- weights ----------------------------------------------------------------------- */

/* Caffe's Blob::ShapeEquals(BlobProto): legacy 4-D protos compare from the end. */
static bool shape_equals(const Blob *b, const Caffe__BlobProto *bp) {
  if (bp->has_num || bp->has_channels || bp->has_height || bp->has_width) {
    if (b->num_axes > 4) return false;
    int legacy[4];
    for (int k = 0; k < 4; k++) {
      int idx = b->num_axes - 4 + k; /* -4..-1 from the end */
      legacy[k] = idx < 0 ? 1 : b->shape[idx];
    }
    return legacy[0] == bp->num && legacy[1] == bp->channels && legacy[2] == bp->height &&
           legacy[3] == bp->width;
  }
  int n, shape[MOKA_MAX_AXES];
  if (blobproto_shape(bp, &n, shape)) return false;
  if (n != b->num_axes) return false;
  for (int i = 0; i < n; i++)
    if (shape[i] != b->shape[i]) return false;
  return true;
}

int net_copy_from(Net *net, const Caffe__NetParameter *w, const char *source) {
  /* V1 caffemodels: look at the `layers` field directly (name + blobs). */
  size_t n = w->n_layer ? w->n_layer : w->n_layers;
  for (size_t i = 0; i < n; i++) {
    const char *name;
    size_t nb;
    Caffe__BlobProto **blobs;
    const char *tname;
    if (w->n_layer) {
      name = w->layer[i]->name ? w->layer[i]->name : "";
      nb = w->layer[i]->n_blobs;
      blobs = w->layer[i]->blobs;
      tname = w->layer[i]->type ? w->layer[i]->type : "";
    } else {
      name = w->layers[i]->name ? w->layers[i]->name : "";
      nb = w->layers[i]->n_blobs;
      blobs = w->layers[i]->blobs;
      tname = "V1";
    }
    Layer *l = net_layer(net, name);
    if (!l) {
      LOG_INFO("Ignoring source layer %s", name);
      continue;
    }
    LOG_INFO("Copying source layer %s Type:%s #blobs=%zu", name, tname, nb);
    if ((int)nb != l->n_params)
      return moka_errorf("%s: incompatible number of blobs for layer '%s': the weights have %zu, "
                         "the net's %s layer has %d",
                         source, name, nb, l->type->name, l->n_params);
    for (size_t k = 0; k < nb; k++) {
      Blob *b = l->params[k];
      if (!shape_equals(b, blobs[k])) {
        int sn, ss[MOKA_MAX_AXES];
        char src[256] = "?", dst[256];
        if (blobproto_shape(blobs[k], &sn, ss) == 0) {
          Blob tmp = {0};
          tmp.num_axes = sn;
          size_t c = 1;
          for (int q = 0; q < sn; q++) tmp.shape[q] = ss[q], c *= (size_t)ss[q];
          tmp.count = c;
          blob_shape_string(&tmp, src, sizeof src);
        }
        return moka_errorf("%s: cannot copy param %zu weights from layer '%s'; shape mismatch. "
                           "Source param shape is %s; target param shape is %s. To learn this "
                           "layer's parameters from scratch rather than copying from a saved "
                           "net, rename the layer.",
                           source, k, name, src, blob_shape_string(b, dst, sizeof dst));
      }
      char what[512];
      snprintf(what, sizeof what, "%s: layer '%s' blob %zu", source, name, k);
      if (blobproto_to_blob_data(blobs[k], b, what)) return -1;
    }
  }
  return 0;
}

int net_copy_from_file(Net *net, const char *paths) {
  char *list = moka_strdup(paths);
  if (!list) return -1;
  int rc = 0;
  char *save = NULL;
  for (char *p = strtok_r(list, ",", &save); p && !rc; p = strtok_r(NULL, ",", &save)) {
    ProtobufCMessage *m;
    if (proto_read_binary(&caffe__net_parameter__descriptor, p, &m)) {
      rc = -1;
      break;
    }
    rc = net_copy_from(net, (Caffe__NetParameter *)m, p);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  free(list);
  return rc;
}

Caffe__NetParameter *net_to_proto(const Net *net, bool write_diff) {
  Caffe__NetParameter *np = moka_malloc(sizeof *np);
  if (!np) return NULL;
  caffe__net_parameter__init(np);
  np->name = moka_strdup(net->name);
  np->layer = moka_calloc((size_t)net->n_layers + 1, sizeof *np->layer);
  if (!np->name || !np->layer) goto fail;
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    Caffe__LayerParameter *lp = (Caffe__LayerParameter *)proto_clone(&l->param->base);
    if (!lp) goto fail;
    np->layer[np->n_layer++] = lp;
    /* Caffe writes the phase the layer ran in, and the lr_mult 0 ParamSpecs
     * that BatchNorm adds to itself. */
    lp->has_phase = 1;
    lp->phase = net->phase == MOKA_TRAIN ? CAFFE__PHASE__TRAIN : CAFFE__PHASE__TEST;
    if (l->type->params_frozen && (int)lp->n_param < l->n_params) {
      Caffe__ParamSpec **ps = moka_realloc(lp->param, (size_t)l->n_params * sizeof *ps);
      if (!ps) goto fail;
      lp->param = ps;
      while ((int)lp->n_param < l->n_params) {
        Caffe__ParamSpec *s = moka_malloc(sizeof *s);
        if (!s) goto fail;
        caffe__param_spec__init(s);
        s->has_lr_mult = 1;
        s->lr_mult = 0.0f;
        lp->param[lp->n_param++] = s;
      }
    }
    for (size_t k = 0; k < lp->n_blobs; k++) caffe__blob_proto__free_unpacked(lp->blobs[k], NULL);
    free(lp->blobs);
    lp->blobs = NULL;
    lp->n_blobs = 0;
    if (l->n_params) {
      lp->blobs = moka_calloc((size_t)l->n_params, sizeof *lp->blobs);
      if (!lp->blobs) goto fail;
      for (int k = 0; k < l->n_params; k++) {
        Caffe__BlobProto *bp = moka_malloc(sizeof *bp);
        if (!bp) goto fail;
        if (blobproto_from_blob(bp, l->params[k], write_diff)) {
          free(bp);
          goto fail;
        }
        lp->blobs[lp->n_blobs++] = bp;
      }
    }
  }
  return np;
fail:
  caffe__net_parameter__free_unpacked(np, NULL);
  return NULL;
}

int net_save_caffemodel(const Net *net, const char *path) {
  Caffe__NetParameter *np = net_to_proto(net, false);
  if (!np) return moka_error_prefix("saving '%s'", path);
  int rc = proto_write_binary(&np->base, path);
  caffe__net_parameter__free_unpacked(np, NULL);
  return rc;
}
