/* workflow.c — `moka finetune` (see workflow.h): the options, the log, the
 * recorded settings, and ft_run, which runs the stages in order: data, LMDBs,
 * mean (workflow_stages.c), Caffe files, training, report; each stage marked
 * done only once it is complete, so that a rerun trusts nothing half-written. */
#define _GNU_SOURCE 1
#include "finetune/workflow.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finetune/history.h"
#include "finetune/netgen.h"
#include "finetune/report.h"
#include "finetune/strbuf.h"
#include "finetune/trainer.h"
#include "finetune/workflow_internal.h"
#include "util.h"

void ft_options_default(FtOptions *o) {
  memset(o, 0, sizeof *o);
  o->val_fraction = 0.1;
  o->epochs = 30;
  o->batch = 32;
  o->lr = 0.001;
  o->lr_gamma = 0.1;
  o->momentum = 0.9;
  o->weight_decay = 1e-4;
  o->lr_steps = "0.089,0.278,0.667,0.944";
  o->encoded = true;
  o->bn = "auto";
  o->mirror = true;
  o->cls_lr_mult = 0; /* auto: 10 when fine-tuning, 1 from scratch */
  o->seed = 1;
  o->keep_snapshots = 2;
  o->gpu = "";
}


/* ---- the log: every line to DIR/train.log, warnings also to stderr and the report ------ */

/* ---- the log: every line to DIR/train.log, warnings also to stderr and the report ------ */

typedef struct Tee {
  FILE *file;
  char line[2048];
  size_t len;
  char **notes;
  int n_notes;
} Tee;

static int add_note(Tee *t, const char *s) {
  char **nn = realloc(t->notes, sizeof *nn * (size_t)(t->n_notes + 1));
  if (!nn) return -1;
  t->notes = nn;
  if (!(t->notes[t->n_notes] = strdup(s))) return -1;
  t->n_notes++;
  return 0;
}

static ssize_t tee_write(void *cookie, const char *buf, size_t size) {
  Tee *t = cookie;
  if (t->file) fwrite(buf, 1, size, t->file);
  for (size_t i = 0; i < size; i++) {
    if (buf[i] != '\n') {
      if (t->len + 1 < sizeof t->line) t->line[t->len++] = buf[i];
      continue;
    }
    t->line[t->len] = 0;
    if (t->line[0] == 'W' || t->line[0] == 'E') {
      fprintf(stderr, "%s\n", t->line);
      /* the text after the glog prefix "W1128 04:26:02.123456 12345 file.c:42] " */
      const char *msg = strstr(t->line, "] ");
      add_note(t, msg ? msg + 2 : t->line);
    }
    t->len = 0;
  }
  if (t->file) fflush(t->file);
  return (ssize_t)size;
}

static int load_notes(Tee *t, const char *dir) {
  char p[PATHN];
  snprintf(p, sizeof p, "%.3072s/notes.txt", dir);
  if (!ft_path_exists(p)) return 0;
  uint8_t *d;
  size_t n;
  if (moka_read_file(p, &d, &n)) return -1;
  char *save = NULL;
  for (char *l = strtok_r((char *)d, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) add_note(t, l);
  free(d);
  return 0;
}

static int save_notes(const Tee *t, const char *dir) {
  StrBuf b = {0};
  for (int i = 0; i < t->n_notes; i++) sb_printf(&b, "%s\n", t->notes[i]);
  char *s = sb_take(&b);
  if (!s) return -1;
  char p[PATHN];
  snprintf(p, sizeof p, "%.3072s/notes.txt", dir);
  int rc = moka_write_file_atomic(p, s, strlen(s));
  free(s);
  return rc;
}

/* ---- settings ------------------------------------------------------------------------------- */

/* ---- settings ------------------------------------------------------------------------------- */

typedef struct Settings {
  int n;
  char *key[48];
  char *val[48];
} Settings;

static void set_add(Settings *s, const char *key, const char *fmt, ...) MOKA_PRINTF(3, 4);
static void set_add(Settings *s, const char *key, const char *fmt, ...) {
  if (s->n >= 48) return;
  char buf[PATHN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  s->key[s->n] = strdup(key);
  s->val[s->n] = strdup(buf);
  s->n++;
}

static void set_free(Settings *s) {
  for (int i = 0; i < s->n; i++) free(s->key[i]), free(s->val[i]);
  s->n = 0;
}

static const char *set_get(const Settings *s, const char *key) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->key[i], key)) return s->val[i];
  return NULL;
}

