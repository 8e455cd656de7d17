/* trainer.c — the training stage of `moka finetune` (see trainer.h): Caffe's
 * solver driven one epoch at a time, exact per-image validation, the best
 * snapshot, interruption and resuming, the progress line. */
#include "finetune/trainer.h"

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
#include "solver.h"
#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "net_cuda.h"
#endif

/* Blobs the trainer reads (the classifier's output, the labels) live on the
 * device with the CUDA backend: copy them to the host explicitly (the weights
 * it saves come down with solver_sync_to_host). Nothing on the CPU. */
static int blob_host(Net *net, Blob *b) {
#ifdef MOKA_WITH_CUDA
  if (net->cuda) return blob_to_host(net->cuda, b);
#endif
  (void)net, (void)b;
  return 0;
}


/* ---- signals ------------------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig) {
  static const char msg[] = "\nmoka finetune: stopping after this iteration and writing a snapshot "
                            "(press Ctrl-C again to quit at once)\n";
  g_stop = 1;
  ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)w;
  signal(sig, SIG_DFL); /* a second signal ends the process */
}

static SolverAction check_stop(void *user) {
  (void)user;
  return g_stop ? SOLVER_ACTION_STOP : SOLVER_ACTION_NONE;
}

/* ---- progress -------------------------------------------------------------------------- */

void ft_format_duration(char *buf, size_t n, double s) {
  if (!(s >= 0) || s > 1e9) {
    snprintf(buf, n, "?");
    return;
  }
  long t = (long)(s + 0.5);
  if (t < 60)
    snprintf(buf, n, "%lds", t);
  else if (t < 3600)
    snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
  else if (t < 86400)
    snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else
    snprintf(buf, n, "%ldd%02ldh", t / 86400, (t % 86400) / 3600);
}

void ft_progress_format(char *buf, size_t n, const FtProgress *p) {
  char eta[32], speed[32], loss[32];
  ft_format_duration(eta, sizeof eta, p->eta_s);
  if (p->img_per_s > 0)
    snprintf(speed, sizeof speed, "%.1f img/s", p->img_per_s);
  else
    snprintf(speed, sizeof speed, "-- img/s");
  if (isfinite(p->loss))
    snprintf(loss, sizeof loss, "%.4f", p->loss);
  else
    snprintf(loss, sizeof loss, "--");
  snprintf(buf, n, "epoch %d/%d  iter %d/%d  %s  loss %s  lr %g  ETA %s%s%s", p->epoch, p->epochs,
           p->iter, p->max_iter, speed, loss, p->lr, p->eta_s > 0 || p->iter ? eta : "?",
           p->note ? "  " : "", p->note ? p->note : "");
}

/* ---- snapshots ------------------------------------------------------------------------- */

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void split_prefix(const char *prefix, char *dir, size_t n, const char **base) {
  const char *slash = strrchr(prefix, '/');
  if (slash) {
    snprintf(dir, n, "%.*s", (int)(slash - prefix), prefix);
    if (!dir[0]) snprintf(dir, n, "/");
    *base = slash + 1;
  } else {
    snprintf(dir, n, ".");
    *base = prefix;
  }
}

/* N of "BASE_iter_N.EXT", or -1. */
static int snapshot_iter(const char *name, const char *base, const char *ext) {
  size_t bl = strlen(base);
  if (strncmp(name, base, bl) || strncmp(name + bl, "_iter_", 6)) return -1;
  const char *p = name + bl + 6;
  char *end;
  errno = 0;
  long v = strtol(p, &end, 10);
  if (end == p || errno || v < 0 || v > INT_MAX || strcmp(end, ext)) return -1;
  return (int)v;
}

int ft_find_snapshot(const char *prefix, char *path, size_t n, int *iter) {
  char dir[4096];
  const char *base;
  split_prefix(prefix, dir, sizeof dir, &base);
  DIR *d = opendir(dir);
  if (!d) return 0;
  int best = -1;
  struct dirent *e;
  while ((e = readdir(d))) {
    int it = snapshot_iter(e->d_name, base, ".solverstate");
    if (it <= best) continue;
    char model[4400];
    snprintf(model, sizeof model, "%s/%s_iter_%d.caffemodel", dir, base, it);
    if (file_exists(model)) best = it;
  }
  closedir(d);
  if (best < 0) return 0;
  snprintf(path, n, "%s/%s_iter_%d.solverstate", dir, base, best);
  *iter = best;
  return 1;
}

