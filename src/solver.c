/* solver.c — Caffe's Solver, SGDSolver and the adaptive solvers, CPU
 * reference (see solver.h for the loop). Every numerical step mirrors Caffe
 * 1.0's float32 code (src/caffe/solver.cpp, src/caffe/solvers/ and
 * Caffe's BLAS wrappers), in the same order and the same precision:
 *
 *   caffe_cpu_axpby(n, a, x, b, y)  = sscal(b, y) then saxpy(a, x, y):
 *                                     y = b*y; y = y + a*x   (two float roundings)
 *   caffe_axpy(n, a, x, y)          = y = y + a*x
 *   caffe_powx(x, e)                = powf(x, e)
 *
 * GCC in ISO C mode (-std=c11) does not contract a*b+c into an FMA, so each
 * expression below rounds exactly where Caffe's reference BLAS rounds.
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

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/data_layer.h"
#include "net_check.h"
#include "proto_io.h"
#include "prototxt.h"
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

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static bool is_directory(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The folder part of `path` ("." when none) into buf. */
static void dir_of(const char *path, char *buf, size_t n) {
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
  if (!path || path[0] == '/' || !base || !*base || file_exists(path)) return path;
  snprintf(buf, n, "%s/%s", base, path);
  return file_exists(buf) ? buf : path;
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
  dir_of(path, dir, sizeof dir);
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

/* "the last good snapshot is X" / "no snapshot yet", for error messages. */
static void last_snapshot_text(const Solver *s, char *buf, size_t n) {
  if (!s->last_snapshot)
    snprintf(buf, n, "no snapshot yet");
  else if (file_exists(s->last_snapshot))
    snprintf(buf, n, "the last good snapshot is %s", s->last_snapshot);
  else
    snprintf(buf, n, "the last snapshot, %s, is no longer on disk", s->last_snapshot);
}

/* The loss of a forward pass is not finite: name the layer, stop. */
static int loss_fault(Solver *s, float loss, int micro_batch) {
  NetFault f;
  char where[2048], snap[4400], mb[64] = "";
  if (net_locate_forward_fault(s->net, &f))
    snprintf(where, sizeof where, "(the layer could not be located: %s)", moka_error());
  else
    net_fault_describe(s->net, &f, where, sizeof where);
  last_snapshot_text(s, snap, sizeof snap);
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
  size_t at = 0;
  const int p = net_first_nonfinite_param(net, true, &at); /* host copies current */
  char first[1024] = "", v[32];
  if (p >= 0) {
    const Layer *l = net->layers[net->param_layer[p]];
    int k = 0;
    while (k < l->n_params && l->params[k] != net->params[p]) k++;
    snprintf(first, sizeof first, " (first in net order: param blob %d of layer '%s' holds %s at "
             "element %zu)", k, l->name, moka_float_text(net->params[p]->diff[at], v), at);
  }
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
  last_snapshot_text(s, snap, sizeof snap);
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

static void snapshot_name(const Solver *s, const char *ext, char *buf, size_t n) {
  snprintf(buf, n, "%s_iter_%d%s", s->param->snapshot_prefix ? s->param->snapshot_prefix : "",
           s->iter, ext);
}

/* Caffe's CheckSnapshotWritePermissions (made when solving starts rather than
 * when the solver is built, and also for the final snapshot). */
static int check_snapshot_prefix(const Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (!p->snapshot && !p->snapshot_after_train) return 0;
  if (!p->snapshot_prefix || !*p->snapshot_prefix)
    return moka_errorf("In solver params, snapshot is specified but snapshot_prefix is not "
                       "(set snapshot_prefix, or snapshot: 0 and snapshot_after_train: false)");
  char probe[4200];
  snapshot_name(s, ".tempfile", probe, sizeof probe);
  FILE *f = fopen(probe, "wb");
  if (!f)
    return moka_errorf("Cannot write to snapshot prefix '%s' (%s).  Make sure that the directory "
                       "exists and is writeable.",
                       p->snapshot_prefix, strerror(errno));
  fclose(f);
  remove(probe);
  return 0;
}

int solver_solve(Solver *s, const char *resume_file) {
  const Caffe__SolverParameter *p = s->param;
  LOG_INFO("Solving %s", s->net->name);
  LOG_INFO("Learning Rate Policy: %s", p->lr_policy ? p->lr_policy : "");
  s->requested_early_exit = false;
  if (check_snapshot_prefix(s)) return -1;
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

/* ---- snapshots ----------------------------------------------------------------------- */

/* Remove PREFIX_iter_N.caffemodel.tmp.PID / .solverstate.tmp.PID files
 * (moka_write_file_atomic's temporary names) whose process PID no longer
 * exists: what a run killed while writing a snapshot leaves. Files of a live
 * process (or one we may not signal) are kept. */
static void remove_stale_temps(const char *prefix) {
  char dir[4096];
  const char *slash = strrchr(prefix, '/'), *base = slash ? slash + 1 : prefix;
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else if (slash == prefix)
    snprintf(dir, sizeof dir, "/");
  else
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - prefix), prefix);
  DIR *d = opendir(dir);
  if (!d) return;
  const size_t bl = strlen(base);
  int removed = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *name = e->d_name;
    if (strncmp(name, base, bl) || strncmp(name + bl, "_iter_", 6)) continue;
    const char *t = strstr(name + bl, ".tmp.");
    if (!t) continue;
    const size_t stem = (size_t)(t - name);
    const bool model = stem >= 11 && !memcmp(t - 11, ".caffemodel", 11);
    const bool state = stem >= 12 && !memcmp(t - 12, ".solverstate", 12);
    if (!model && !state) continue;
    char *end;
    errno = 0;
    const long pid = strtol(t + 5, &end, 10);
    if (*end || errno || pid <= 0 || pid > INT_MAX || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours */
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) == 0) removed++;
  }
  closedir(d);
  if (removed)
    LOG_INFO("Removed %d temporary snapshot file(s) left by killed runs (%s_iter_*.tmp.<pid>)",
             removed, prefix);
}

