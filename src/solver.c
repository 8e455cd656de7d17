/* solver.c — Caffe's Solver, set-up: the solver parameter (reading,
 * upgrading, checking), building the train and test nets, the CUDA set-up,
 * solver_create / solver_free. The update rules are in solver_update.c, the
 * loop and testing in solver_loop.c, snapshots in solver_snapshot.c (see
 * solver_internal.h; solver.h describes the whole solver).
 *
 * Randomness: Caffe has one global stream, seeded with random_seed when the
 * solver starts, shared by the train net and the test nets; moka gives each
 * net its own (Net.rng). The train net is seeded before it is built; each
 * test net is built from the same seed, then the train net's stream is
 * advanced by the number of draws the test net took and the test net's
 * layers are pointed at the train net's stream (share_stream). The draws then
 * follow Caffe's sequence, unless a filler draws gaussians (moka uses
 * Box-Muller, Caffe boost's ziggurat: other numbers of draws).
 */
#include "solver.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "net_bf16.h"
#include "prototxt.h"
#include "solver_internal.h"
#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "net_cuda.h"
#endif

/* ---- small helpers ------------------------------------------------------------------- */

static ProtobufCMessage *message_clone(const ProtobufCMessage *m) {
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = moka_malloc(len ? len : 1);
  if (!buf) return NULL;
  protobuf_c_message_pack(m, buf);
  ProtobufCMessage *c = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
  free(buf);
  if (!c) moka_errorf("internal error: cannot copy a %s", m->descriptor->name);
  return c;
}

bool solver_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static bool is_directory(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void solver_dir_of(const char *path, char *buf, size_t n) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(buf, n, ".");
  } else if (slash == path) {
    snprintf(buf, n, "/");
  } else {
    snprintf(buf, n, "%.*s", (int)(slash - path), path);
  }
}

/* `path` as given when it exists (or is absolute, or there is no base), else
 * base/path when that exists; else `path` again (the error then names it). */
static const char *resolve_path(const char *path, const char *base, char *buf, size_t n) {
  if (!path || path[0] == '/' || !base || !*base || solver_file_exists(path)) return path;
  snprintf(buf, n, "%s/%s", base, path);
  return solver_file_exists(buf) ? buf : path;
}

/* Replace a string field of a protobuf-c message (frees the old one unless
 * it is the descriptor's default). */
static int set_string(char **field, const char *default_value, const char *v) {
  char *c = moka_strdup(v);
  if (!c) return -1;
  if (*field && *field != default_value) free(*field);
  *field = c;
  return 0;
}

/* ---- the solver parameter ------------------------------------------------------------ */

static const char *const kKindNames[] = {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta",
                                         "Adam"};

const char *solver_kind_name(SolverKind k) {
  return (int)k >= 0 && (size_t)k < MOKA_ARRAY_LEN(kKindNames) ? kKindNames[k] : "?";
}

int solver_kind_from_name(const char *name, SolverKind *out) {
  for (size_t i = 0; i < MOKA_ARRAY_LEN(kKindNames); i++)
    if (name && !strcmp(name, kKindNames[i])) {
      *out = (SolverKind)i;
      return 0;
    }
  return moka_errorf("Unknown solver type: '%s' (known types: AdaDelta, AdaGrad, Adam, Nesterov, "
                     "RMSProp, SGD)",
                     name ? name : "");
}

int solver_param_upgrade(Caffe__SolverParameter *p, const char *source) {
  if (!p->has_solver_type) return 0;
  bool type_given = p->type && p->type != caffe__solver_parameter__type__default_value;
  if (type_given)
    return moka_errorf("%s: Failed to upgrade solver: old solver_type field (enum) and new type "
                       "field (string) cannot be both specified in solver proto text.",
                       source);
  const char *t;
  switch (p->solver_type) {
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__SGD: t = "SGD"; break;
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__NESTEROV: t = "Nesterov"; break;
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__ADAGRAD: t = "AdaGrad"; break;
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__RMSPROP: t = "RMSProp"; break;
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__ADADELTA: t = "AdaDelta"; break;
    case CAFFE__SOLVER_PARAMETER__SOLVER_TYPE__ADAM: t = "Adam"; break;
    default:
      return moka_errorf("%s: Failed to upgrade solver: unknown solver_type %d", source,
                         (int)p->solver_type);
  }
  LOG_INFO("Attempting to upgrade input file specified using deprecated 'solver_type' field "
           "(enum)': %s",
           source);
  if (set_string(&p->type, caffe__solver_parameter__type__default_value, t)) return -1;
  p->has_solver_type = 0;
  LOG_INFO("Successfully upgraded file specified using deprecated 'solver_type' field (enum) to "
           "'type' field (string).");
  return 0;
}

