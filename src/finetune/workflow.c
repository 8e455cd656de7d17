/* workflow.c — the stages of `moka finetune` (see workflow.h): data, LMDBs,
 * mean, Caffe files, training, report; each stage marked done only once it
 * is complete, so that a rerun trusts nothing half-written. */
#define _GNU_SOURCE 1
#include "finetune/workflow.h"

#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "caffe.pb-c.h"
#include "data/convert.h"
#include "data/listfile.h"
#include "finetune/dataset.h"
#include "finetune/history.h"
#include "finetune/netgen.h"
#include "finetune/report.h"
#include "finetune/strbuf.h"
#include "finetune/trainer.h"
#include "proto_io.h"
#include "util.h"

#define PATHN 4200
#define DIRN 3072 /* the run folder and input paths: PATHN leaves room for file names */

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

/* ---- files and folders ------------------------------------------------------------------ */

static int make_dir(const char *path) {
  if (mkdir(path, 0777) == 0 || errno == EEXIST) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    return moka_errorf("'%s' exists and is not a folder", path);
  }
  return moka_errorf("cannot create folder '%s': %s", path, strerror(errno));
}

static int make_dirs(const char *path) {
  char buf[PATHN];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return moka_errorf("cannot create folder '%s': %s", buf, strerror(errno));
      *p = '/';
    }
  return make_dir(buf);
}

static bool exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

/* rm -rf for a folder moka made (an LMDB). */
static int remove_tree(const char *path) {
  if (!exists(path)) return 0;
  if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return moka_errorf("cannot remove '%s': %s", path, strerror(errno));
  return 0;
}

/* An absolute form of `path` (realpath when it exists). */
static void absolute(const char *path, char *out, size_t n) {
  char buf[PATH_MAX];
  if (realpath(path, buf)) {
    snprintf(out, n, "%s", buf);
  } else if (path[0] == '/') {
    snprintf(out, n, "%s", path);
  } else {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    snprintf(out, n, "%s/%s", cwd, path);
  }
}

/* Stage markers: DIR/.done/<stage>, written atomically when the stage is complete. */
static void marker_path(const char *dir, const char *stage, char *out, size_t n) {
  snprintf(out, n, "%.3072s/.done/%.64s", dir, stage);
}

static bool stage_done(const char *dir, const char *stage) {
  char p[PATHN];
  marker_path(dir, stage, p, sizeof p);
  return exists(p);
}

static int mark_done(const char *dir, const char *stage, const char *content) {
  char p[PATHN];
  marker_path(dir, stage, p, sizeof p);
  return moka_write_file_atomic(p, content, strlen(content));
}