/* Keep the newest `keep` snapshots of `prefix`; remove older ones (the
 * .solverstate first, so that no state ever names a missing model) and
 * temporary files left by a killed run. */
static void prune_snapshots(const char *prefix, int keep) {
  char dir[4096];
  const char *base;
  split_prefix(prefix, dir, sizeof dir, &base);
  DIR *d = opendir(dir);
  if (!d) return;
  int iters[4096], n = 0;
  struct dirent *e;
  size_t bl = strlen(base);
  while ((e = readdir(d))) {
    int it = snapshot_iter(e->d_name, base, ".solverstate");
    if (it >= 0 && n < (int)MOKA_ARRAY_LEN(iters)) iters[n++] = it;
    if (!strncmp(e->d_name, base, bl) && strstr(e->d_name, ".tmp.")) {
      /* PATH.tmp.<pid> of an atomic write that never finished */
      const char *pid = strstr(e->d_name, ".tmp.") + 5;
      if (atoi(pid) != (int)getpid() && kill(atoi(pid), 0) != 0) {
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        remove(p);
      }
    }
  }
  closedir(d);
  /* sort descending */
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && iters[j - 1] < iters[j]; j--) {
      int t = iters[j];
      iters[j] = iters[j - 1];
      iters[j - 1] = t;
    }
  for (int i = keep; i < n; i++) {
    char p[4400];
    snprintf(p, sizeof p, "%s/%s_iter_%d.solverstate", dir, base, iters[i]);
    remove(p);
    snprintf(p, sizeof p, "%s/%s_iter_%d.caffemodel", dir, base, iters[i]);
    remove(p);
  }
}

/* ---- the run --------------------------------------------------------------------------- */

typedef struct Ctx {
  const FtTrainConfig *c;
  FtHistory *h;
  Solver *s;
  Blob *logits, *label, *loss; /* of the train net */
  int max_iter;
  double t_last;               /* time of the last iteration start (0: none to time) */
  double sec_per_iter;         /* smoothed */
  int n_timed;
  double t_eval;               /* seconds of the last validation (0: none yet) */
  double last_draw;
  int drawn;                   /* a live line is on the terminal */
} Ctx;

static float batch_accuracy(const Blob *logits, const Blob *label) {
  const int B = logits->shape[0], K = (int)(logits->count / (size_t)B);
  int right = 0;
  for (int n = 0; n < B; n++) {
    const float *z = logits->data + (size_t)n * K;
    int best = 0;
    for (int k = 1; k < K; k++)
      if (z[k] > z[best]) best = k;
    right += best == (int)label->data[n];
  }
  return B ? (float)right / (float)B : 0.0f;
}

/* Record iteration `iter` from what the train net's last forward left in
 * its blobs (the forward of that iteration). */
static int record_iter(Ctx *x, int iter) {
  if (x->h->n_iters != iter) return 0;
  if (blob_host(x->s->net, x->logits) || blob_host(x->s->net, x->label)) return -1;
  const float loss = x->loss->data[0];
  if (!isfinite(loss))
    return moka_errorf("the training loss is %g at iteration %d: training diverged. Start again "
                       "(another --out) with a smaller --lr (now %g) or --classifier_lr_mult",
                       (double)loss, iter, (double)x->s->param->base_lr);
  return ft_history_add_iter(x->h, iter, loss, batch_accuracy(x->logits, x->label));
}

/* The rate of the last update, without moving the solver's multistep state. */
static double current_lr(const Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (p->lr_policy && !strcmp(p->lr_policy, "multistep"))
    return (double)p->base_lr * pow((double)p->gamma, s->current_step);
  Solver tmp = *s;
  float r = solver_learning_rate(&tmp);
  return isnan(r) ? 0 : r;
}

static void clear_line(Ctx *x) {
  if (x->c->tty && x->drawn) {
    fputs("\r\033[K", stderr);
    fflush(stderr);
    x->drawn = 0;
  }
}

