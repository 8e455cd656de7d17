/* report.c — the HTML report of a fine-tuning run and its PNG charts (see
 * report.h). The page has no scripts and no external resources. */
#include "finetune/report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/canvas.h"
#include "finetune/chart.h"
#include "finetune/strbuf.h"
#include "finetune/trainer.h"
#include "util.h"

char *ft_base64(const uint8_t *d, size_t n) {
  static const char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *out = moka_malloc((n + 2) / 3 * 4 + 1), *o = out;
  if (!out) return NULL;
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    const uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
    *o++ = kAlpha[v >> 18];
    *o++ = kAlpha[(v >> 12) & 63];
    *o++ = kAlpha[(v >> 6) & 63];
    *o++ = kAlpha[v & 63];
  }
  if (i < n) {
    const uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
    *o++ = kAlpha[v >> 18];
    *o++ = kAlpha[(v >> 12) & 63];
    *o++ = i + 1 < n ? kAlpha[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
  *o = 0;
  return out;
}

static void html_text(StrBuf *b, const char *s) {
  for (; *s; s++) {
    switch (*s) {
      case '<': sb_puts(b, "&lt;"); break;
      case '>': sb_puts(b, "&gt;"); break;
      case '&': sb_puts(b, "&amp;"); break;
      case '"': sb_puts(b, "&quot;"); break;
      default: sb_append(b, s, 1);
    }
  }
}

/* Write the chart as DIR/<name> and embed it in the page. */
static int embed_png(StrBuf *b, const Canvas *c, const char *dir, const char *name, const char *alt) {
  uint8_t *png;
  size_t len;
  if (canvas_png(c, &png, &len)) return -1;
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int rc = moka_write_file_atomic(path, png, len);
  char *b64 = rc ? NULL : ft_base64(png, len);
  free(png);
  if (!b64) return -1;
  sb_printf(b, "<p><img src=\"data:image/png;base64,%s\" width=\"%d\" height=\"%d\" alt=\"", b64,
            c->w, c->h);
  html_text(b, alt);
  sb_printf(b, "\"><br><span class=\"small\">(also in %s)</span></p>\n", name);
  free(b64);
  return 0;
}

static int chart_loss(StrBuf *b, const FtReport *r) {
  const FtHistory *h = r->h;
  const int ipe = r->iters_per_epoch > 0 ? r->iters_per_epoch : 1;
  const int n = h->n_iters, ne = h->n_epochs;
  double *x = moka_malloc(sizeof(double) * ((size_t)n + 1)), *y = moka_malloc(sizeof(double) * ((size_t)n + 1));
  double *ex = moka_malloc(sizeof(double) * ((size_t)ne + 1)), *etl = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  double *evl = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  int rc = -1;
  Canvas c = {0};
  if (!x || !y || !ex || !etl || !evl || canvas_init(&c, 760, 360, 0xffffff)) goto done;
  for (int i = 0; i < n; i++) x[i] = (i + 1.0) / ipe, y[i] = h->loss[i];
  for (int i = 0; i < ne; i++) {
    ex[i] = h->epochs[i].iter / (double)ipe;
    etl[i] = h->epochs[i].train_loss;
    evl[i] = h->epochs[i].val_loss;
  }
  ChartSeries s[3] = {
      {"training loss, per iteration", x, y, n, 0xb8cde6, 1, false},
      {"training loss, epoch mean", ex, etl, ne, 0x2166ac, 2, true},
      {"validation loss", ex, evl, ne, 0xd6604d, 2, true},
  };
  chart_lines(&c, "Loss", "epoch", "loss", s, 3, 1, 0);
  rc = embed_png(b, &c, r->dir, "loss.png", "loss curves");
done:
  canvas_free(&c);
  free(x), free(y), free(ex), free(etl), free(evl);
  return rc;
}

static int chart_accuracy(StrBuf *b, const FtReport *r) {
  const FtHistory *h = r->h;
  const int ipe = r->iters_per_epoch > 0 ? r->iters_per_epoch : 1, ne = h->n_epochs;
  double *ex = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  double *tr = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  double *va = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  double *v5 = moka_malloc(sizeof(double) * ((size_t)ne + 1));
  int rc = -1;
  Canvas c = {0};
  if (!ex || !tr || !va || !v5 || canvas_init(&c, 760, 360, 0xffffff)) goto done;
  bool have5 = false;
  for (int i = 0; i < ne; i++) {
    ex[i] = h->epochs[i].iter / (double)ipe;
    tr[i] = h->epochs[i].train_acc;
    va[i] = h->epochs[i].val_acc;
    v5[i] = h->epochs[i].val_top5 >= 0 ? h->epochs[i].val_top5 : NAN;
    have5 |= h->epochs[i].val_top5 >= 0;
  }
  ChartSeries s[3] = {
      {"training (augmented batches)", ex, tr, ne, 0x2166ac, 2, true},
      {"validation, top-1", ex, va, ne, 0xd6604d, 2, true},
      {"validation, top-5", ex, v5, ne, 0x4d9221, 2, true},
  };
  chart_lines(&c, "Accuracy", "epoch", "accuracy", s, have5 ? 3 : 2, 0, 1);
  rc = embed_png(b, &c, r->dir, "accuracy.png", "accuracy curves");
done:
  canvas_free(&c);
  free(ex), free(tr), free(va), free(v5);
  return rc;
}

typedef struct Confusion {
  int t, p, n;
} Confusion;

static int cmp_confusion(const void *a, const void *b) {
  const Confusion *x = a, *y = b;
  if (x->n != y->n) return y->n - x->n;
  if (x->t != y->t) return x->t - y->t;
  return x->p - y->p;
}

static void section_classes(StrBuf *b, const FtReport *r, bool *ok) {
  const FtHistory *h = r->h;
  const int K = r->n_classes;
  const FtEpochStats *best = ft_history_best(h);
  double *acc = moka_malloc(sizeof(double) * ((size_t)K + 1));
  int *rows = moka_calloc((size_t)K + 1, sizeof(int));
  if (!acc || !rows) {
    free(acc), free(rows);
    *ok = false;
    return;
  }
  for (int k = 0; k < K; k++) {
    for (int j = 0; j < K; j++) rows[k] += h->confusion[k * K + j];
    acc[k] = rows[k] ? (double)h->confusion[k * K + k] / rows[k] : NAN;
  }
  sb_puts(b, "<h2>Per-class accuracy</h2>\n");
  if (!best) {
    sb_puts(b, "<p>No epoch has finished yet.</p>\n");
  } else {
    sb_printf(b, "<p>Validation images of each class whose top prediction is right, with the "
                 "weights of epoch %d (best.caffemodel).</p>\n", best->epoch);
    Canvas c = {0};
    if (canvas_init(&c, 760, 56 + 18 * MOKA_MIN(K, 200), 0xffffff) == 0) {
      chart_bars(&c, "Per-class accuracy", r->classes, acc, MOKA_MIN(K, 200));
      if (embed_png(b, &c, r->dir, "per_class.png", "per-class accuracy")) *ok = false;
    } else {
      *ok = false;
    }
    canvas_free(&c);
  }
  sb_puts(b, "<table><tr><th>label</th><th>class</th><th>training images</th><th>validation "
             "images</th><th>validation accuracy</th></tr>\n");
  for (int k = 0; k < K; k++) {
    sb_printf(b, "<tr><td>%d</td><td>", k);
    html_text(b, r->classes[k]);
    sb_puts(b, "</td>");
    if (r->train_counts) sb_printf(b, "<td>%d</td>", r->train_counts[k]); else sb_puts(b, "<td></td>");
    if (r->val_counts) sb_printf(b, "<td>%d</td>", r->val_counts[k]); else sb_puts(b, "<td></td>");
    if (best && isfinite(acc[k])) sb_printf(b, "<td>%.1f%%</td></tr>\n", 100 * acc[k]);
    else sb_puts(b, "<td>n/a</td></tr>\n");
  }
  sb_puts(b, "</table>\n");

  sb_puts(b, "<h2>Confusion matrix</h2>\n");
  if (best) {
    sb_printf(b, "<p>Rows: true class; columns: predicted class (epoch %d; confusion.tsv holds "
                 "the numbers).</p>\n", best->epoch);
    const int side = MOKA_MIN(760, MOKA_MAX(320, 26 * K + 200));
    Canvas c = {0};
    if (canvas_init(&c, side, side, 0xffffff) == 0) {
      chart_confusion(&c, "Confusion matrix", r->classes, h->confusion, K);
      if (embed_png(b, &c, r->dir, "confusion.png", "confusion matrix")) *ok = false;
    } else {
      *ok = false;
    }
    canvas_free(&c);
  } else {
    sb_puts(b, "<p>No epoch has finished yet.</p>\n");
  }

  sb_puts(b, "<h2>Top confusions</h2>\n");
  Confusion *list = moka_malloc(sizeof *list * ((size_t)K * K + 1));
  int n = 0;
  if (list && best)
    for (int t = 0; t < K; t++)
      for (int p = 0; p < K; p++)
        if (t != p && h->confusion[t * K + p] > 0) list[n++] = (Confusion){t, p, h->confusion[t * K + p]};
  if (n == 0) {
    sb_puts(b, best ? "<p>None: every validation image was classified correctly.</p>\n"
                    : "<p>No epoch has finished yet.</p>\n");
  } else {
    qsort(list, (size_t)n, sizeof *list, cmp_confusion);
    sb_puts(b, "<table><tr><th>true class</th><th>predicted as</th><th>images</th><th>share of "
               "the true class</th></tr>\n");
    for (int i = 0; i < n && i < 15; i++) {
      sb_puts(b, "<tr><td>");
      html_text(b, r->classes[list[i].t]);
      sb_puts(b, "</td><td>");
      html_text(b, r->classes[list[i].p]);
      sb_printf(b, "</td><td>%d</td><td>%.1f%%</td></tr>\n", list[i].n,
                rows[list[i].t] ? 100.0 * list[i].n / rows[list[i].t] : 0.0);
    }
    sb_puts(b, "</table>\n");
  }
  free(list);
  free(acc);
  free(rows);
}

static void section_epochs(StrBuf *b, const FtReport *r) {
  const FtHistory *h = r->h;
  sb_puts(b, "<h2>Time per epoch</h2>\n");
  if (!h->n_epochs) {
    sb_puts(b, "<p>No epoch has finished yet.</p>\n");
    return;
  }
  double total = 0;
  for (int i = 0; i < h->n_epochs; i++) total += h->epochs[i].seconds;
  char dur[32];
  ft_format_duration(dur, sizeof dur, total);
  sb_printf(b, "<p>%d epoch(s) in %s (training and validation; a resumed epoch counts the part run "
               "after the resume).</p>\n", h->n_epochs, dur);
  sb_puts(b, "<table><tr><th>epoch</th><th>iterations</th><th>time</th><th>training img/s</th>"
             "<th>train loss</th><th>train acc</th><th>val loss</th><th>val acc</th><th>val top-5</th>"
             "</tr>\n");
  for (int i = 0; i < h->n_epochs; i++) {
    const FtEpochStats *e = &h->epochs[i];
    ft_format_duration(dur, sizeof dur, e->seconds);
    sb_printf(b, "<tr%s><td>%d</td><td>%d</td><td>%s</td><td>%.1f</td><td>%.4f</td><td>%.3f</td>"
                 "<td>%.4f</td><td>%.3f</td>",
              e->epoch == h->best_epoch ? " class=\"best\"" : "", e->epoch, e->iter, dur,
              e->img_per_s, e->train_loss, e->train_acc, e->val_loss, e->val_acc);
    if (e->val_top5 >= 0) sb_printf(b, "<td>%.3f</td></tr>\n", e->val_top5);
    else sb_puts(b, "<td>n/a</td></tr>\n");
  }
  sb_puts(b, "</table>\n");
}

int ft_report_write(const FtReport *r) {
  const FtHistory *h = r->h;
  const FtEpochStats *best = ft_history_best(h);
  StrBuf b = {0};
  bool ok = true;
  sb_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
              "<title>moka fine-tuning report</title>\n<style>\n"
              "body{font-family:sans-serif;max-width:900px;margin:2em auto;padding:0 1em;color:#222}\n"
              "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
              "padding:3px 8px;text-align:left}th{background:#f0f0f0}\n"
              "tr.best td{background:#eaf2fa;font-weight:bold}.small{color:#777;font-size:small}\n"
              "pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}.big{font-size:1.3em}\n"
              "</style></head><body>\n<h1>moka fine-tuning report</h1>\n");
  sb_puts(&b, "<p class=\"big\">");
  if (best)
    sb_printf(&b, "Best validation accuracy: <b>%.1f%%</b> (epoch %d of %d)%s", 100 * best->val_acc,
              best->epoch, r->epochs, best->val_top5 >= 0 ? "" : ".");
  else
    sb_puts(&b, "No epoch has finished yet.");
  if (best && best->val_top5 >= 0) sb_printf(&b, ", top-5 %.1f%%.", 100 * best->val_top5);
  sb_puts(&b, "</p>\n<p>Data: ");
  html_text(&b, r->data ? r->data : "");
  sb_printf(&b, " &mdash; %d classes, %d training and %d validation images", r->n_classes,
            r->n_train, r->n_val);
  if (r->n_bad) sb_printf(&b, ", %d unreadable file(s) skipped", r->n_bad);
  sb_puts(&b, ". Status: ");
  html_text(&b, r->status ? r->status : "");
  sb_puts(&b, ".</p>\n");
  if (r->usage) {
    sb_puts(&b, "<p>Classify new images with the best weights:</p>\n<pre>");
    html_text(&b, r->usage);
    sb_puts(&b, "</pre>\n");
  }
  sb_puts(&b, "<h2>Loss</h2>\n<p>Training loss of every iteration (pale), its mean per epoch, and "
              "the loss on the validation images after each epoch. A validation loss that rises "
              "while the training loss falls is overfitting.</p>\n");
  if (chart_loss(&b, r)) ok = false;
  sb_puts(&b, "<h2>Accuracy</h2>\n<p>Share of images whose top class is right: the training "
              "batches as they were trained on (random crops and mirrors), and the validation "
              "images (centre crop) after each epoch.</p>\n");
  if (chart_accuracy(&b, r)) ok = false;
  section_classes(&b, r, &ok);
  section_epochs(&b, r);
  sb_puts(&b, "<h2>Data</h2>\n");
  if (r->n_notes == 0) {
    sb_puts(&b, "<p>No warnings while preparing the data.</p>\n");
  } else {
    sb_puts(&b, "<p>Warnings while preparing the data (files that could not be used are left "
                "out):</p>\n<pre>");
    for (int i = 0; i < r->n_notes && i < 200; i++) {
      html_text(&b, r->notes[i]);
      sb_puts(&b, "\n");
    }
    if (r->n_notes > 200) sb_printf(&b, "... and %d more (see train.log)\n", r->n_notes - 200);
    sb_puts(&b, "</pre>\n");
  }
  sb_puts(&b, "<h2>Configuration</h2>\n<table>\n");
  for (int i = 0; i < r->n_config; i++) {
    sb_puts(&b, "<tr><th>");
    html_text(&b, r->config_keys[i]);
    sb_puts(&b, "</th><td>");
    html_text(&b, r->config_values[i]);
    sb_puts(&b, "</td></tr>\n");
  }
  sb_puts(&b, "</table>\n<p>The files in this folder: train_val.prototxt, solver.prototxt, "
              "deploy.prototxt, labels.txt (ordinary Caffe files, commented), train.txt / val.txt "
              "(the split), train_lmdb / val_lmdb, best.caffemodel, snapshots/, train.log "
              "(Caffe's log lines), epochs.tsv / iterations.tsv / confusion.tsv (the numbers "
              "behind this page).</p>\n</body></html>\n");
  char *html = sb_take(&b);
  if (!html || !ok) {
    free(html);
    return moka_error_prefix("writing the report");
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/report.html", r->dir);
  int rc = moka_write_file_atomic(path, html, strlen(html));
  free(html);
  return rc;
}