/* "key=N" from a marker's text; -1 when absent. */
static int marker_int(const char *dir, const char *stage, const char *key) {
  char p[PATHN];
  marker_path(dir, stage, p, sizeof p);
  uint8_t *d;
  size_t n;
  if (moka_read_file(p, &d, &n)) return -1;
  int v = -1;
  size_t kl = strlen(key);
  for (char *line = (char *)d; line && *line;) {
    if (!strncmp(line, key, kl) && line[kl] == '=') v = atoi(line + kl + 1);
    line = strchr(line, '\n');
    if (line) line++;
  }
  free(d);
  return v;
}

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
  if (!exists(p)) return 0;
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
  if (!exists(p) || !stage_done(dir, "prepare")) {
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

/* ---- the data ------------------------------------------------------------------------------ */

typedef struct Data {
  int K;
  char **classes;
  int *train_list, *val_list; /* images per class in the lists */
  int *train_db, *val_db;     /* records per class in the LMDBs */
  int n_train, n_val;         /* records in the LMDBs */
  int n_bad;
} Data;

static void data_free(Data *d) {
  for (int k = 0; k < d->K; k++) free(d->classes[k]);
  free(d->classes);
  free(d->train_list), free(d->val_list), free(d->train_db), free(d->val_db);
  memset(d, 0, sizeof *d);
}

static int read_labels(const char *path, Data *d) {
  uint8_t *buf;
  size_t n;
  if (moka_read_file(path, &buf, &n)) return -1;
  int cap = 0;
  char *save = NULL;
  for (char *l = strtok_r((char *)buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (d->K == cap) {
      cap = cap ? cap * 2 : 16;
      char **nc = realloc(d->classes, sizeof *nc * (size_t)cap);
      if (!nc) break;
      d->classes = nc;
    }
    d->classes[d->K++] = strdup(l);
  }
  free(buf);
  if (d->K < 2) return moka_errorf("%s: fewer than 2 classes", path);
  d->train_list = calloc((size_t)d->K, sizeof(int));
  d->val_list = calloc((size_t)d->K, sizeof(int));
  d->train_db = calloc((size_t)d->K, sizeof(int));
  d->val_db = calloc((size_t)d->K, sizeof(int));
  if (!d->train_list || !d->val_list || !d->train_db || !d->val_db)
    return moka_errorf("out of memory");
  return 0;
}

/* Images per class in `list`, and records per class in its LMDB (the list
 * minus the files listed as skipped in DB.skipped.txt). */
static int count_list(const char *list, const char *db, int K, int *in_list, int *in_db, int *n_db,
                      int *n_bad) {
  ListEntry *e;
  int n;
  if (list_file_read(list, &e, &n)) return -1;
  char skipped_path[PATHN];
  snprintf(skipped_path, sizeof skipped_path, "%s.skipped.txt", db);
  uint8_t *sk = NULL;
  size_t sn = 0;
  if (db && exists(skipped_path) && moka_read_file(skipped_path, &sk, &sn)) {
    list_file_free(e, n);
    return -1;
  }
  int rc = 0;
  *n_db = 0;
  for (int i = 0; i < n && !rc; i++) {
    if (!e[i].path) continue;
    if (e[i].label < 0 || e[i].label >= K) {
      rc = moka_errorf("%s:%d: label %d, but labels.txt names %d classes", list, e[i].line,
                       e[i].label, K);
      break;
    }
    in_list[e[i].label]++;
    bool bad = false;
    if (sk) { /* "path<TAB>reason" lines; "path<TAB>warning: ..." were stored */
      const size_t pl = strlen(e[i].path);
      for (char *q = (char *)sk; q && *q;) {
        if (!strncmp(q, e[i].path, pl) && q[pl] == '\t' && strncmp(q + pl + 1, "warning:", 8)) {
          bad = true;
          break;
        }
        q = strchr(q, '\n');
        if (q) q++;
      }
    }
    if (bad) {
      (*n_bad)++;
    } else {
      in_db[e[i].label]++;
      (*n_db)++;
    }
  }
  free(sk);
  list_file_free(e, n);
  return rc;
}

static int stage_prepare(const FtOptions *o, const char *dir) {
  if (stage_done(dir, "prepare")) return 0;
  char data[PATHN], val[PATHN], root[PATHN], p[PATHN];
  absolute(o->data, data, sizeof data);
  if (o->root && *o->root) {
    absolute(o->root, root, sizeof root);
  } else {
    root[0] = 0;
  }
  FtDataset ds, vs = {0};
  if (ft_dataset_read(data, root[0] ? root : NULL, o->labels, &ds)) return -1;
  if (ds.root[0] != '/') {
    /* a list file without --root: its folder, made absolute */
    char abs[PATHN];
    absolute(ds.root[0] ? ds.root : ".", abs, sizeof abs);
    free(ds.root);
    ds.root = malloc(strlen(abs) + 2);
    if (!ds.root) return moka_errorf("out of memory");
    sprintf(ds.root, "%s/", abs);
  }
  if (ds.n_ignored)
    LOG_WARN("ignored %d file(s) in %s without an image extension (.jpg, .png, ...)", ds.n_ignored,
             data);
  int rc = 0;
  FtSplit sp = {0};
  if (o->val && *o->val) {
    absolute(o->val, val, sizeof val);
    if (ft_dataset_read_val(val, root[0] ? root : NULL, &ds, &vs)) {
      ft_dataset_free(&ds);
      return -1;
    }
    if (vs.root[0] != '/') {
      char abs[PATHN];
      absolute(vs.root[0] ? vs.root : ".", abs, sizeof abs);
      free(vs.root);
      vs.root = malloc(strlen(abs) + 2);
      if (!vs.root) return moka_errorf("out of memory");
      sprintf(vs.root, "%s/", abs);
    }
    sp.n_train = ds.n;
    sp.n_val = vs.n;
    sp.train = malloc(sizeof(int) * ((size_t)ds.n + 1));
    sp.val = malloc(sizeof(int) * ((size_t)vs.n + 1));
    if (!sp.train || !sp.val) rc = moka_errorf("out of memory");
    for (int i = 0; i < ds.n && !rc; i++) sp.train[i] = i;
    for (int i = 0; i < vs.n && !rc; i++) sp.val[i] = i;
    if (!rc) ft_shuffle(sp.train, sp.n_train, (uint32_t)o->seed);
  } else {
    rc = ft_split(&ds, o->val_fraction, (uint32_t)o->seed, &sp);
  }
  if (!rc) {
    snprintf(p, sizeof p, "%s/train.txt", dir);
    rc = ft_write_list(&ds, sp.train, sp.n_train, p);
  }
  if (!rc) {
    snprintf(p, sizeof p, "%s/val.txt", dir);
    rc = ft_write_list(vs.n ? &vs : &ds, sp.val, sp.n_val, p);
  }
  if (!rc) {
    snprintf(p, sizeof p, "%s/labels.txt", dir);
    rc = ft_write_labels(&ds, p);
  }
  if (!rc) {
    char m[128];
    snprintf(m, sizeof m, "train=%d\nval=%d\nclasses=%d\n", sp.n_train, sp.n_val, ds.n_classes);
    rc = mark_done(dir, "prepare", m);
  }
  ft_split_free(&sp);
  ft_dataset_free(&ds);
  ft_dataset_free(&vs);
  return rc;
}

/* Remove DB.tmp-<pid> folders of convert_imageset runs that were killed. */
static void remove_stale_tmp(const char *db) {
  char dir[PATHN];
  snprintf(dir, sizeof dir, "%s", db);
  char *slash = strrchr(dir, '/');
  if (!slash) return;
  *slash = 0;
  const char *base = slash + 1;
  char prefix[PATHN];
  snprintf(prefix, sizeof prefix, "%s.tmp-", base);
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, prefix, strlen(prefix))) continue;
    const int pid = atoi(e->d_name + strlen(prefix));
    if (pid > 0 && pid != (int)getpid() && kill(pid, 0) != 0) {
      char p[PATHN + 256];
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      remove_tree(p);
    }
  }
  closedir(d);
}