int solver_param_set_weights(Caffe__SolverParameter *p, const char *weights) {
  for (size_t i = 0; i < p->n_weights; i++) free(p->weights[i]);
  free(p->weights);
  p->weights = NULL;
  p->n_weights = 0;
  if (!weights || !*weights) return 0;
  p->weights = moka_calloc(1, sizeof *p->weights);
  if (!p->weights || !(p->weights[0] = moka_strdup(weights))) return -1;
  p->n_weights = 1;
  return 0;
}

int solver_param_read(const char *path, Caffe__SolverParameter **out) {
  ProtobufCMessage *m;
  *out = NULL;
  if (prototxt_read_file(&caffe__solver_parameter__descriptor, path, &m)) return -1;
  Caffe__SolverParameter *p = (Caffe__SolverParameter *)m;
  if (solver_param_upgrade(p, path)) goto fail;
  /* Caffe's UpgradeSnapshotPrefixProperty */
  if (!p->snapshot_prefix) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t keep = dot && dot != base ? (size_t)(dot - path) : strlen(path);
    char *pre = moka_malloc(keep + 1);
    if (!pre) goto fail;
    memcpy(pre, path, keep);
    pre[keep] = 0;
    p->snapshot_prefix = pre;
    LOG_INFO("snapshot_prefix was not specified and is set to %s", pre);
  } else if (*p->snapshot_prefix && is_directory(p->snapshot_prefix)) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    int stem = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
    size_t pl = strlen(p->snapshot_prefix);
    bool slash = pl && p->snapshot_prefix[pl - 1] == '/';
    char *pre = moka_malloc(pl + (size_t)stem + 2);
    if (!pre) goto fail;
    sprintf(pre, "%s%s%.*s", p->snapshot_prefix, slash ? "" : "/", stem, base);
    free(p->snapshot_prefix);
    p->snapshot_prefix = pre;
    LOG_INFO("snapshot_prefix is a directory and is set to %s", pre);
  }
  *out = p;
  return 0;
fail:
  protobuf_c_message_free_unpacked(m, NULL);
  return -1;
}

/* Checks Caffe makes when it builds a solver (CHECK_* in Solver::Init, the
 * solver constructors, GetLearningRate), made at creation so that a bad
 * solver file fails before any training. */