int solver_snapshot(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (p->snapshot_format == CAFFE__SOLVER_PARAMETER__SNAPSHOT_FORMAT__HDF5)
    return moka_errorf("snapshot_format: HDF5 is not supported; use BINARYPROTO");
  if (!p->snapshot_prefix || !*p->snapshot_prefix)
    return moka_errorf("cannot snapshot: the solver has no snapshot_prefix");
  char model[4200], state_file[4200];
  snapshot_name(s, ".caffemodel", model, sizeof model);
  snapshot_name(s, ".solverstate", state_file, sizeof state_file);
  /* CUDA: parameters, gradients and history down first (explicit copies) */
  if (solver_sync_to_host(s)) return moka_error_prefix("snapshot '%s'", model);
  char prev[4400], prev_ok[4400];
  last_snapshot_text(s, prev, sizeof prev);
  if (s->last_snapshot && file_exists(s->last_snapshot))
    snprintf(prev_ok, sizeof prev_ok, "the previous snapshot %s is intact", s->last_snapshot);
  else
    snprintf(prev_ok, sizeof prev_ok, "%s", prev);
  /* weights that are not finite are never written as a snapshot */
  if (!moka_all_finite(s->net->param_data, s->net->param_count)) {
    size_t at = 0;
    const int bad = net_first_nonfinite_param(s->net, false, &at);
    const Layer *l = bad >= 0 ? s->net->layers[s->net->param_layer[bad]] : NULL;
    int k = 0;
    while (l && k < l->n_params && l->params[k] != s->net->params[bad]) k++;
    char v[32];
    return moka_errorf("iteration %d: not writing snapshot %s: param blob %d of layer '%s' holds "
                       "%s at element %zu (the weights are not finite: training has diverged); %s",
                       s->iter, model, k, l ? l->name : "?",
                       moka_float_text(l ? s->net->params[bad]->data[at] : NAN, v), at, prev);
  }
  /* 1. the weights (atomically: temporary file, fsync, rename) */
  LOG_INFO("Snapshotting to binary proto file %s", model);
  Caffe__NetParameter *np = net_to_proto(s->net, p->snapshot_diff);
  if (!np) return moka_error_prefix("snapshot '%s'", model);
  int rc = proto_write_binary(&np->base, model);
  caffe__net_parameter__free_unpacked(np, NULL);
  if (rc)
    return moka_error_prefix("iteration %d: writing snapshot file %s failed, training stopped "
                             "(%s)",
                             s->iter, model, prev_ok);
  /* 2. the solver state, which names the weights file */
  LOG_INFO("Snapshotting solver state to binary proto file %s", state_file);
  const Net *net = s->net;
  Caffe__SolverState st;
  caffe__solver_state__init(&st);
  st.has_iter = 1;
  st.iter = s->iter;
  st.learned_net = model;
  st.has_current_step = 1;
  st.current_step = s->current_step;
  const int nh = s->n_history_slots * net->n_params;
  Caffe__BlobProto *hist = moka_calloc((size_t)nh + 1, sizeof *hist);
  Caffe__BlobProto **ptrs = moka_calloc((size_t)nh + 1, sizeof *ptrs);
  rc = hist && ptrs ? 0 : -1;
  int made = 0;
  for (int slot = 0; slot < s->n_history_slots && !rc; slot++) {
    size_t off = 0;
    for (int i = 0; i < net->n_params && !rc; i++) {
      const Blob *b = net->params[i];
      Blob view = {0}; /* the history blob: the parameter's shape, the history's values */
      view.num_axes = b->num_axes;
      memcpy(view.shape, b->shape, sizeof view.shape);
      view.count = b->count;
      view.data = s->history[slot] + off;
      rc = blobproto_from_blob(&hist[made], &view, 0);
      if (!rc) ptrs[made] = &hist[made], made++;
      off += b->count;
    }
  }
  if (!rc) {
    st.n_history = (size_t)made;
    st.history = ptrs;
    rc = proto_write_binary(&st.base, state_file);
  }
  for (int i = 0; i < made; i++) blobproto_clear(&hist[i]);
  free(hist);
  free(ptrs);
  if (rc)
    return moka_error_prefix("iteration %d: writing snapshot file %s failed, training stopped "
                             "(its weights %s were written; %s)",
                             s->iter, state_file, model, prev_ok);
  char *done = moka_strdup(state_file);
  if (done) {
    free(s->last_snapshot);
    s->last_snapshot = done;
  }
  remove_stale_temps(p->snapshot_prefix);
  return 0;
}