static int stage_convert(const FtOptions *o, const char *dir, const char *which, int resize) {
  char stage[64], db[PATHN], list[PATHN];
  snprintf(stage, sizeof stage, "%.16s_lmdb", which);
  snprintf(db, sizeof db, "%.3072s/%.16s_lmdb", dir, which);
  snprintf(list, sizeof list, "%.3072s/%.16s.txt", dir, which);
  if (stage_done(dir, stage)) return 0;
  fprintf(stderr, "moka finetune: converting the %s images (%dx%d%s) -> %s\n",
          !strcmp(which, "train") ? "training" : "validation", resize, resize,
          o->encoded ? ", JPEG/PNG-encoded" : ", raw pixels", db);
  /* an earlier attempt that did not complete: start over */
  remove_stale_tmp(db);
  if (remove_tree(db)) return -1;
  ConvertOptions co = {0};
  co.root = "";
  co.list = list;
  co.db = db;
  co.resize_height = co.resize_width = resize;
  co.encoded = o->encoded;
  ConvertStats st;
  struct statvfs vfs;
  const double free_mb =
      statvfs(dir, &vfs) == 0 ? (double)vfs.f_bavail * (double)vfs.f_frsize / 1048576.0 : -1;
  if (convert_imageset(&co, &st)) {
    remove_tree(db);
    moka_error_prefix("converting the %s images", which);
    /* a full disk shows as a failed write: say how much room there was */
    int n = 0;
    ListEntry *e;
    if (list_file_read(list, &e, &n) == 0) list_file_free(e, n);
    const double need_mb = n * (double)resize * resize * 3 / 1048576.0;
    if (free_mb >= 0 && (!o->encoded ? need_mb > 0.8 * free_mb : free_mb < 64)) {
      char need[128] = "";
      if (!o->encoded) snprintf(need, sizeof need, ", and the raw images need about %.1f MB", need_mb);
      char msg[8192];
      snprintf(msg, sizeof msg, "%s\n  (the disk may be full: %.1f MB were free in %s before the "
               "conversion%s; free some space or choose another --out, then rerun)",
               moka_error(), free_mb, dir, need);
      moka_errorf("%s", msg);
    }
    return -1;
  }
  if (st.written == 0) {
    remove_tree(db);
    return moka_errorf("none of the %d %s images could be read (the reasons are in %s.skipped.txt)",
                       st.lines - st.blank, which, db);
  }
  char m[128];
  snprintf(m, sizeof m, "written=%d\nskipped=%d\n", st.written, st.skipped);
  return mark_done(dir, stage, m);
}

