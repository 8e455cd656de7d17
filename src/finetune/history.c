/* history.c — the measurements of a fine-tuning run and their TSV files
 * (see history.h). */
#include "finetune/history.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune/strbuf.h"
#include "util.h"

int ft_history_init(FtHistory *h, int n_classes) {
  memset(h, 0, sizeof *h);
  h->n_classes = n_classes;
  h->confusion = moka_calloc((size_t)n_classes * n_classes + 1, sizeof *h->confusion);
  return h->confusion ? 0 : -1;
}

void ft_history_free(FtHistory *h) {
  free(h->loss);
  free(h->acc);
  free(h->epochs);
  free(h->confusion);
  memset(h, 0, sizeof *h);
}

int ft_history_add_iter(FtHistory *h, int iter, float loss, float acc) {
  if (iter != h->n_iters)
    return moka_errorf("internal: iteration %d recorded after %d", iter, h->n_iters);
  if (h->n_iters == h->cap_iters) {
    int ncap = h->cap_iters ? h->cap_iters * 2 : 1024;
    float *l = moka_realloc(h->loss, sizeof(float) * (size_t)ncap);
    if (!l) return -1;
    h->loss = l;
    float *a = moka_realloc(h->acc, sizeof(float) * (size_t)ncap);
    if (!a) return -1;
    h->acc = a;
    h->cap_iters = ncap;
  }
  h->loss[h->n_iters] = loss;
  h->acc[h->n_iters] = acc;
  h->n_iters++;
  return 0;
}

int ft_history_add_epoch(FtHistory *h, const FtEpochStats *e) {
  FtEpochStats *ne = moka_realloc(h->epochs, sizeof *ne * (size_t)(h->n_epochs + 1));
  if (!ne) return -1;
  h->epochs = ne;
  h->epochs[h->n_epochs++] = *e;
  return 0;
}

void ft_history_truncate(FtHistory *h, int iter) {
  if (h->n_iters > iter) h->n_iters = iter < 0 ? 0 : iter;
  while (h->n_epochs && h->epochs[h->n_epochs - 1].iter > iter) h->n_epochs--;
  if (h->best_epoch > h->n_epochs) {
    /* the best epoch was forgotten: the best among the remaining ones (its
     * confusion matrix is gone; the next evaluation writes a new one) */
    h->best_epoch = 0;
    memset(h->confusion, 0, sizeof *h->confusion * (size_t)h->n_classes * h->n_classes);
  }
}

const FtEpochStats *ft_history_best(const FtHistory *h) {
  return h->best_epoch >= 1 && h->best_epoch <= h->n_epochs ? &h->epochs[h->best_epoch - 1] : NULL;
}

static int read_opt(const char *path, char **text) {
  *text = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return errno == ENOENT ? 0 : moka_errorf("%s: %s", path, strerror(errno));
  uint8_t *d;
  size_t n;
  if (moka_read_file(path, &d, &n)) return -1;
  *text = (char *)d;
  return 0;
}