static int check_param(const Caffe__SolverParameter *p, SolverKind kind, const char *src) {
  if (p->average_loss < 1)
    return moka_errorf("%s: average_loss must be >= 1, got %d", src, p->average_loss);
  if (p->iter_size < 1) return moka_errorf("%s: iter_size must be >= 1, got %d", src, p->iter_size);
  if (p->display < 0) return moka_errorf("%s: display must be >= 0, got %d", src, p->display);
  if (p->snapshot < 0) return moka_errorf("%s: snapshot must be >= 0, got %d", src, p->snapshot);
  if (p->test_interval < 0)
    return moka_errorf("%s: test_interval must be >= 0, got %d", src, p->test_interval);
  const char *rt = p->regularization_type ? p->regularization_type : "L2";
  if (strcmp(rt, "L2") && strcmp(rt, "L1"))
    return moka_errorf("%s: Unknown regularization type: '%s' (use \"L2\" or \"L1\")", src, rt);
  if (p->has_snapshot_format && p->snapshot_format == CAFFE__SOLVER_PARAMETER__SNAPSHOT_FORMAT__HDF5)
    return moka_errorf("%s: snapshot_format: HDF5 is not supported by moka; use BINARYPROTO (the "
                       "default): .caffemodel + .solverstate files that Caffe reads too",
                       src);
  const char *pol = p->lr_policy ? p->lr_policy : "";
  static const char *const kPolicies[] = {"fixed", "step", "exp", "inv", "multistep", "poly",
                                          "sigmoid"};
  bool known = false;
  for (size_t i = 0; i < MOKA_ARRAY_LEN(kPolicies); i++) known |= !strcmp(pol, kPolicies[i]);
  if (!known)
    return moka_errorf("%s: Unknown learning rate policy: '%s' (known: fixed, step, exp, inv, "
                       "multistep, poly, sigmoid)",
                       src, pol);
  if ((!strcmp(pol, "step") || !strcmp(pol, "sigmoid")) && p->stepsize <= 0)
    return moka_errorf("%s: lr_policy \"%s\" needs stepsize > 0, got %d", src, pol, p->stepsize);
  if (strcmp(pol, "fixed") && strcmp(pol, "poly") && p->gamma < 0)
    return moka_errorf("%s: lr_policy \"%s\" needs gamma >= 0, got %g", src, pol, (double)p->gamma);
  if ((kind == SOLVER_ADAGRAD || kind == SOLVER_RMSPROP) && p->momentum != 0.0f)
    return moka_errorf("%s: Momentum cannot be used with %s (momentum: %g)", src,
                       solver_kind_name(kind), (double)p->momentum);
  if (kind == SOLVER_RMSPROP && !(p->rms_decay >= 0.0f && p->rms_decay < 1.0f))
    return moka_errorf("%s: rms_decay should lie in [0, 1), got %g", src, (double)p->rms_decay);
  return 0;
}

/* ---- building the nets --------------------------------------------------------------- */

typedef struct StateBuild {
  Phase phase;
  int level;
  int n_stages;
  const char *stages[256];
} StateBuild;

/* NetState::MergeFrom: set fields override, stages append. */
static int merge_state(StateBuild *st, const Caffe__NetState *s, const char *src) {
  if (!s) return 0;
  if (s->has_phase) st->phase = s->phase == CAFFE__PHASE__TRAIN ? MOKA_TRAIN : MOKA_TEST;
  if (s->has_level) st->level = s->level;
  for (size_t i = 0; i < s->n_stage; i++) {
    if (st->n_stages >= (int)MOKA_ARRAY_LEN(st->stages))
      return moka_errorf("%s: too many net stages (at most 256)", src);
    st->stages[st->n_stages++] = s->stage[i];
  }
  return 0;
}

static Net *build_net(const Solver *s, const Caffe__NetParameter *np, Phase phase,
                      const Caffe__NetState *override, const char *src) {
  StateBuild st = {.phase = phase};
  if (merge_state(&st, np->state, src) || merge_state(&st, override, src)) return NULL;
  NetOptions o;
  net_options_default(&o);
  o.phase = st.phase;
  o.level = st.level;
  o.n_stages = st.n_stages;
  o.stages = st.stages;
  o.backend = s->opt.backend;
  o.quiet = s->opt.quiet_nets;
  if (s->param->random_seed >= 0) {
    o.has_seed = true;
    o.seed = (uint32_t)s->param->random_seed;
  }
  return net_create(np, &o, src);
}

static Caffe__NetParameter *read_net_file(const Solver *s, const char *file) {
  char buf[4096];
  const char *path = resolve_path(file, s->opt.base_dir, buf, sizeof buf);
  ProtobufCMessage *m;
  if (prototxt_read_file(&caffe__net_parameter__descriptor, path, &m)) return NULL;
  return (Caffe__NetParameter *)m;
}

/* Caffe's LoadNetWeights: a comma-separated list, each copied by layer name. */
static int load_weights(Net *net, const char *list) {
  char *copy = moka_strdup(list);
  if (!copy) return -1;
  int rc = 0;
  char *save = NULL;
  for (char *w = strtok_r(copy, ",", &save); w && !rc; w = strtok_r(NULL, ",", &save)) {
    while (*w == ' ' || *w == '\t') w++;
    size_t n = strlen(w);
    while (n && (w[n - 1] == ' ' || w[n - 1] == '\t')) w[--n] = 0;
    if (!*w) continue;
    LOG_INFO("Finetuning from %s", w);
    rc = net_copy_from_file(net, w);
  }
  free(copy);
  return rc;
}