/* ---- the mean ------------------------------------------------------------------------------- */

typedef struct Mean {
  char file[PATHN];   /* "" = values */
  int n_values;
  float values[4];
  char why[512];
  char arg[PATHN];    /* the classify flag: --mean_file=... or --mean_value=... */
} Mean;

static int parse_mean_values(const char *s, Mean *m) {
  m->n_values = 0;
  const char *p = s;
  while (*p && m->n_values < 4) {
    char *end;
    double v = strtod(p, &end);
    if (end == p) break;
    m->values[m->n_values++] = (float)v;
    p = end;
    if (*p == ',') p++;
  }
  if (*p || (m->n_values != 1 && m->n_values != 3))
    return moka_errorf("--mean_value=%s: give one value or three (B,G,R), e.g. 104,117,123", s);
  return 0;
}

static int stage_mean(const FtOptions *o, const char *dir, int resize, Mean *m) {
  memset(m, 0, sizeof *m);
  if (o->mean_value && *o->mean_value) {
    if (parse_mean_values(o->mean_value, m)) return -1;
    snprintf(m->why, sizeof m->why, "--mean_value");
    snprintf(m->arg, sizeof m->arg, "--mean_value=%s", o->mean_value);
    return 0;
  }
  if (o->mean_file && *o->mean_file) {
    char abs[DIRN];
    absolute(o->mean_file, abs, sizeof abs);
    ProtobufCMessage *msg;
    if (proto_read_binary(&caffe__blob_proto__descriptor, abs, &msg))
      return moka_error_prefix("--mean_file");
    Caffe__BlobProto *bp = (Caffe__BlobProto *)msg;
    int na, shape[MOKA_MAX_AXES];
    int rc = blobproto_shape(bp, &na, shape);
    if (!rc && (na < 3 || bp->n_data != (size_t)shape[na - 3] * shape[na - 2] * shape[na - 1] ||
                shape[na - 3] < 1 || shape[na - 3] > 4))
      rc = moka_errorf("--mean_file=%s: not a C x H x W mean image", o->mean_file);
    if (!rc) {
      const int C = shape[na - 3], H = shape[na - 2], W = shape[na - 1];
      snprintf(m->arg, sizeof m->arg, "--mean_file=%s", abs);
      if (H == resize && W == resize) {
        snprintf(m->file, sizeof m->file, "%s", abs);
        snprintf(m->why, sizeof m->why, "--mean_file");
      } else {
        /* Caffe subtracts a mean file at the crop offset of the stored
         * image, so it must have the stored images' size */
        for (int c = 0; c < C; c++) {
          double sum = 0;
          for (int i = 0; i < H * W; i++) sum += bp->data[(size_t)c * H * W + i];
          m->values[c] = (float)(sum / (H * W));
        }
        m->n_values = C;
        /* classify with the same per-channel values */
        int k = snprintf(m->arg, sizeof m->arg, "--mean_value=");
        for (int c = 0; c < C; c++)
          k += snprintf(m->arg + k, sizeof m->arg - (size_t)k, "%s%g", c ? "," : "", (double)m->values[c]);
        snprintf(m->why, sizeof m->why,
                 "the per-channel averages of %s: it is %dx%d and Caffe needs a mean image of "
                 "the stored images' size, %dx%d",
                 o->mean_file, H, W, resize, resize);
      }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
  }
  char db[PATHN];
  snprintf(db, sizeof db, "%s/train_lmdb", dir);
  snprintf(m->file, sizeof m->file, "%.3072s/mean.binaryproto", dir);
  snprintf(m->why, sizeof m->why, "the mean image of the training images, by compute_image_mean");
  snprintf(m->arg, sizeof m->arg, "--mean_file=%.3100s", m->file);
  if (stage_done(dir, "mean")) return 0;
  fprintf(stderr, "moka finetune: computing the mean image -> %s\n", m->file);
  if (compute_image_mean(db, m->file, NULL, 0, NULL)) return moka_error_prefix("the mean image");
  return mark_done(dir, "mean", "done\n");
}

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
  if (o->weights && *o->weights && !exists(o->weights))
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
  if (make_dirs(o->out)) return -1;
  absolute(o->out, dir, sizeof dir);
  if (strlen(dir) + 1 >= sizeof dir) return moka_errorf("--out=%s: the path is too long", o->out);
  snprintf(p, sizeof p, "%s/.done", dir);
  if (make_dir(p)) return -1;
  snprintf(p, sizeof p, "%s/snapshots", dir);
  if (make_dir(p)) return -1;

  double steps[16];
  const int n_steps = parse_steps(o->lr_steps, steps, 16);
  if (n_steps < 0) return -1;

  /* the deploy net's input size decides the default resize */
  char model[DIRN], weights[DIRN] = "";
  absolute(o->model, model, sizeof model);
  if (o->weights && *o->weights) absolute(o->weights, weights, sizeof weights);
  int resize = o->resize;
  if (!resize) resize = o->input_size ? (int)floor(o->input_size * 256.0 / 224.0 + 0.5) : 256;

  Settings set = {0};
  char buf[PATHN];
  set_add(&set, "model", "%s", model);
  set_add(&set, "weights", "%s", weights[0] ? weights : "(none: from scratch)");
  absolute(o->data, buf, sizeof buf);
  set_add(&set, "data", "%s", buf);
  if (o->val && *o->val) absolute(o->val, buf, sizeof buf);
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
  Data D = {0};
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
  if (stage_prepare(o, dir)) goto done;
  snprintf(p, sizeof p, "%s/labels.txt", dir);
  if (read_labels(p, &D)) goto done;
  out->n_classes = D.K;
  if (tee.n_notes != n_notes_before && save_notes(&tee, dir)) goto done;
  /* 2. the LMDBs */
  if (stage_convert(o, dir, "train", resize) || stage_convert(o, dir, "val", resize)) {
    save_notes(&tee, dir);
    goto done;
  }
  if (tee.n_notes != n_notes_before && save_notes(&tee, dir)) goto done;
  {
    char list[PATHN], db[PATHN];
    snprintf(list, sizeof list, "%s/train.txt", dir);
    snprintf(db, sizeof db, "%s/train_lmdb", dir);
    if (count_list(list, db, D.K, D.train_list, D.train_db, &D.n_train, &D.n_bad)) goto done;
    snprintf(list, sizeof list, "%s/val.txt", dir);
    snprintf(db, sizeof db, "%s/val_lmdb", dir);
    if (count_list(list, db, D.K, D.val_list, D.val_db, &D.n_val, &D.n_bad)) goto done;
    const int want_train = marker_int(dir, "train_lmdb", "written");
    const int want_val = marker_int(dir, "val_lmdb", "written");
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
  Mean mean;
  if (stage_mean(o, dir, resize, &mean)) goto done;

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
  if (!stage_done(dir, "files")) {
    if (moka_write_file_atomic(tv_path, tv, strlen(tv)) ||
        moka_write_file_atomic(dp_path, dp, strlen(dp)) ||
        moka_write_file_atomic(sv_path, sv, strlen(sv)) || mark_done(dir, "files", "done\n"))
      goto done;
    fprintf(stderr, "moka finetune: wrote %s, %s and %s\n", tv_path, sv_path, dp_path);
  }

  /* 5. training */
  if (ft_history_init(&h, D.K) || ft_history_load(&h, dir)) goto done;
  FtTrainResult tr = {0};
  if (!stage_done(dir, "train")) {
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
    if (!tr.interrupted && mark_done(dir, "train", "done\n")) goto done;
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
  data_free(&D);
  set_free(&set);
  free(tv), free(dp), free(sv);
  return rc;
}