static void draw(Ctx *x, int iter, const char *note, bool force) {
  if (!x->c->tty) return;
  double now = moka_now();
  if (!force && now - x->last_draw < 0.2) return;
  x->last_draw = now;
  const FtTrainConfig *c = x->c;
  FtProgress p = {0};
  p.epochs = c->epochs;
  p.epoch = iter / c->iters_per_epoch + 1;
  if (p.epoch > c->epochs) p.epoch = c->epochs;
  p.iter = iter;
  p.max_iter = x->max_iter;
  p.img_per_s = x->sec_per_iter > 0 ? c->batch / x->sec_per_iter : 0;
  p.loss = x->h->n_iters ? x->h->loss[x->h->n_iters - 1] : NAN;
  p.lr = current_lr(x->s);
  if (x->sec_per_iter > 0) {
    const int evals_left = c->epochs - x->h->n_epochs;
    double t_eval = x->t_eval > 0 ? x->t_eval
                                  : x->sec_per_iter / 3.0 * c->n_val / (double)c->batch;
    p.eta_s = (x->max_iter - iter) * x->sec_per_iter + evals_left * t_eval;
  } else {
    p.eta_s = -1;
  }
  p.note = note;
  char line[256];
  ft_progress_format(line, sizeof line, &p);
  fprintf(stderr, "\r%s\033[K", line);
  fflush(stderr);
  x->drawn = 1;
}

static int on_forward(Solver *s, int iter, int micro_batch, void *user) {
  Ctx *x = user;
  if (micro_batch != 0) return 0;
  if (iter > 0 && record_iter(x, iter - 1)) return -1;
  const double now = moka_now();
  if (x->t_last > 0) {
    const double dt = now - x->t_last;
    /* the first timed iteration carries warm-up costs: weight it less */
    x->sec_per_iter = x->n_timed == 0 ? dt : 0.9 * x->sec_per_iter + 0.1 * dt;
    x->n_timed++;
  }
  x->t_last = now;
  (void)s;
  draw(x, iter, NULL, false);
  return 0;
}

static Layer *find_data_layer(Net *net) {
  for (int i = 0; i < net->n_layers; i++)
    if (!strcmp(net->layers[i]->type->name, "Data")) return net->layers[i];
  return NULL;
}

/* Validate on exactly the n_val validation images. Returns 0, 1 when
 * interrupted, -1 on error. */
static int evaluate(Ctx *x, FtEpochStats *e, int *confusion) {
  const FtTrainConfig *c = x->c;
  Solver *s = x->s;
  const double t0 = moka_now();
  if (s->n_test_nets < 1) return moka_errorf("%s: the solver has no test net", c->solver_file);
  Net *tn = s->test_nets[0];
  Blob *logits = net_blob(tn, c->logits), *label = net_blob(tn, c->label);
  if (!logits || !label)
    return moka_errorf("%s: the test net has no blob '%s' or '%s'", c->solver_file, c->logits,
                       c->label);
  Layer *dl = find_data_layer(tn);
  if (!dl) return moka_errorf("%s: the test net has no Data layer", c->solver_file);
  if (solver_share_trained_layers(tn, s->net) || data_layer_seek(dl, 0)) return -1;
  LOG_INFO("Iteration %d, Testing net (#0)", s->iter);
  const int K = c->n_classes;
  memset(confusion, 0, sizeof *confusion * (size_t)K * K);
  double loss_sum = 0;
  int seen = 0, top5 = 0;
  int batches = 0;
  while (seen < c->n_val) {
    if (g_stop) return 1;
    char note[64];
    const int B0 = logits->num_axes ? logits->shape[0] : 0;
    snprintf(note, sizeof note, "validating %d/%d", batches + 1,
             B0 > 0 ? (c->n_val + B0 - 1) / B0 : 0);
    draw(x, s->iter, note, false);
    float l;
    if (net_forward(tn, &l)) return moka_error_prefix("validation batch %d", batches);
    batches++;
    if (blob_host(tn, logits) || blob_host(tn, label)) return -1;
    const int B = logits->shape[0], D = (int)(logits->count / (size_t)B);
    if (D != K)
      return moka_errorf("the classifier '%s' has %d outputs, but there are %d classes", c->logits,
                         D, K);
    for (int n = 0; n < B && seen < c->n_val; n++, seen++) {
      const float *z = logits->data + (size_t)n * K;
      const int y = (int)label->data[n];
      if (y < 0 || y >= K)
        return moka_errorf("validation record %d has label %d, but there are %d classes (labels "
                           "0..%d): the LMDB does not match labels.txt",
                           seen, y, K, K - 1);
      int best = 0, above = 0;
      double zmax = z[0];
      for (int k = 1; k < K; k++) {
        if (z[k] > z[best]) best = k;
        if (z[k] > zmax) zmax = z[k];
      }
      for (int k = 0; k < K; k++) above += z[k] > z[y];
      double se = 0;
      for (int k = 0; k < K; k++) se += exp((double)z[k] - zmax);
      loss_sum += -((double)z[y] - zmax - log(se));
      confusion[y * K + best]++;
      top5 += above < 5;
    }
  }
  int right = 0;
  for (int k = 0; k < K; k++) right += confusion[k * K + k];
  e->val_acc = seen ? (double)right / seen : 0;
  e->val_top5 = K > 5 && seen ? (double)top5 / seen : -1;
  e->val_loss = seen ? loss_sum / seen : 0;
  int out = 0;
  LOG_INFO("    Test net output #%d: accuracy = %g", out++, e->val_acc);
  if (e->val_top5 >= 0) LOG_INFO("    Test net output #%d: accuracy_top5 = %g", out++, e->val_top5);
  LOG_INFO("    Test net output #%d: loss = %g (* 1 = %g loss)", out, e->val_loss, e->val_loss);
  LOG_INFO("    (moka finetune: over the %d validation images, each counted once)", seen);
  x->t_eval = moka_now() - t0;
  return 0;
}

