/* moka train — Caffe's `caffe train` (tools/caffe.cpp, train()):
 *
 *   moka train --solver=solver.prototxt [--weights=a.caffemodel[,b...]]
 *              [--snapshot=PREFIX_iter_N.solverstate] [--gpu=N]
 *              [--level=N] [--stage=a,b] [--sigint_effect=stop|snapshot|none]
 *              [--sighup_effect=stop|snapshot|none] [--debug_info]
 *
 * As in Caffe: --weights and --snapshot exclude each other; --weights
 * replaces the solver's `weights`; --level/--stage go into train_state.
 * The device, as Caffe's train(): --gpu=N trains on CUDA device N whatever
 * the solver's solver_mode says (--gpu overrides it); without --gpu, a solver
 * file that explicitly says `solver_mode: GPU` trains on device `device_id`
 * (0 when unset) — and without a usable GPU that is an error, never a silent
 * CPU run. A solver file that does not set solver_mode trains on the CPU
 * (Caffe's rule, although caffe.proto's default is GPU). One device only:
 * --gpu=all or a list is refused (multi-GPU training is not supported yet).
 *
 * Signals: SIGINT and SIGHUP only set a flag; the solver checks it between
 * iterations (and between test batches) and stops, snapshots, or ignores it
 * (Caffe's SignalHandler). Defaults: SIGINT stops (the final snapshot is
 * still written, snapshot_after_train), SIGHUP snapshots and goes on.
 *
 * --debug_info sets the solver's debug_info: per-layer mean absolute data and
 * gradient values on display iterations (src/net_check.h). A non-finite loss
 * or gradient stops training with an error naming the iteration, the layer
 * and the last good snapshot (solver.h, "Faults").
 *
 * Relative net files in the solver are looked up from the working directory
 * first (Caffe), then beside the solver file.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "net_cuda.h"
#include "solver.h"
#include "util.h"

static volatile sig_atomic_t g_got_sigint, g_got_sighup;

static void on_signal(int sig) {
  if (sig == SIGINT) g_got_sigint = 1;
  if (sig == SIGHUP) g_got_sighup = 1;
}

typedef struct SignalEffects {
  SolverAction sigint, sighup;
} SignalEffects;

/* Caffe's SignalHandler::CheckForSignals: SIGHUP first, each flag cleared
 * when read. */
static SolverAction check_signals(void *user) {
  const SignalEffects *e = user;
  if (g_got_sighup) {
    g_got_sighup = 0;
    return e->sighup;
  }
  if (g_got_sigint) {
    g_got_sigint = 0;
    return e->sigint;
  }
  return SOLVER_ACTION_NONE;
}

static int parse_effect(const char *flag, const char *v, SolverAction *out) {
  if (!strcmp(v, "stop")) *out = SOLVER_ACTION_STOP;
  else if (!strcmp(v, "snapshot")) *out = SOLVER_ACTION_SNAPSHOT;
  else if (!strcmp(v, "none")) *out = SOLVER_ACTION_NONE;
  else
    return moka_errorf("Invalid signal effect \"%s\" was specified for --%s (use stop, snapshot "
                       "or none)",
                       v, flag);
  return 0;
}

/* Append --level and --stage to the solver's train_state. */
static int set_train_state(Caffe__SolverParameter *p, int level, const char *stages) {
  if (!p->train_state) {
    p->train_state = moka_malloc(sizeof *p->train_state);
    if (!p->train_state) return -1;
    caffe__net_state__init(p->train_state);
  }
  Caffe__NetState *st = p->train_state;
  st->has_level = 1;
  st->level = level;
  if (!stages || !*stages) return 0;
  char *list = moka_strdup(stages);
  if (!list) return -1;
  char *save = NULL;
  for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    char **ns = moka_realloc(st->stage, (st->n_stage + 1) * sizeof *ns);
    if (!ns) {
      free(list);
      return -1;
    }
    st->stage = ns;
    if (!(st->stage[st->n_stage] = moka_strdup(t))) {
      free(list);
      return -1;
    }
    st->n_stage++;
  }
  free(list);
  return 0;
}