static int init_train_net(Solver *s, const char *src) {
  const Caffe__SolverParameter *p = s->param;
  int n = (p->net != NULL) + (p->net_param != NULL) + (p->train_net != NULL) +
          (p->train_net_param != NULL);
  if (n < 1)
    return moka_errorf("%s: SolverParameter must specify a train net using one of these fields: "
                       "net, net_param, train_net, train_net_param",
                       src);
  if (n > 1)
    return moka_errorf("%s: SolverParameter must not contain more than one of these fields "
                       "specifying a train_net: net, net_param, train_net, train_net_param",
                       src);
  Caffe__NetParameter *np = NULL;
  const Caffe__NetParameter *use;
  const char *what;
  if (p->train_net_param) {
    LOG_INFO("Creating training net specified in train_net_param.");
    use = p->train_net_param;
    what = "train_net_param";
  } else if (p->net_param) {
    LOG_INFO("Creating training net specified in net_param.");
    use = p->net_param;
    what = "net_param";
  } else {
    const char *file = p->train_net ? p->train_net : p->net;
    LOG_INFO("Creating training net from %s file: %s", p->train_net ? "train_net" : "net", file);
    np = read_net_file(s, file);
    if (!np) return moka_error_prefix("%s: reading the train net", src);
    use = np;
    what = file;
  }
  s->net = build_net(s, use, MOKA_TRAIN, p->train_state, what);
  if (np) caffe__net_parameter__free_unpacked(np, NULL);
  if (!s->net) return -1;
  for (size_t w = 0; w < p->n_weights; w++)
    if (load_weights(s->net, p->weights[w])) return -1;
  return 0;
}

/* Number of 32-bit draws `used` has taken since it was seeded with `seed`
 * (mt19937 refills its 624 words at once: compare the word arrays refill by
 * refill, then the position in the last one). -1 if not found. */
static long long draws_since_seed(const Rng *used, uint32_t seed) {
  Rng r;
  rng_seed(&r, seed);
  if (!memcmp(r.mt, used->mt, sizeof r.mt)) return used->idx >= 624 ? 0 : -1;
  for (long long refills = 1; refills < (1LL << 26); refills++) {
    r.idx = 624;
    (void)rng_u32(&r); /* refills the words */
    if (!memcmp(r.mt, used->mt, sizeof r.mt)) return 624 * (refills - 1) + used->idx;
  }
  return -1;
}

/* Caffe has one random stream: the test nets, built after the train net,
 * draw from it at setup (fillers, Data layers), and their layers draw from it
 * when they run. moka's nets each have their own; so advance the train net's
 * stream by what the test net drew while it was built, and point the test
 * net's layers at the train net's stream. */
static void share_stream(Solver *s, Net *test) {
  if (s->param->random_seed < 0) return; /* nothing to reproduce */
  long long k = draws_since_seed(&test->rng, (uint32_t)s->param->random_seed);
  if (k < 0) {
    LOG_WARN("cannot follow the random draws of a test net; Dropout masks may differ from Caffe's");
  } else {
    for (long long i = 0; i < k; i++) (void)rng_u32(&s->net->rng);
  }
  for (int i = 0; i < test->n_layers; i++) test->layers[i]->rng = &s->net->rng;
}

