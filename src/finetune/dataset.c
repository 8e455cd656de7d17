/* dataset.c — reading a fine-tuning dataset (a folder of class subfolders or
 * a Caffe list file), the stratified seeded split, and the list/label files
 * for convert_imageset. See dataset.h. */
#include "finetune/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "data/listfile.h"
#include "rng.h"
#include "util.h"

#define MAX_DEPTH 16 /* folder recursion below a class folder (symlink loops) */

bool ft_is_image_name(const char *name) {
  static const char *const kExt[] = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif",
                                     ".webp", ".tif", ".tiff", ".ppm", ".pgm"};
  const char *dot = strrchr(name, '.');
  if (!dot || name[0] == '.') return false;
  for (size_t i = 0; i < MOKA_ARRAY_LEN(kExt); i++)
    if (!strcasecmp(dot, kExt[i])) return true;
  return false;
}

static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of a folder's entries (no "." / ".." / hidden ones). */
static int list_dir(const char *path, char ***names, int *n) {
  *names = NULL;
  *n = 0;
  DIR *d = opendir(path);
  if (!d) return moka_errorf("cannot read folder '%s': %s", path, strerror(errno));
  struct dirent *e;
  int cap = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 64;
      char **nn = moka_realloc(*names, (size_t)cap * sizeof *nn);
      if (!nn) goto fail;
      *names = nn;
    }
    if (!((*names)[*n] = moka_strdup(e->d_name))) goto fail;
    (*n)++;
  }
  closedir(d);
  if (*n) qsort(*names, (size_t)*n, sizeof **names, cmp_str);
  return 0;
fail:
  closedir(d);
  for (int i = 0; i < *n; i++) free((*names)[i]);
  free(*names);
  *names = NULL;
  *n = 0;
  return -1;
}

static void free_names(char **names, int n) {
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

static int add_item(FtDataset *d, int *cap, const char *path, int label) {
  if (d->n == *cap) {
    *cap = *cap ? *cap * 2 : 256;
    FtItem *ni = moka_realloc(d->items, (size_t)*cap * sizeof *ni);
    if (!ni) return -1;
    d->items = ni;
  }
  if (!(d->items[d->n].path = moka_strdup(path))) return -1;
  d->items[d->n].label = label;
  d->n++;
  return 0;
}

/* Every image file below root+rel (sorted, recursively), added with `label`. */
static int scan_class(FtDataset *d, int *cap, const char *root, const char *rel, int label,
                      int depth) {
  if (depth > MAX_DEPTH)
    return moka_errorf("'%s%s': folders nested more than %d deep (a symbolic link loop?)", root,
                       rel, MAX_DEPTH);
  char path[4096];
  snprintf(path, sizeof path, "%s%s", root, rel);
  char **names;
  int n;
  if (list_dir(path, &names, &n)) return -1;
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    char sub[4096], full[4096];
    if (snprintf(sub, sizeof sub, "%s/%s", rel, names[i]) >= (int)sizeof sub) {
      rc = moka_errorf("path too long: '%s%s/%s'", root, rel, names[i]);
      break;
    }
    snprintf(full, sizeof full, "%s%s", root, sub);
    if (is_dir(full))
      rc = scan_class(d, cap, root, sub, label, depth + 1);
    else if (ft_is_image_name(names[i]))
      rc = add_item(d, cap, sub, label);
    else
      d->n_ignored++;
  }
  free_names(names, n);
  return rc;
}