int ft_history_load(FtHistory *h, const char *dir) {
  char path[4200];
  char *t;
  int rc = 0;
  snprintf(path, sizeof path, "%s/iterations.tsv", dir);
  if (read_opt(path, &t)) return -1;
  char *save = NULL;
  int line_no = 0;
  for (char *line = t ? strtok_r(t, "\n", &save) : NULL; line && !rc;
       line = strtok_r(NULL, "\n", &save)) {
    line_no++;
    if (line[0] == '#' || line[0] == 'i') continue; /* header */
    int it;
    float l, a;
    if (sscanf(line, "%d %f %f", &it, &l, &a) != 3 || it != h->n_iters)
      rc = moka_errorf("%s:%d: malformed line '%s' (delete the file to start the record afresh)",
                       path, line_no, line);
    else
      rc = ft_history_add_iter(h, it, l, a);
  }
  free(t);
  if (rc) return -1;

  snprintf(path, sizeof path, "%s/epochs.tsv", dir);
  if (read_opt(path, &t)) return -1;
  save = NULL;
  line_no = 0;
  for (char *line = t ? strtok_r(t, "\n", &save) : NULL; line && !rc;
       line = strtok_r(NULL, "\n", &save)) {
    line_no++;
    if (line[0] == '#' || line[0] == 'e') continue;
    FtEpochStats e;
    int best;
    if (sscanf(line, "%d %d %lf %lf %lf %lf %lf %lf %lf %d", &e.epoch, &e.iter, &e.train_loss,
               &e.train_acc, &e.val_loss, &e.val_acc, &e.val_top5, &e.seconds, &e.img_per_s,
               &best) != 10 ||
        e.epoch != h->n_epochs + 1)
      rc = moka_errorf("%s:%d: malformed line '%s'", path, line_no, line);
    else if (!(rc = ft_history_add_epoch(h, &e)) && best)
      h->best_epoch = e.epoch;
  }
  free(t);
  if (rc) return -1;

  snprintf(path, sizeof path, "%s/confusion.tsv", dir);
  if (read_opt(path, &t)) return -1;
  if (t) {
    const int K = h->n_classes;
    char *p = t;
    int k = 0;
    while (*p && k < K * K) {
      if (*p == '#') { /* comment line */
        while (*p && *p != '\n') p++;
        continue;
      }
      char *end;
      long v = strtol(p, &end, 10);
      if (end == p) {
        p++;
        continue;
      }
      h->confusion[k++] = (int)v;
      p = end;
    }
    if (k != K * K) rc = moka_errorf("%s: expected a %dx%d matrix, found %d numbers", path, K, K, k);
    free(t);
  }
  return rc;
}

int ft_history_save(const FtHistory *h, const char *dir) {
  char path[4200];
  StrBuf b = {0};
  sb_puts(&b, "iter\tloss\taccuracy\n");
  for (int i = 0; i < h->n_iters; i++) sb_printf(&b, "%d\t%.6g\t%.6g\n", i, (double)h->loss[i], (double)h->acc[i]);
  char *t = sb_take(&b);
  snprintf(path, sizeof path, "%s/iterations.tsv", dir);
  int rc = t ? moka_write_file_atomic(path, t, strlen(t)) : -1;
  free(t);
  if (rc) return -1;

  sb_puts(&b, "epoch\titer\ttrain_loss\ttrain_acc\tval_loss\tval_acc\tval_top5\tseconds\timg_per_s\tbest\n");
  for (int i = 0; i < h->n_epochs; i++) {
    const FtEpochStats *e = &h->epochs[i];
    sb_printf(&b, "%d\t%d\t%.6g\t%.6g\t%.6g\t%.6g\t%.6g\t%.3f\t%.3f\t%d\n", e->epoch, e->iter,
              e->train_loss, e->train_acc, e->val_loss, e->val_acc, e->val_top5, e->seconds,
              e->img_per_s, e->epoch == h->best_epoch);
  }
  t = sb_take(&b);
  snprintf(path, sizeof path, "%s/epochs.tsv", dir);
  rc = t ? moka_write_file_atomic(path, t, strlen(t)) : -1;
  free(t);
  if (rc) return -1;

  if (h->best_epoch) {
    const int K = h->n_classes;
    sb_printf(&b, "# validation confusion matrix of epoch %d (row: true class, column: predicted; "
                  "label order of labels.txt)\n", h->best_epoch);
    for (int r = 0; r < K; r++)
      for (int c = 0; c < K; c++) sb_printf(&b, "%d%s", h->confusion[r * K + c], c + 1 < K ? "\t" : "\n");
    t = sb_take(&b);
    snprintf(path, sizeof path, "%s/confusion.tsv", dir);
    rc = t ? moka_write_file_atomic(path, t, strlen(t)) : -1;
    free(t);
  }
  return rc;
}