int solver_restore(Solver *s, const char *path) {
  size_t len = strlen(path);
  if (len >= 3 && !strcmp(path + len - 3, ".h5"))
    return moka_errorf("'%s': HDF5 solver states are not supported; resume from a .solverstate "
                       "(BINARYPROTO) file",
                       path);
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__solver_state__descriptor, path, &m)) return -1;
  Caffe__SolverState *st = (Caffe__SolverState *)m;
  Net *net = s->net;
  /* CUDA: the host copies current first (what the state leaves unset, e.g.
   * the weights when it names no learned_net, keeps the device's values) */
  int rc = solver_sync_to_host(s);
  if (rc) goto done;
  const int want = s->n_history_slots * net->n_params;
  if ((int)st->n_history != want) {
    rc = moka_errorf("'%s': Incorrect length of history blobs: the solverstate has %zu, a %s "
                     "solver on this net needs %d (%d parameter blobs%s)",
                     path, st->n_history, solver_kind_name(s->kind), want, net->n_params,
                     s->n_history_slots > 1 ? " x 2" : "");
    goto done;
  }
  if (st->learned_net && *st->learned_net) {
    /* as written (relative to the working directory, as Caffe), else beside
     * the solverstate (its folder + the path, then + the file name) */
    char dir[4096], a[8300], b[8300];
    dir_of(path, dir, sizeof dir);
    const char *model = st->learned_net;
    if (!file_exists(model) && model[0] != '/') {
      const char *base = strrchr(model, '/');
      snprintf(a, sizeof a, "%s/%s", dir, model);
      snprintf(b, sizeof b, "%s/%s", dir, base ? base + 1 : model);
      if (file_exists(a))
        model = a;
      else if (file_exists(b))
        model = b;
    }
    ProtobufCMessage *w;
    if (proto_read_binary(&caffe__net_parameter__descriptor, model, &w)) {
      rc = moka_error_prefix("'%s' names learned_net '%s'", path, st->learned_net);
      goto done;
    }
    rc = net_copy_from(net, (Caffe__NetParameter *)w, model);
    protobuf_c_message_free_unpacked(w, NULL);
    if (rc) goto done;
  }
  LOG_INFO("SGDSolver: restoring history");
  for (int slot = 0, h = 0; slot < s->n_history_slots; slot++) {
    size_t off = 0;
    for (int i = 0; i < net->n_params; i++, h++) {
      const Blob *b = net->params[i];
      Blob view = {0};
      view.num_axes = b->num_axes;
      memcpy(view.shape, b->shape, sizeof view.shape);
      view.count = b->count;
      view.data = s->history[slot] + off;
      int na, shape[MOKA_MAX_AXES];
      if (blobproto_shape(st->history[h], &na, shape)) {
        rc = moka_error_prefix("'%s': history blob %d", path, h);
        goto done;
      }
      bool same = na == b->num_axes;
      for (int a = 0; same && a < na; a++) same = shape[a] == b->shape[a];
      if (!same) {
        char sb[256];
        rc = moka_errorf("'%s': history blob %d does not have the shape of parameter %d of layer "
                         "'%s' (%s)",
                         path, h, i, net->layers[net->param_layer[i]]->name,
                         blob_shape_string(b, sb, sizeof sb));
        goto done;
      }
      char what[4200];
      snprintf(what, sizeof what, "'%s': history blob %d", path, h);
      if (blobproto_to_blob_data(st->history[h], &view, what)) {
        rc = -1;
        goto done;
      }
      off += b->count;
    }
  }
  s->iter = st->iter;
  s->current_step = st->current_step;
  s->iterations_last = s->iter;
  char *resumed = moka_strdup(path);
  if (resumed) {
    free(s->last_snapshot);
    s->last_snapshot = resumed;
  }
  /* CUDA: the restored parameters and history up (explicit copies) */
  rc = solver_sync_to_device(s);
  if (!rc) rc = solver_seek_data(s);