static int read_label_names(const char *path, char ***out, int *n) {
  *out = NULL;
  *n = 0;
  uint8_t *data;
  size_t len;
  if (moka_read_file(path, &data, &len)) return -1;
  int rc = 0, cap = 0;
  char *save = NULL;
  for (char *line = strtok_r((char *)data, "\n", &save); line && !rc;
       line = strtok_r(NULL, "\n", &save)) {
    size_t k = strlen(line);
    while (k && (line[k - 1] == '\r' || line[k - 1] == ' ' || line[k - 1] == '\t')) line[--k] = 0;
    if (!k) continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = moka_realloc(*out, (size_t)cap * sizeof *nn);
      if (!nn) {
        rc = -1;
        break;
      }
      *out = nn;
    }
    if (!((*out)[*n] = moka_strdup(line))) rc = -1;
    else (*n)++;
  }
  free(data);
  if (!rc && *n == 0) rc = moka_errorf("labels file '%s' names no class", path);
  if (rc) {
    free_names(*out, *n);
    *out = NULL;
    *n = 0;
  }
  return rc;
}

/* Common checks on a dataset just read. */
static int check_classes(const FtDataset *d, const char *data) {
  if (d->n == 0)
    return moka_errorf("'%s': no images found (expected one subfolder per class holding .jpg/.png "
                       "files, or a list file of \"path label\" lines)",
                       data);
  if (d->n_classes < 2)
    return moka_errorf("'%s': only one class ('%s'): a classifier needs at least 2 classes (one "
                       "subfolder per class)",
                       data, d->n_classes ? d->classes[0] : "");
  return 0;
}

static int read_folder(const char *data, const char *labels_file, FtDataset *d) {
  size_t dl = strlen(data);
  d->root = moka_malloc(dl + 2);
  if (!d->root) return -1;
  snprintf(d->root, dl + 2, "%s%s", data, dl && data[dl - 1] == '/' ? "" : "/");
  char **names;
  int n;
  if (list_dir(data, &names, &n)) return -1;
  /* class folders, and loose images (a common mistake: no class folders) */
  int n_loose = 0, n_classes = 0;
  char **classes = moka_calloc((size_t)n + 1, sizeof *classes);
  if (!classes) {
    free_names(names, n);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    char full[4096];
    snprintf(full, sizeof full, "%s%s", d->root, names[i]);
    if (is_dir(full))
      classes[n_classes++] = names[i], names[i] = NULL;
    else if (ft_is_image_name(names[i]))
      n_loose++;
  }
  free_names(names, n);
  d->classes = classes;
  d->n_classes = n_classes;
  if (n_classes == 0) {
    if (n_loose)
      return moka_errorf("'%s' holds %d image(s) but no class subfolders: put each class's images "
                         "in its own subfolder (e.g. %scat/*.jpg, %sdog/*.jpg)",
                         data, n_loose, d->root, d->root);
    return moka_errorf("'%s': no images found (expected one subfolder per class holding .jpg/.png "
                       "files)",
                       data);
  }
  if (labels_file && *labels_file) {
    /* the labels file fixes the order; it must name exactly the subfolders */
    char **want;
    int nw;
    if (read_label_names(labels_file, &want, &nw)) return -1;
    int rc = 0;
    for (int i = 0; i < nw && !rc; i++) {
      bool found = false;
      for (int k = 0; k < n_classes; k++) found |= !strcmp(want[i], classes[k]);
      if (!found)
        rc = moka_errorf("labels file '%s' line %d names class '%s', but '%s' has no subfolder of "
                         "that name",
                         labels_file, i + 1, want[i], data);
    }
    for (int k = 0; k < n_classes && !rc; k++) {
      bool found = false;
      for (int i = 0; i < nw; i++) found |= !strcmp(want[i], classes[k]);
      if (!found)
        rc = moka_errorf("'%s' has a subfolder '%s' that labels file '%s' does not name (it names "
                         "%d classes; the folder has %d)",
                         data, classes[k], labels_file, nw, n_classes);
    }
    if (rc) {
      free_names(want, nw);
      return -1;
    }
    free_names(d->classes, d->n_classes);
    d->classes = want;
    d->n_classes = nw;
  }
  int cap = 0;
  for (int k = 0; k < d->n_classes; k++) {
    int before = d->n;
    if (scan_class(d, &cap, d->root, d->classes[k], k, 0)) return -1;
    if (d->n == before && d->n_classes >= 2)
      return moka_errorf("class folder '%s%s' holds no images (.jpg/.png): add images or remove "
                         "the folder",
                         d->root, d->classes[k]);
  }
  return check_classes(d, data);
}