/* Compare with DIR/finetune.cfg once the data are prepared; before that
 * (a first run, or one that failed early) write it. */
static int check_settings(const Settings *s, const char *dir) {
  char p[PATHN];
  snprintf(p, sizeof p, "%.3072s/finetune.cfg", dir);
  if (!ft_path_exists(p) || !ft_stage_done(dir, "prepare")) {
    StrBuf b = {0};
    sb_puts(&b, "# the settings of this moka finetune folder: rerunning the same command resumes;\n"
                "# different settings need another --out\n");
    for (int i = 0; i < s->n; i++) sb_printf(&b, "%s=%s\n", s->key[i], s->val[i]);
    char *t = sb_take(&b);
    int rc = t ? moka_write_file_atomic(p, t, strlen(t)) : -1;
    free(t);
    return rc;
  }
  uint8_t *d;
  size_t n;
  if (moka_read_file(p, &d, &n)) return -1;
  Settings old = {0};
  char *save = NULL;
  for (char *l = strtok_r((char *)d, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (l[0] == '#') continue;
    char *eq = strchr(l, '=');
    if (!eq) continue;
    *eq = 0;
    set_add(&old, l, "%s", eq + 1);
  }
  free(d);
  int rc = 0;
  for (int i = 0; i < s->n && !rc; i++) {
    const char *was = set_get(&old, s->key[i]);
    if (!was || strcmp(was, s->val[i]))
      rc = moka_errorf("'%s' holds a run with other settings: %s is '%s' now, '%s' there. Rerun "
                       "with the same settings to resume it, or give another --out (or delete "
                       "the folder) to start over",
                       dir, s->key[i], s->val[i], was ? was : "(unset)");
  }
  set_free(&old);
  return rc;
}

/* ---- the run ------------------------------------------------------------------------------- */

/* ---- the run ------------------------------------------------------------------------------- */

static int parse_steps(const char *s, double *out, int max) {
  int n = 0;
  const char *p = s ? s : "";
  while (*p) {
    char *end;
    double v = strtod(p, &end);
    if (end == p || !(v > 0 && v < 1) || n >= max)
      return moka_errorf("--lr_steps=%s: give fractions of the run between 0 and 1, e.g. "
                         "0.089,0.278,0.667,0.944",
                         s);
    out[n++] = v;
    p = end;
    if (*p == ',') p++;
  }
  return n;
}

static int check_options(const FtOptions *o) {
  if (!o->model || !*o->model) return moka_errorf("--model is required (the deploy prototxt)");
  if (!o->data || !*o->data)
    return moka_errorf("no DATA given: a folder with one subfolder per class, or a list file");
  if (!o->out || !*o->out) return moka_errorf("--out is required (the folder for this run)");
  if (o->epochs < 1) return moka_errorf("--epochs must be at least 1, got %d", o->epochs);
  if (o->batch < 1) return moka_errorf("--batch must be at least 1, got %d", o->batch);
  if (o->val_batch < 0) return moka_errorf("--val_batch must be at least 1, got %d", o->val_batch);
  if (!(o->lr > 0)) return moka_errorf("--lr must be positive, got %g", o->lr);
  if (o->keep_snapshots < 1) return moka_errorf("--keep_snapshots must be at least 1");
  if (o->input_size < 0 || o->resize < 0) return moka_errorf("--input_size and --resize must be positive");
  if (strcmp(o->bn, "auto") && strcmp(o->bn, "frozen") && strcmp(o->bn, "batch"))
    return moka_errorf("--bn=%s: use auto, frozen or batch", o->bn);
  if (o->bn_maf < 0 || o->bn_maf >= 1) return moka_errorf("--bn_maf must be in [0, 1)");
  if (o->mean_file && *o->mean_file && o->mean_value && *o->mean_value)
    return moka_errorf("give --mean_file or --mean_value, not both");
  if (o->weights && *o->weights && !ft_path_exists(o->weights))
    return moka_errorf("--weights=%s: %s", o->weights, strerror(ENOENT));
  return 0;
}

static void quote_arg(StrBuf *b, const char *s) {
  if (*s && !strpbrk(s, " \t'\"$`\\")) {
    sb_puts(b, s);
    return;
  }
  sb_puts(b, "'");
  for (; *s; s++) {
    if (*s == '\'') sb_puts(b, "'\\''");
    else sb_append(b, s, 1);
  }
  sb_puts(b, "'");
}

int ft_run(const FtOptions *o, FtOutcome *out) {
  memset(out, 0, sizeof *out);
  out->best_val_acc = -1;
  if (check_options(o)) return -1;
  char dir[DIRN], p[PATHN];
  if (ft_make_dirs(o->out)) return -1;
  ft_absolute_path(o->out, dir, sizeof dir);
  if (strlen(dir) + 1 >= sizeof dir) return moka_errorf("--out=%s: the path is too long", o->out);
  snprintf(p, sizeof p, "%s/.done", dir);
  if (ft_make_dir(p)) return -1;
  snprintf(p, sizeof p, "%s/snapshots", dir);
  if (ft_make_dir(p)) return -1;

  double steps[16];
  const int n_steps = parse_steps(o->lr_steps, steps, 16);
  if (n_steps < 0) return -1;

  /* the deploy net's input size decides the default resize */
  char model[DIRN], weights[DIRN] = "";
  ft_absolute_path(o->model, model, sizeof model);
  if (o->weights && *o->weights) ft_absolute_path(o->weights, weights, sizeof weights);
  int resize = o->resize;
  if (!resize) resize = o->input_size ? (int)floor(o->input_size * 256.0 / 224.0 + 0.5) : 256;

  Settings set = {0};
  char buf[PATHN];
  set_add(&set, "model", "%s", model);
  set_add(&set, "weights", "%s", weights[0] ? weights : "(none: from scratch)");
  ft_absolute_path(o->data, buf, sizeof buf);
  set_add(&set, "data", "%s", buf);
  if (o->val && *o->val) ft_absolute_path(o->val, buf, sizeof buf);
  set_add(&set, "val", "%s", o->val && *o->val ? buf : "(split off the data)");
  set_add(&set, "val_fraction", "%g", o->val && *o->val ? 0.0 : o->val_fraction);
  set_add(&set, "labels", "%s", o->labels && *o->labels ? o->labels : "(from the data)");
  set_add(&set, "root", "%s", o->root && *o->root ? o->root : "(default)");
  set_add(&set, "epochs", "%d", o->epochs);
  set_add(&set, "batch", "%d", o->batch);
  set_add(&set, "val_batch", "%d", o->val_batch ? o->val_batch : o->batch);
  set_add(&set, "lr", "%g", o->lr);
  set_add(&set, "lr_steps", "%s", o->lr_steps);
  set_add(&set, "lr_gamma", "%g", o->lr_gamma);
  set_add(&set, "momentum", "%g", o->momentum);
  set_add(&set, "weight_decay", "%g", o->weight_decay);
  set_add(&set, "resize", "%d", resize);
  set_add(&set, "input_size", "%d", o->input_size);
  set_add(&set, "encoded", "%s", o->encoded ? "true" : "false");
  set_add(&set, "mean_file", "%s", o->mean_file && *o->mean_file ? o->mean_file : "");
  set_add(&set, "mean_value", "%s", o->mean_value && *o->mean_value ? o->mean_value : "");
  set_add(&set, "bn", "%s", o->bn);
  set_add(&set, "bn_maf", "%g", o->bn_maf);
  set_add(&set, "mirror", "%s", o->mirror ? "true" : "false");
  set_add(&set, "classifier_name", "%s", o->classifier_name ? o->classifier_name : "");
  set_add(&set, "classifier_lr_mult", "%g",
          o->cls_lr_mult > 0 ? o->cls_lr_mult : o->weights && *o->weights ? 10.0 : 1.0);
  set_add(&set, "seed", "%d", o->seed);

  Tee tee = {0};
  FILE *log = NULL, *tee_f = NULL, *prev_log = NULL;
  FtData D = {0};
  FtHistory h = {0};
  char *tv = NULL, *dp = NULL, *sv = NULL;
  int rc = -1;
  if (check_settings(&set, dir)) goto done;

  snprintf(p, sizeof p, "%s/train.log", dir);
  log = fopen(p, "a");
  if (!log) {
    moka_errorf("cannot write '%s': %s", p, strerror(errno));
    goto done;
  }
  tee.file = log;
  if (load_notes(&tee, dir)) goto done;
  cookie_io_functions_t io = {.write = tee_write};
  tee_f = fopencookie(&tee, "w", io);
  if (!tee_f) {
    moka_errorf("cannot set up the log: %s", strerror(errno));
    goto done;
  }
  setvbuf(tee_f, NULL, _IOLBF, 0);
  prev_log = moka_set_log_stream(tee_f);
  LOG_INFO("moka finetune: %s", o->command ? o->command : "");
  const int n_notes_before = tee.n_notes;

  /* 1. the data */
  if (ft_stage_prepare(o, dir)) goto done;
  snprintf(p, sizeof p, "%s/labels.txt", dir);
  if (ft_data_read_labels(p, &D)) goto done;
  out->n_classes = D.K;
  if (tee.n_notes != n_notes_before && save_notes(&tee, dir)) goto done;
  /* 2. the LMDBs */
  if (ft_stage_convert(o, dir, "train", resize) || ft_stage_convert(o, dir, "val", resize)) {
    save_notes(&tee, dir);
    goto done;
  }
  if (tee.n_notes != n_notes_before && save_notes(&tee, dir)) goto done;
  {
    char list[PATHN], db[PATHN];
    snprintf(list, sizeof list, "%s/train.txt", dir);
    snprintf(db, sizeof db, "%s/train_lmdb", dir);
    if (ft_data_count_list(list, db, D.K, D.train_list, D.train_db, &D.n_train, &D.n_bad)) goto done;
    snprintf(list, sizeof list, "%s/val.txt", dir);
    snprintf(db, sizeof db, "%s/val_lmdb", dir);
    if (ft_data_count_list(list, db, D.K, D.val_list, D.val_db, &D.n_val, &D.n_bad)) goto done;
    const int want_train = ft_marker_int(dir, "train_lmdb", "written");
    const int want_val = ft_marker_int(dir, "val_lmdb", "written");
    if (want_train != D.n_train || want_val != D.n_val) {
      moka_errorf("'%s': the LMDBs hold %d and %d images, but train.txt/val.txt and the skipped "
                  "files say %d and %d: the folder was changed by hand; delete it (or "
                  "%s/.done/train_lmdb and val_lmdb) to convert again",
                  dir, want_train, want_val, D.n_train, D.n_val, dir);
      goto done;
    }
    for (int k = 0; k < D.K; k++)
      if (D.train_db[k] == 0) {
        moka_errorf("class '%s' has no usable training image (%d listed; the reasons are in "
                    "%s/train_lmdb.skipped.txt)",
                    D.classes[k], D.train_list[k], dir);
        goto done;
      }
    for (int k = 0; k < D.K; k++)
      if (D.val_db[k] == 0 && D.train_db[k] > 1)
        LOG_WARN("class '%s' has no validation image: its accuracy cannot be measured",
                 D.classes[k]);
  }
  fprintf(stderr, "moka finetune: %d classes, %d training and %d validation images%s (%s/labels.txt)\n",
          D.K, D.n_train, D.n_val, D.n_bad ? ", some files skipped" : "", dir);
  /* 3. the mean */
  FtMean mean;
  if (ft_stage_mean(o, dir, resize, &mean)) goto done;

  /* 4. the Caffe files */
  const int batch = o->batch, val_batch = o->val_batch ? o->val_batch : o->batch;
  const bool have_weights = weights[0] != 0;
  FtBnMode bn;
  char bn_why[256];
  if (!strcmp(o->bn, "frozen") || !strcmp(o->bn, "batch")) {
    bn = !strcmp(o->bn, "frozen") ? FT_BN_FROZEN : FT_BN_BATCH;
    snprintf(bn_why, sizeof bn_why, "--bn=%s", o->bn);
  } else if (!have_weights) {
    bn = FT_BN_BATCH;
    snprintf(bn_why, sizeof bn_why, "training from scratch: there are no pretrained statistics; "
                                    "--bn=frozen to change");
  } else if (batch < 32) {
    bn = FT_BN_FROZEN;
    snprintf(bn_why, sizeof bn_why, "batches of %d images (< 32) give noisy statistics; "
                                    "--bn=batch to change", batch);
  } else {
    bn = FT_BN_BATCH;
    snprintf(bn_why, sizeof bn_why, "batches of %d images (>= 32) give usable statistics; "
                                    "--bn=frozen to keep the pretrained ones", batch);
  }
  char train_db[PATHN], val_db[PATHN], tv_path[PATHN], dp_path[PATHN], sv_path[PATHN],
      prefix[PATHN];
  snprintf(train_db, sizeof train_db, "%s/train_lmdb", dir);
  snprintf(val_db, sizeof val_db, "%s/val_lmdb", dir);
  snprintf(tv_path, sizeof tv_path, "%s/train_val.prototxt", dir);
  snprintf(dp_path, sizeof dp_path, "%s/deploy.prototxt", dir);
  snprintf(sv_path, sizeof sv_path, "%s/solver.prototxt", dir);
  snprintf(prefix, sizeof prefix, "%s/snapshots/finetune", dir);
  FtNetSpec ns = {0};
  ns.n_classes = D.K;
  ns.classifier_name = o->classifier_name;
  ns.input_size = o->input_size;
  ns.batch = batch;
  ns.val_batch = val_batch;
  ns.resize = resize;
  ns.n_train = D.n_train;
  ns.n_val = D.n_val;
  ns.train_lmdb = train_db;
  ns.val_lmdb = val_db;
  ns.mean_file = mean.file[0] ? mean.file : NULL;
  ns.n_mean_values = mean.n_values;
  memcpy(ns.mean_values, mean.values, sizeof ns.mean_values);
  ns.mean_why = mean.why;
  ns.mirror = o->mirror;
  ns.bn = bn;
  ns.bn_why = bn_why;
  ns.bn_maf = (float)o->bn_maf;
  ns.from_scratch = !have_weights;
  const double cls_mult = o->cls_lr_mult > 0 ? o->cls_lr_mult : have_weights ? 10 : 1;
  ns.cls_lr_mult = (float)cls_mult;
  ns.cls_bias_lr_mult = (float)(2 * cls_mult);
  ns.command = o->command;
  FtNetInfo info;
  if (ft_net_write(model, &ns, &tv, &dp, &info)) goto done;
  FtSolverSpec ss = {0};
  ss.net = tv_path;
  ss.n_train = D.n_train;
  ss.n_val = D.n_val;
  ss.batch = batch;
  ss.val_batch = val_batch;
  ss.epochs = o->epochs;
  ss.base_lr = o->lr;
  ss.momentum = o->momentum;
  ss.weight_decay = o->weight_decay;
  ss.gamma = o->lr_gamma;
  ss.n_steps = n_steps;
  memcpy(ss.steps, steps, sizeof steps);
  ss.snapshot_prefix = prefix;
  ss.gpu = o->gpu && *o->gpu;
  ss.device_id = ss.gpu ? atoi(o->gpu) : 0;
  ss.seed = o->seed;
  ss.from_scratch = !have_weights;
  ss.command = o->command;
  if (!(sv = ft_solver_text(&ss))) goto done;
  const int ipe = ft_iters_per_epoch(D.n_train, batch);
  if (!ft_stage_done(dir, "files")) {
    if (moka_write_file_atomic(tv_path, tv, strlen(tv)) ||
        moka_write_file_atomic(dp_path, dp, strlen(dp)) ||
        moka_write_file_atomic(sv_path, sv, strlen(sv)) || ft_mark_done(dir, "files", "done\n"))
      goto done;
    fprintf(stderr, "moka finetune: wrote %s, %s and %s\n", tv_path, sv_path, dp_path);
  }

  /* 5. training */
  if (ft_history_init(&h, D.K) || ft_history_load(&h, dir)) goto done;
  FtTrainResult tr = {0};
  if (!ft_stage_done(dir, "train")) {
    snprintf(p, sizeof p, "%s/train.log", dir);
    fprintf(stderr,
            "moka finetune: training %s (%s) for %d epoch(s) of %d iterations x %d images on %s; "
            "Caffe's log: %s\n",
            info.name, have_weights ? "from the pretrained weights" : "from scratch", o->epochs,
            ipe, batch, o->gpu && *o->gpu ? "the GPU" : "the CPU", p);
    FtTrainConfig tc = {0};
    tc.dir = dir;
    tc.solver_file = sv_path;
    tc.weights = have_weights ? weights : NULL;
    tc.backend = o->backend;
    tc.device = o->gpu && *o->gpu ? atoi(o->gpu) : 0;
    tc.n_classes = D.K;
    tc.n_val = D.n_val;
    tc.batch = batch;
    tc.val_batch = val_batch;
    tc.epochs = o->epochs;
    tc.iters_per_epoch = ipe;
    tc.logits = info.logits;
    tc.label = "label";
    tc.loss = "loss";
    tc.keep_snapshots = o->keep_snapshots;
    tc.tty = isatty(STDERR_FILENO);
    tc.log = log;
    fflush(tee_f);
    if (ft_train(&tc, &h, &tr)) {
      moka_error_prefix("'%s'", dir);
      char msg[8192];
      snprintf(msg, sizeof msg, "%s\n  (nothing incomplete was kept: rerun the same command to resume "
                                "from the last complete snapshot in %s/snapshots)",
               moka_error(), dir);
      moka_errorf("%s", msg);
      goto done;
    }
    if (tr.resumed)
      LOG_INFO("moka finetune: resumed from iteration %d (%s)", tr.resumed_from, tr.snapshot);
    if (!tr.interrupted && ft_mark_done(dir, "train", "done\n")) goto done;
  }
  out->interrupted = tr.interrupted;

  /* 6. the report */
  {
    char status[PATHN], usage[PATHN * 3];
    if (tr.interrupted)
      snprintf(status, sizeof status, "interrupted at iteration %d of %d (epoch %d of %d)", tr.iter,
               ipe * o->epochs, tr.iter / ipe + 1, o->epochs);
    else
      snprintf(status, sizeof status, "finished (%d epochs)", o->epochs);
    StrBuf u = {0};
    sb_puts(&u, "moka classify --model=");
    quote_arg(&u, dp_path);
    sb_puts(&u, " --weights=");
    snprintf(p, sizeof p, "%s/best.caffemodel", dir);
    quote_arg(&u, p);
    sb_puts(&u, " --labels=");
    snprintf(p, sizeof p, "%s/labels.txt", dir);
    quote_arg(&u, p);
    sb_puts(&u, " ");
    quote_arg(&u, mean.arg);
    sb_printf(&u, " --resize=%d --squash --csv=predictions.csv IMAGE_OR_FOLDER...", resize);
    char *us = sb_take(&u);
    snprintf(usage, sizeof usage, "%s", us ? us : "");
    free(us);
    /* the configuration shown in the report */
    char *keys[64], *vals[64];
    int nk = 0;
    for (int i = 0; i < set.n && nk < 60; i++) keys[nk] = set.key[i], vals[nk] = set.val[i], nk++;
    char bnv[320], cls[600], ipev[64], gpuv[64];
    snprintf(bnv, sizeof bnv, "%s (%s)", bn == FT_BN_FROZEN ? "frozen" : "batch", bn_why);
    snprintf(cls, sizeof cls, "%s (%d outputs) -> %s (%d classes)", info.classifier_old,
             info.old_outputs, info.classifier_new, D.K);
    snprintf(ipev, sizeof ipev, "%d", ipe);
    snprintf(gpuv, sizeof gpuv, "%s", o->gpu && *o->gpu ? o->gpu : "CPU");
    keys[nk] = "BatchNorm statistics", vals[nk++] = bnv;
    keys[nk] = "classifier", vals[nk++] = cls;
    keys[nk] = "iterations per epoch", vals[nk++] = ipev;
    keys[nk] = "mean", vals[nk++] = mean.why;
    keys[nk] = "device", vals[nk++] = gpuv;
    FtReport rep = {0};
    rep.dir = dir;
    rep.data = set_get(&set, "data");
    rep.classes = D.classes;
    rep.n_classes = D.K;
    rep.train_counts = D.train_db;
    rep.val_counts = D.val_db;
    rep.n_train = D.n_train;
    rep.n_val = D.n_val;
    rep.n_bad = D.n_bad;
    rep.notes = tee.notes;
    rep.n_notes = tee.n_notes;
    rep.config_keys = keys;
    rep.config_values = vals;
    rep.n_config = nk;
    rep.h = &h;
    rep.iters_per_epoch = ipe;
    rep.epochs = o->epochs;
    rep.usage = usage;
    rep.status = status;
    if (ft_report_write(&rep)) goto done;
    const FtEpochStats *best = ft_history_best(&h);
    if (best) {
      out->best_val_acc = best->val_acc;
      out->best_epoch = best->epoch;
    }
    if (tr.interrupted) {
      fprintf(stderr,
              "moka finetune: interrupted at iteration %d of %d (epoch %d of %d).\n"
              "  snapshot: %s\n"
              "  resume:   run the same command again (or: moka train --solver=%s --snapshot=%s)\n",
              tr.iter, ipe * o->epochs, tr.iter / ipe + 1, o->epochs,
              tr.snapshot[0] ? tr.snapshot : "(none: no iteration was done)", sv_path,
              tr.snapshot[0] ? tr.snapshot : "...");
    } else if (best) {
      fprintf(stderr,
              "moka finetune: done. Best validation accuracy %.1f%% (epoch %d of %d; chance is "
              "%.1f%%): %s/best.caffemodel\n",
              100 * best->val_acc, best->epoch, o->epochs, 100.0 / D.K, dir);
    }
    fprintf(stderr, "  report:   %s/report.html\n", dir);
    if (!tr.interrupted) fprintf(stderr, "  classify: %s\n", usage);
  }
  rc = 0;
done:
  if (tee_f) {
    fflush(tee_f);
    moka_set_log_stream(prev_log);
    fclose(tee_f);
  }
  if (log) fclose(log);
  for (int i = 0; i < tee.n_notes; i++) free(tee.notes[i]);
  free(tee.notes);
  ft_history_free(&h);
  ft_data_free(&D);
  set_free(&set);
  free(tv), free(dp), free(sv);
  return rc;
}