int cmd_train(int argc, char **argv) {
  /* Only outputs are read: activations share device memory (src/net_memplan.h). */
  net_cuda_plan_memory_by_default(true);
  const char *solver_file = NULL, *weights = NULL, *snapshot = NULL, *gpu = NULL, *stage = NULL;
  const char *precision = NULL;
  const char *sigint_effect = "stop", *sighup_effect = "snapshot";
  int level = 0;
  bool debug_info = false;
  Flag flags[] = {
      {"solver", FLAG_STRING, &solver_file, "the solver definition (.prototxt, required)"},
      {"weights", FLAG_STRING, &weights,
       "pretrained weights to fine-tune from, comma-separated .caffemodel files (not with --snapshot)"},
      {"snapshot", FLAG_STRING, &snapshot, "resume training from this .solverstate (not with --weights)"},
      {"gpu", FLAG_STRING, &gpu,
       "CUDA device id to train on, overriding solver_mode (default: the solver's solver_mode and "
       "device_id; CPU when unset)"},
      {"precision", FLAG_STRING, &precision, CLI_PRECISION_HELP},
      {"level", FLAG_INT, &level, "net level for the train net's NetState (default 0)"},
      {"stage", FLAG_STRING, &stage, "net stages for the train net's NetState, comma-separated"},
      {"sigint_effect", FLAG_STRING, &sigint_effect, "on SIGINT: stop (default), snapshot or none"},
      {"sighup_effect", FLAG_STRING, &sighup_effect, "on SIGHUP: snapshot (default), stop or none"},
      {"debug_info", FLAG_BOOL, &debug_info,
       "log per-layer data and gradient values on display iterations (the solver's debug_info)"},
  };
  const char *pos[1];
  int n_pos;
  int rc = flags_parse("train", "", "Train or fine-tune a model, as `caffe train`.", flags,
                       MOKA_ARRAY_LEN(flags), argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (!solver_file || !*solver_file)
    return moka_errorf("moka train: Need a solver definition to train (--solver=solver.prototxt)");
  if (snapshot && *snapshot && weights && *weights)
    return moka_errorf("moka train: Give a snapshot to resume training or weights to finetune "
                       "but not both (--snapshot and --weights)");
  SignalEffects effects;
  if (parse_effect("sigint_effect", sigint_effect, &effects.sigint) ||
      parse_effect("sighup_effect", sighup_effect, &effects.sighup))
    return -1;

  Caffe__SolverParameter *p;
  if (solver_param_read(solver_file, &p)) return -1;
  Solver *s = NULL;
  rc = -1;
  if (set_train_state(p, level, stage)) goto done;
  if (debug_info) {
    p->has_debug_info = 1;
    p->debug_info = 1;
  }

  /* the device: --gpu, else an explicit solver_mode: GPU (device_id) */
  if (gpu && (!strcmp(gpu, "all") || strchr(gpu, ','))) {
    moka_errorf("--gpu=%s: multi-GPU is not supported yet; use --gpu=0", gpu);
    goto done;
  }
  char dev[32];
  bool from_solver = false;
  if ((!gpu || !*gpu) && p->has_solver_mode &&
      p->solver_mode == CAFFE__SOLVER_PARAMETER__SOLVER_MODE__GPU) {
    snprintf(dev, sizeof dev, "%d", p->has_device_id ? p->device_id : 0);
    gpu = dev;
    from_solver = true;
  }
  Backend be;
  if (cli_backend(gpu, &be)) {
    if (from_solver)
      moka_error_prefix("%s sets solver_mode: GPU (device %s); set `solver_mode: CPU` in the "
                        "solver file to train on the CPU",
                        solver_file, gpu);
    goto done;
  }
  if (cli_precision(precision, be)) goto done;
  int device = 0;
  if (be != MOKA_BACKEND_CUDA) {
    LOG_INFO("Use CPU.");
  } else {
    if (cli_gpu_device(gpu, &device)) goto done;
    LOG_INFO("Using GPUs %d", device);
  }

  if (snapshot && *snapshot) {
    if (solver_param_set_weights(p, NULL)) goto done;
  } else if (weights && *weights) {
    if (solver_param_set_weights(p, weights)) goto done;
  }

  char dir[4096];
  const char *slash = strrchr(solver_file, '/');
  if (slash)
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - solver_file), solver_file);
  else
    snprintf(dir, sizeof dir, ".");
  SolverOptions o = {.backend = be,
                     .device = device,
                     .base_dir = dir,
                     .action = check_signals,
                     .user = &effects};
  s = solver_create(p, &o, solver_file);
  if (!s) goto done;

  struct sigaction sa, old_int, old_hup;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGHUP, &sa, &old_hup);

  if (snapshot && *snapshot) {
    LOG_INFO("Resuming from %s", snapshot);
    rc = solver_restore(s, snapshot);
  } else {
    rc = 0;
  }
  if (!rc) {
    LOG_INFO("Starting Optimization");
    rc = solver_solve(s, NULL);
  }
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGHUP, &old_hup, NULL);
  if (!rc) LOG_INFO("Optimization Done.");

done:
  solver_free(s);
  caffe__solver_parameter__free_unpacked(p, NULL);
  return rc ? -1 : 0;
}