static int read_list(const char *list, const char *root, const char *labels_file, FtDataset *d,
                     const FtDataset *train) {
  if (root && *root) {
    size_t rl = strlen(root);
    d->root = moka_malloc(rl + 2);
    if (!d->root) return -1;
    snprintf(d->root, rl + 2, "%s%s", root, root[rl - 1] == '/' ? "" : "/");
  } else {
    const char *slash = strrchr(list, '/');
    size_t rl = slash ? (size_t)(slash - list + 1) : 0;
    d->root = moka_malloc(rl + 1);
    if (!d->root) return -1;
    memcpy(d->root, list, rl);
    d->root[rl] = 0;
  }
  ListEntry *e;
  int n;
  if (list_file_read(list, &e, &n)) return -1;
  int rc = 0, cap = 0, max_label = -1;
  for (int i = 0; i < n && !rc; i++) {
    if (!e[i].path && !e[i].error) continue; /* blank line */
    if (e[i].error) {
      rc = moka_errorf("%s:%d: %s: '%s'", list, e[i].line, e[i].error, e[i].text ? e[i].text : "");
      break;
    }
    if (e[i].label < 0) {
      rc = moka_errorf("%s:%d: negative label %d", list, e[i].line, e[i].label);
      break;
    }
    if (train && e[i].label >= train->n_classes) {
      rc = moka_errorf("%s:%d: label %d, but the training data has %d classes (labels 0..%d)", list,
                       e[i].line, e[i].label, train->n_classes, train->n_classes - 1);
      break;
    }
    if (e[i].label > max_label) max_label = e[i].label;
    rc = add_item(d, &cap, e[i].path, e[i].label);
  }
  list_file_free(e, n);
  if (rc) return -1;
  if (train) {
    d->n_classes = train->n_classes;
    d->classes = moka_calloc((size_t)d->n_classes, sizeof *d->classes);
    if (!d->classes) return -1;
    for (int k = 0; k < d->n_classes; k++)
      if (!(d->classes[k] = moka_strdup(train->classes[k]))) return -1;
    if (d->n == 0) return moka_errorf("validation list '%s' lists no images", list);
    return 0;
  }
  if (labels_file && *labels_file) {
    if (read_label_names(labels_file, &d->classes, &d->n_classes)) return -1;
    if (max_label >= d->n_classes) {
      for (int i = 0; i < d->n; i++)
        if (d->items[i].label >= d->n_classes)
          return moka_errorf("'%s' uses label %d (%s), but labels file '%s' names only %d classes "
                             "(labels 0..%d)",
                             list, d->items[i].label, d->items[i].path, labels_file, d->n_classes,
                             d->n_classes - 1);
    }
  } else {
    d->n_classes = max_label + 1;
    d->classes = moka_calloc((size_t)d->n_classes + 1, sizeof *d->classes);
    if (!d->classes) return -1;
    for (int k = 0; k < d->n_classes; k++) {
      char buf[32];
      snprintf(buf, sizeof buf, "%d", k);
      if (!(d->classes[k] = moka_strdup(buf))) return -1;
    }
  }
  if (check_classes(d, list)) return -1;
  int *counts = moka_calloc((size_t)d->n_classes, sizeof *counts);
  if (!counts) return -1;
  ft_dataset_class_counts(d, counts);
  for (int k = 0; k < d->n_classes && !rc; k++)
    if (counts[k] == 0)
      rc = moka_errorf("'%s' has no image with label %d ('%s'): labels must be 0..%d with images "
                       "for each%s",
                       list, k, d->classes[k], d->n_classes - 1,
                       labels_file && *labels_file ? " (does the labels file match the list?)" : "");
  free(counts);
  return rc;
}