done:
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Position every Data / ImageData layer where an uninterrupted run would be
 * at iteration s->iter: the train net has read iter x iter_size batches; each
 * test net has run test_iter batches per test done before this iteration
 * (tests run at iterations t < iter with t % test_interval == 0, the one at 0
 * only with test_initialization). Caffe restarts its Data layers at the first
 * record instead (CAFFE_NOTES.md, "Resuming"); moka continues exactly. */
static int seek_net(Net *net, uint64_t batches, const char *what) {
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (strcmp(l->type->name, "Data") && strcmp(l->type->name, "ImageData")) continue;
    uint64_t batch = (uint64_t)l->top[0]->shape[0];
    if (data_layer_seek(l, batches * batch))
      return moka_error_prefix("resuming the %s's data layer '%s' at batch %llu", what, l->name,
                               (unsigned long long)batches);
    LOG_INFO("%s data layer %s continues at record %llu", what, l->name,
             (unsigned long long)(batches * batch));
  }
  return 0;
}

int solver_seek_data(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (seek_net(s->net, (uint64_t)s->iter * (uint64_t)p->iter_size, "train net")) return -1;
  uint64_t tests = 0;
  if (p->test_interval > 0)
    for (int t = 0; t < s->iter; t += p->test_interval)
      if (t > 0 || p->test_initialization) tests++;
  for (int k = 0; k < s->n_test_nets; k++) {
    uint64_t per = k < (int)p->n_test_iter ? (uint64_t)p->test_iter[k] : 0;
    if (seek_net(s->test_nets[k], tests * per, "test net")) return -1;
  }
  return 0;
}
