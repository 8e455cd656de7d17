/* workflow_stages.c — the stages of `moka finetune` that prepare the data
 * (prepare, train_lmdb / val_lmdb, mean), with the files, folders and stage
 * markers they use (see workflow.h and workflow_internal.h). */
#define _GNU_SOURCE 1
#include "finetune/workflow_internal.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
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
#include "proto_io.h"
#include "util.h"

/* ---- files and folders ------------------------------------------------------------------ */

/* ---- files and folders ------------------------------------------------------------------ */

int ft_make_dir(const char *path) {
  if (mkdir(path, 0777) == 0 || errno == EEXIST) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    return moka_errorf("'%s' exists and is not a folder", path);
  }
  return moka_errorf("cannot create folder '%s': %s", path, strerror(errno));
}

int ft_make_dirs(const char *path) {
  char buf[PATHN];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return moka_errorf("cannot create folder '%s': %s", buf, strerror(errno));
      *p = '/';
    }
  return ft_make_dir(buf);
}

bool ft_path_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

/* rm -rf for a folder moka made (an LMDB). */
int ft_remove_tree(const char *path) {
  if (!ft_path_exists(path)) return 0;
  if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return moka_errorf("cannot remove '%s': %s", path, strerror(errno));
  return 0;
}

/* An absolute form of `path` (realpath when it exists). */
void ft_absolute_path(const char *path, char *out, size_t n) {
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

bool ft_stage_done(const char *dir, const char *stage) {
  char p[PATHN];
  marker_path(dir, stage, p, sizeof p);
  return ft_path_exists(p);
}

int ft_mark_done(const char *dir, const char *stage, const char *content) {
  char p[PATHN];
  marker_path(dir, stage, p, sizeof p);
  return moka_write_file_atomic(p, content, strlen(content));
}

/* "key=N" from a marker's text; -1 when absent. */
int ft_marker_int(const char *dir, const char *stage, const char *key) {
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

/* ---- the data ------------------------------------------------------------------------------ */

/* ---- the data ------------------------------------------------------------------------------ */

void ft_data_free(FtData *d) {
  for (int k = 0; k < d->K; k++) free(d->classes[k]);
  free(d->classes);
  free(d->train_list), free(d->val_list), free(d->train_db), free(d->val_db);
  memset(d, 0, sizeof *d);
}

int ft_data_read_labels(const char *path, FtData *d) {
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
int ft_data_count_list(const char *list, const char *db, int K, int *in_list, int *in_db,
                       int *n_db, int *n_bad) {
  ListEntry *e;
  int n;
  if (list_file_read(list, &e, &n)) return -1;
  char skipped_path[PATHN];
  snprintf(skipped_path, sizeof skipped_path, "%s.skipped.txt", db);
  uint8_t *sk = NULL;
  size_t sn = 0;
  if (db && ft_path_exists(skipped_path) && moka_read_file(skipped_path, &sk, &sn)) {
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

/* A dataset's root (a list file without --root: its folder, maybe relative)
 * made absolute, with a trailing '/'. */
static int absolute_root(char **root) {
  if ((*root)[0] == '/') return 0;
  char abs[PATHN];
  ft_absolute_path((*root)[0] ? *root : ".", abs, sizeof abs);
  free(*root);
  *root = malloc(strlen(abs) + 2);
  if (!*root) return moka_errorf("out of memory");
  sprintf(*root, "%s/", abs);
  return 0;
}

int ft_stage_prepare(const FtOptions *o, const char *dir) {
  if (ft_stage_done(dir, "prepare")) return 0;
  char data[PATHN], val[PATHN], root[PATHN], p[PATHN];
  ft_absolute_path(o->data, data, sizeof data);
  if (o->root && *o->root) {
    ft_absolute_path(o->root, root, sizeof root);
  } else {
    root[0] = 0;
  }
  FtDataset ds, vs = {0};
  if (ft_dataset_read(data, root[0] ? root : NULL, o->labels, &ds)) return -1;
  if (absolute_root(&ds.root)) return -1;
  if (ds.n_ignored)
    LOG_WARN("ignored %d file(s) in %s without an image extension (.jpg, .png, ...)", ds.n_ignored,
             data);
  int rc = 0;
  FtSplit sp = {0};
  if (o->val && *o->val) {
    ft_absolute_path(o->val, val, sizeof val);
    if (ft_dataset_read_val(val, root[0] ? root : NULL, &ds, &vs)) {
      ft_dataset_free(&ds);
      return -1;
    }
    if (absolute_root(&vs.root)) return -1;
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
    rc = ft_mark_done(dir, "prepare", m);
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
      ft_remove_tree(p);
    }
  }
  closedir(d);
}

int ft_stage_convert(const FtOptions *o, const char *dir, const char *which, int resize) {
  char stage[64], db[PATHN], list[PATHN];
  snprintf(stage, sizeof stage, "%.16s_lmdb", which);
  snprintf(db, sizeof db, "%.3072s/%.16s_lmdb", dir, which);
  snprintf(list, sizeof list, "%.3072s/%.16s.txt", dir, which);
  if (ft_stage_done(dir, stage)) return 0;
  fprintf(stderr, "moka finetune: converting the %s images (%dx%d%s) -> %s\n",
          !strcmp(which, "train") ? "training" : "validation", resize, resize,
          o->encoded ? ", JPEG/PNG-encoded" : ", raw pixels", db);
  /* an earlier attempt that did not complete: start over */
  remove_stale_tmp(db);
  if (ft_remove_tree(db)) return -1;
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
    ft_remove_tree(db);
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
    ft_remove_tree(db);
    return moka_errorf("none of the %d %s images could be read (the reasons are in %s.skipped.txt)",
                       st.lines - st.blank, which, db);
  }
  char m[128];
  snprintf(m, sizeof m, "written=%d\nskipped=%d\n", st.written, st.skipped);
  return ft_mark_done(dir, stage, m);
}

/* ---- the mean ------------------------------------------------------------------------------- */

/* ---- the mean ------------------------------------------------------------------------------- */

static int parse_mean_values(const char *s, FtMean *m) {
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

int ft_stage_mean(const FtOptions *o, const char *dir, int resize, FtMean *m) {
  memset(m, 0, sizeof *m);
  if (o->mean_value && *o->mean_value) {
    if (parse_mean_values(o->mean_value, m)) return -1;
    snprintf(m->why, sizeof m->why, "--mean_value");
    snprintf(m->arg, sizeof m->arg, "--mean_value=%s", o->mean_value);
    return 0;
  }
  if (o->mean_file && *o->mean_file) {
    char abs[DIRN];
    ft_absolute_path(o->mean_file, abs, sizeof abs);
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
  if (ft_stage_done(dir, "mean")) return 0;
  fprintf(stderr, "moka finetune: computing the mean image -> %s\n", m->file);
  if (compute_image_mean(db, m->file, NULL, 0, NULL)) return moka_error_prefix("the mean image");
  return ft_mark_done(dir, "mean", "done\n");
}