int ft_dataset_read(const char *data, const char *root, const char *labels_file, FtDataset *out) {
  memset(out, 0, sizeof *out);
  struct stat st;
  int rc;
  if (stat(data, &st) != 0)
    rc = moka_errorf("'%s': %s (give a folder with one subfolder per class, or a list file)", data,
                     strerror(errno));
  else if (S_ISDIR(st.st_mode))
    rc = read_folder(data, labels_file, out);
  else
    rc = read_list(data, root, labels_file, out, NULL);
  if (rc) ft_dataset_free(out);
  return rc;
}

int ft_dataset_read_val(const char *val, const char *root, const FtDataset *train, FtDataset *out) {
  memset(out, 0, sizeof *out);
  struct stat st;
  int rc = 0;
  if (stat(val, &st) != 0) {
    rc = moka_errorf("validation set '%s': %s", val, strerror(errno));
  } else if (S_ISDIR(st.st_mode)) {
    FtDataset v;
    memset(&v, 0, sizeof v);
    size_t dl = strlen(val);
    v.root = moka_malloc(dl + 2);
    if (!v.root) return -1;
    snprintf(v.root, dl + 2, "%s%s", val, dl && val[dl - 1] == '/' ? "" : "/");
    if (list_dir(val, &v.classes, &v.n_classes)) {
      ft_dataset_free(&v);
      return -1;
    }
    /* map each of the val folder's classes to the training label of that name */
    int cap = 0;
    out->root = v.root;
    v.root = NULL;
    for (int k = 0; k < v.n_classes && !rc; k++) {
      char full[4096];
      snprintf(full, sizeof full, "%s%s", out->root, v.classes[k]);
      if (!is_dir(full)) continue;
      int label = -1;
      for (int t = 0; t < train->n_classes; t++)
        if (!strcmp(train->classes[t], v.classes[k])) label = t;
      if (label < 0) {
        rc = moka_errorf("validation folder '%s' has a class '%s' that the training data does not "
                         "have",
                         val, v.classes[k]);
        break;
      }
      rc = scan_class(out, &cap, out->root, v.classes[k], label, 0);
    }
    ft_dataset_free(&v);
    if (!rc && out->n == 0) rc = moka_errorf("validation folder '%s': no images found", val);
    if (!rc) {
      out->n_classes = train->n_classes;
      out->classes = moka_calloc((size_t)train->n_classes, sizeof *out->classes);
      if (!out->classes) rc = -1;
      for (int k = 0; k < train->n_classes && !rc; k++)
        if (!(out->classes[k] = moka_strdup(train->classes[k]))) rc = -1;
    }
  } else {
    rc = read_list(val, root, NULL, out, train);
  }
  if (rc) ft_dataset_free(out);
  return rc;
}

void ft_dataset_free(FtDataset *d) {
  if (!d) return;
  for (int i = 0; i < d->n; i++) free(d->items[i].path);
  free(d->items);
  if (d->classes) free_names(d->classes, d->n_classes);
  free(d->root);
  memset(d, 0, sizeof *d);
}

void ft_dataset_class_counts(const FtDataset *d, int *counts) {
  memset(counts, 0, sizeof *counts * (size_t)d->n_classes);
  for (int i = 0; i < d->n; i++)
    if (d->items[i].label >= 0 && d->items[i].label < d->n_classes) counts[d->items[i].label]++;
}

/* Fisher-Yates from the end with a uniform draw in [0, i] (boost's
 * uniform_int on mt19937, as caffe::shuffle; rejection keeps it unbiased). */