static int init_test_nets(Solver *s, const char *src) {
  const Caffe__SolverParameter *p = s->param;
  const int n_generic = (p->net_param != NULL) + (p->net != NULL);
  if (n_generic > 1)
    return moka_errorf("%s: Both net_param and net_file may not be specified.", src);
  const int n_params = (int)p->n_test_net_param, n_files = (int)p->n_test_net;
  const int n_specific = n_params + n_files;
  const int n_iter = (int)p->n_test_iter;
  if (n_generic ? n_iter < n_specific : n_iter != n_specific)
    return moka_errorf("%s: test_iter must be specified for each test network (%d test_iter "
                       "for %d test net(s))",
                       src, n_iter, n_specific);
  const int n_instances = n_generic ? n_iter : n_specific;
  if (p->n_test_state && (int)p->n_test_state != n_instances)
    return moka_errorf("%s: test_state must be unspecified or specified once per test net (%zu "
                       "test_state for %d test nets)",
                       src, p->n_test_state, n_instances);
  if (n_instances && p->test_interval <= 0)
    return moka_errorf("%s: the solver has %d test net(s) but test_interval is %d; set "
                       "test_interval > 0",
                       src, n_instances, p->test_interval);
  for (int i = 0; i < n_iter; i++)
    if (p->test_iter[i] < 0)
      return moka_errorf("%s: test_iter must be >= 0, got %d", src, p->test_iter[i]);
  s->test_nets = moka_calloc((size_t)n_instances + 1, sizeof *s->test_nets);
  if (!s->test_nets) return -1;
  for (int i = 0; i < n_instances; i++) {
    const Caffe__NetParameter *use;
    Caffe__NetParameter *np = NULL;
    char what[4200];
    if (i < n_params) {
      use = p->test_net_param[i];
      snprintf(what, sizeof what, "test_net_param");
    } else if (i < n_specific) {
      np = read_net_file(s, p->test_net[i - n_params]);
      snprintf(what, sizeof what, "test_net file: %s", p->test_net[i - n_params]);
      use = np;
    } else if (p->net_param) {
      use = p->net_param;
      snprintf(what, sizeof what, "net_param");
    } else {
      np = read_net_file(s, p->net);
      snprintf(what, sizeof what, "net file: %s", p->net);
      use = np;
    }
    if (!use) return moka_error_prefix("%s: reading test net #%d", src, i);
    LOG_INFO("Creating test net (#%d) specified by %s", i, what);
    s->test_nets[i] = build_net(s, use, MOKA_TEST, p->n_test_state ? p->test_state[i] : NULL, what);
    if (np) caffe__net_parameter__free_unpacked(np, NULL);
    if (!s->test_nets[i]) return -1;
    s->n_test_nets = i + 1;
    share_stream(s, s->test_nets[i]);
    for (size_t w = 0; w < p->n_weights; w++)
      if (load_weights(s->test_nets[i], p->weights[w])) return -1;
  }
  return 0;
}

/* ---- the CUDA backend (see solver.h) ------------------------------------------------- */

#ifdef MOKA_WITH_CUDA
/* The solvers whose update has a CUDA kernel; clip_gradients has none (it
 * needs the norm of every gradient first), so it sends any solver to the
 * host path. */
static bool has_update_kernel(const Solver *s) {
  return (s->kind == SOLVER_SGD || s->kind == SOLVER_NESTEROV) && s->param->clip_gradients < 0;
}
#endif

/* Move the train net and every test net to the device (after the weights
 * were copied into them on the host) and choose the update path, loudly. */
static int nets_to_device(Solver *s, const char *src) {
#ifdef MOKA_WITH_CUDA
  const int dev = s->opt.device;
  if (net_to_device(s->net, dev)) return moka_error_prefix("%s: the train net", src);
  for (int i = 0; i < s->n_test_nets; i++)
    if (net_to_device(s->test_nets[i], dev)) return moka_error_prefix("%s: test net #%d", src, i);
  s->update_on_device = has_update_kernel(s);
  if (s->update_on_device) {
    LOG_INFO("%s update on CUDA device %d (kernels/%s.cu, momentum history on the device)",
             solver_kind_name(s->kind), dev, s->kind == SOLVER_SGD ? "sgd" : "nesterov");
  } else {
    LOG_INFO("%s update%s ON THE HOST: no CUDA kernel for it yet. Every iteration copies the "
             "parameters and gradients from device %d to the host, runs the CPU update there "
             "(history kept on the host) and copies the parameters and update values back",
             solver_kind_name(s->kind),
             s->param->clip_gradients >= 0 ? " with clip_gradients" : "", dev);
  }
  return 0;
#else
  return moka_errorf("%s: the CUDA backend was asked for, but this moka was built without CUDA "
                     "(rebuild with nvcc installed, or train on the CPU)",
                     src);
#endif
}

int solver_sync_to_host(Solver *s) {
#ifdef MOKA_WITH_CUDA
  Net *net = s->net;
  if (!net->cuda) return 0;
  if (net_params_to_host(net) || net_param_diffs_to_host(net)) return -1;
  if (s->update_on_device && net_history_to_host(net, s->history[0])) return -1;
#else
  (void)s;
#endif
  return 0;
}