static void print_epoch(Ctx *x, const FtEpochStats *e, bool best) {
  clear_line(x);
  char dur[32], top5[48] = "";
  ft_format_duration(dur, sizeof dur, e->seconds);
  if (e->val_top5 >= 0) snprintf(top5, sizeof top5, " top-5 %.3f", e->val_top5);
  fprintf(stderr,
          "epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f%s | %.1f img/s, %s%s\n",
          e->epoch, x->c->epochs, e->train_loss, e->train_acc, e->val_loss, e->val_acc, top5,
          e->img_per_s, dur, best ? "  (best so far)" : "");
  fflush(stderr);
}

/* Validate the epoch that ends at s->iter, record it, keep the best. */
static int finish_epoch(Ctx *x, double epoch_t0, int iters_run, double train_s) {
  const FtTrainConfig *c = x->c;
  FtHistory *h = x->h;
  Solver *s = x->s;
  const int K = c->n_classes;
  int *conf = moka_calloc((size_t)K * K, sizeof *conf);
  if (!conf) return -1;
  FtEpochStats e = {0};
  e.epoch = s->iter / c->iters_per_epoch;
  e.iter = s->iter;
  int rc = evaluate(x, &e, conf);
  if (rc) {
    free(conf);
    return rc;
  }
  const int from = s->iter - c->iters_per_epoch < 0 ? 0 : s->iter - c->iters_per_epoch;
  int n = 0;
  for (int i = from; i < s->iter && i < h->n_iters; i++, n++) {
    e.train_loss += h->loss[i];
    e.train_acc += h->acc[i];
  }
  if (n) e.train_loss /= n, e.train_acc /= n;
  e.seconds = moka_now() - epoch_t0;
  e.img_per_s = train_s > 0 ? (double)iters_run * c->batch / train_s : 0;
  const FtEpochStats *best = ft_history_best(h);
  const bool is_best = !best || e.val_acc > best->val_acc ||
                       (e.val_acc == best->val_acc && e.val_loss < best->val_loss);
  if (ft_history_add_epoch(h, &e)) {
    free(conf);
    return -1;
  }
  if (is_best) {
    char path[4200];
    snprintf(path, sizeof path, "%s/best.caffemodel", c->dir);
    if (solver_sync_to_host(s) || net_save_caffemodel(s->net, path)) {
      free(conf);
      return moka_error_prefix("writing the best weights");
    }
    LOG_INFO("moka finetune: epoch %d is the best so far (val accuracy %g): weights in %s", e.epoch,
             e.val_acc, path);
    h->best_epoch = e.epoch;
    memcpy(h->confusion, conf, sizeof *conf * (size_t)K * K);
  }
  free(conf);
  if (ft_history_save(h, c->dir)) return moka_error_prefix("saving the training record");
  prune_snapshots(x->s->param->snapshot_prefix, c->keep_snapshots);
  print_epoch(x, &e, is_best);
  return 0;
}