static void shuffle_ints(int *a, int n, Rng *r) {
  for (int i = n - 1; i > 0; i--) {
    uint32_t range = (uint32_t)i + 1, limit = UINT32_MAX - UINT32_MAX % range, x;
    do x = rng_u32(r);
    while (x >= limit);
    int j = (int)(x % range), t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

void ft_shuffle(int *idx, int n, uint32_t seed) {
  Rng r;
  rng_seed(&r, seed);
  shuffle_ints(idx, n, &r);
}

int ft_split(const FtDataset *d, double val_fraction, uint32_t seed, FtSplit *out) {
  memset(out, 0, sizeof *out);
  if (!(val_fraction > 0 && val_fraction < 1))
    return moka_errorf("--val_fraction must be between 0 and 1 (exclusive), got %g", val_fraction);
  out->train = moka_malloc(sizeof(int) * ((size_t)d->n + 1));
  out->val = moka_malloc(sizeof(int) * ((size_t)d->n + 1));
  int *cls = moka_malloc(sizeof(int) * ((size_t)d->n + 1));
  if (!out->train || !out->val || !cls) {
    free(cls);
    ft_split_free(out);
    return -1;
  }
  Rng r;
  rng_seed(&r, seed);
  for (int k = 0; k < d->n_classes; k++) {
    int m = 0;
    for (int i = 0; i < d->n; i++)
      if (d->items[i].label == k) cls[m++] = i;
    if (m == 0) continue;
    shuffle_ints(cls, m, &r);
    int nv = (int)floor(m * val_fraction + 0.5);
    if (nv < 1 && m >= 2) nv = 1;
    if (nv > m - 1) nv = m - 1;
    if (m == 1)
      LOG_WARN("class '%s' has only 1 image (%s%s): it is used for training only, with no "
               "validation image",
               d->classes[k], d->root, d->items[cls[0]].path);
    /* validation: grouped by class, in file order within the class */
    int first_val = out->n_val;
    for (int i = 0; i < nv; i++) out->val[out->n_val++] = cls[i];
    for (int i = first_val + 1; i < out->n_val; i++) /* insertion sort: file order */
      for (int j = i; j > first_val && out->val[j - 1] > out->val[j]; j--) {
        int t = out->val[j];
        out->val[j] = out->val[j - 1];
        out->val[j - 1] = t;
      }
    for (int i = nv; i < m; i++) out->train[out->n_train++] = cls[i];
  }
  free(cls);
  shuffle_ints(out->train, out->n_train, &r);
  if (out->n_val == 0) {
    ft_split_free(out);
    return moka_errorf("no validation images: every class has a single image (give more images, "
                       "or a validation set with --val)");
  }
  return 0;
}

void ft_split_free(FtSplit *s) {
  free(s->train);
  free(s->val);
  memset(s, 0, sizeof *s);
}

int ft_write_list(const FtDataset *d, const int *idx, int n, const char *path) {
  size_t cap = 1024, len = 0;
  char *buf = moka_malloc(cap);
  if (!buf) return -1;
  for (int i = 0; i < n; i++) {
    const FtItem *it = &d->items[idx[i]];
    size_t need = strlen(d->root) + strlen(it->path) + 16;
    if (len + need >= cap) {
      while (len + need >= cap) cap *= 2;
      char *nb = moka_realloc(buf, cap);
      if (!nb) {
        free(buf);
        return -1;
      }
      buf = nb;
    }
    len += (size_t)snprintf(buf + len, cap - len, "%s%s %d\n", d->root, it->path, it->label);
  }
  int rc = moka_write_file_atomic(path, buf, len);
  free(buf);
  return rc;
}

int ft_write_labels(const FtDataset *d, const char *path) {
  size_t len = 0;
  for (int k = 0; k < d->n_classes; k++) len += strlen(d->classes[k]) + 1;
  char *buf = moka_malloc(len + 1), *p = buf;
  if (!buf) return -1;
  for (int k = 0; k < d->n_classes; k++) p += sprintf(p, "%s\n", d->classes[k]);
  int rc = moka_write_file_atomic(path, buf, len);
  free(buf);
  return rc;
}