int solver_sync_to_device(Solver *s) {
#ifdef MOKA_WITH_CUDA
  Net *net = s->net;
  if (!net->cuda) return 0;
  if (net_params_to_device(net)) return -1;
  if (s->update_on_device && net_history_to_device(net, s->history[0])) return -1;
#else
  (void)s;
#endif
  return 0;
}


Solver *solver_create(const Caffe__SolverParameter *param, const SolverOptions *o,
                      const char *source) {
  if (!source) source = "solver";
  Solver *s = moka_calloc(1, sizeof *s);
  if (!s) return NULL;
  if (o) s->opt = *o;
  s->param = (Caffe__SolverParameter *)message_clone(&param->base);
  if (!s->param) goto fail;
  Caffe__SolverParameter *p = s->param;
  if (solver_param_upgrade(p, source)) goto fail;
  if (solver_kind_from_name(p->type, &s->kind)) {
    moka_error_prefix("%s", source);
    goto fail;
  }
  if (check_param(p, s->kind, source)) goto fail;
  char *text = prototxt_format(&p->base);
  LOG_INFO("Initializing solver from parameters: \n%s", text ? text : "");
  free(text);
  if (init_train_net(s, source) || init_test_nets(s, source)) goto fail;
  LOG_INFO("Solver scaffolding done.");
  s->debug_info = p->debug_info || s->net->debug_info;
  if (s->debug_info && p->display)
    LOG_INFO("debug_info: the train net logs per-layer mean absolute data and gradient values "
             "every %d iterations (on display iterations, as Caffe)",
             p->display);
  else if (s->debug_info)
    LOG_WARN("debug_info is set but display is 0: as in Caffe, debug_info lines are logged only "
             "on display iterations, so none will be; set display: 1 to see them");
  s->n_history_slots = (s->kind == SOLVER_ADADELTA || s->kind == SOLVER_ADAM) ? 2 : 1;
  size_t n = s->net->param_count + 1;
  for (int k = 0; k < s->n_history_slots; k++)
    if (!(s->history[k] = moka_calloc(n, sizeof(float)))) goto fail;
  s->update = moka_calloc(n, sizeof(float));
  s->temp = moka_calloc(n, sizeof(float));
  s->losses = moka_calloc((size_t)p->average_loss, sizeof(float));
  if (!s->update || !s->temp || !s->losses) goto fail;
  if (s->opt.backend == MOKA_BACKEND_CUDA && nets_to_device(s, source)) goto fail;
  if (s->debug_info && s->net->cuda && net_bf16_count(s->net)) {
    moka_errorf("%s: debug_info runs the BatchNorm chains layer by layer, and MOKA_BF16_ACT=1 "
                "needs them fused: turn one of the two off",
                source);
    goto fail;
  }
  if (s->debug_info && s->update_on_device)
    LOG_INFO("debug_info: no [Update] lines while the update runs on the device");
  return s;
fail:
  solver_free(s);
  return NULL;
}

Solver *solver_create_from_file(const char *path, const SolverOptions *o) {
  Caffe__SolverParameter *p;
  if (solver_param_read(path, &p)) return NULL;
  SolverOptions opt;
  if (o)
    opt = *o;
  else
    memset(&opt, 0, sizeof opt);
  char dir[4096];
  solver_dir_of(path, dir, sizeof dir);
  if (!opt.base_dir) opt.base_dir = dir;
  Solver *s = solver_create(p, &opt, path);
  if (s) s->opt.base_dir = NULL; /* `dir` dies here; net files are read already */
  caffe__solver_parameter__free_unpacked(p, NULL);
  return s;
}

void solver_free(Solver *s) {
  if (!s) return;
#ifdef MOKA_WITH_CUDA
  if (s->dev_sums) moka_dev_free(s->dev_sums);
#endif
  free(s->host_sums);
  free(s->last_snapshot);
  net_free(s->net);
  for (int i = 0; i < s->n_test_nets; i++) net_free(s->test_nets[i]);
  free(s->test_nets);
  free(s->history[0]);
  free(s->history[1]);
  free(s->update);
  free(s->temp);
  free(s->losses);
  if (s->param) caffe__solver_parameter__free_unpacked(s->param, NULL);
  free(s);
}