int ft_train(const FtTrainConfig *c, FtHistory *h, FtTrainResult *r) {
  memset(r, 0, sizeof *r);
  g_stop = 0;
  Caffe__SolverParameter *p;
  if (solver_param_read(c->solver_file, &p)) return -1;
  FILE *prev_log = c->log ? moka_set_log_stream(c->log) : NULL;
  Solver *s = NULL;
  int rc = -1;
  Ctx x = {0};
  /* validation is run here, per image, after each epoch (see evaluate) */
  p->test_interval = INT_MAX;
  p->has_test_initialization = 1;
  p->test_initialization = 0;
  if (!p->snapshot_prefix || !*p->snapshot_prefix) {
    moka_errorf("%s: no snapshot_prefix", c->solver_file);
    goto done;
  }
  char state[4200];
  int resume_iter = 0;
  const bool resume = ft_find_snapshot(p->snapshot_prefix, state, sizeof state, &resume_iter) == 1;
  if (solver_param_set_weights(p, resume ? NULL : c->weights)) goto done;
  SolverOptions o = {.backend = c->backend,
                     .device = c->device,
                     .base_dir = c->dir,
                     .before_forward = on_forward,
                     .action = check_stop,
                     .user = &x};
  s = solver_create(p, &o, c->solver_file);
  if (!s) goto done;
  x.c = c;
  x.h = h;
  x.s = s;
  x.max_iter = p->max_iter;
  x.logits = net_blob(s->net, c->logits);
  x.label = net_blob(s->net, c->label);
  x.loss = net_blob(s->net, c->loss);
  if (!x.logits || !x.label || !x.loss) {
    moka_errorf("%s: the train net has no blob '%s', '%s' or '%s'", c->solver_file, c->logits,
                c->label, c->loss);
    goto done;
  }
  if (resume) {
    LOG_INFO("moka finetune: resuming from %s", state);
    /* (solver_restore also puts the Data layers where an uninterrupted run
     * would be: solver_seek_data) */
    if (solver_restore(s, state)) goto done;
    ft_history_truncate(h, s->iter);
    r->resumed = true;
    r->resumed_from = s->iter;
    snprintf(r->snapshot, sizeof r->snapshot, "%s", state);
  } else {
    ft_history_truncate(h, 0);
  }

  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  LOG_INFO("Solving %s", s->net->name);
  LOG_INFO("Learning Rate Policy: %s", p->lr_policy ? p->lr_policy : "");
  const int ipe = c->iters_per_epoch;
  double epoch_t0 = moka_now(), train_s = 0;
  int iters_run = 0;
  rc = 0;
  for (;;) {
    /* an epoch that ended without its validation (the last step, or a run
     * stopped or killed between its snapshot and its validation) */
    if (s->iter > 0 && s->iter % ipe == 0 &&
        (h->n_epochs == 0 || h->epochs[h->n_epochs - 1].iter < s->iter)) {
      rc = finish_epoch(&x, epoch_t0, iters_run, train_s);
      if (rc < 0) break;
      if (rc == 1) {
        rc = 0;
        r->interrupted = true;
        break;
      }
    }
    if (s->iter >= x.max_iter) break;
    if (g_stop) {
      r->interrupted = true;
      break;
    }
    const int target = MOKA_MIN(x.max_iter, (s->iter / ipe + 1) * ipe);
    const int start = s->iter;
    epoch_t0 = moka_now();
    x.t_last = 0;
    if (solver_step(s, target - s->iter)) {
      rc = -1;
      break;
    }
    train_s = moka_now() - epoch_t0;
    iters_run = s->iter - start;
    if (s->iter > start && record_iter(&x, s->iter - 1)) {
      rc = -1;
      break;
    }
    if (s->requested_early_exit) {
      r->interrupted = true;
      break;
    }
  }
  clear_line(&x);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  r->iter = s->iter;
  if (rc == 0 && r->interrupted) {
    /* a snapshot where the run stopped (unless the epoch's one is there) */
    char model[4200];
    snprintf(state, sizeof state, "%s_iter_%d.solverstate", p->snapshot_prefix, s->iter);
    snprintf(model, sizeof model, "%s_iter_%d.caffemodel", p->snapshot_prefix, s->iter);
    if (!(file_exists(state) && file_exists(model)) && s->iter > 0 && solver_snapshot(s)) rc = -1;
    if (rc == 0 && s->iter > 0) snprintf(r->snapshot, sizeof r->snapshot, "%s", state);
    if (rc == 0 && ft_history_save(h, c->dir)) rc = -1;
    LOG_INFO("Optimization stopped early.");
  } else if (rc == 0) {
    LOG_INFO("Optimization Done.");
  }
done:
  if (rc) moka_error_prefix("training");
  solver_free(s);
  caffe__solver_parameter__free_unpacked(p, NULL);
  if (c->log) {
    fflush(c->log);
    moka_set_log_stream(prev_log);
  }
  return rc;
}
