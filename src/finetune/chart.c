/* chart.c — line charts, bars and the confusion heat-map of the report
 * (see chart.h). */
#include "finetune/chart.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define INK 0x222222u
#define GRID 0xe4e4e4u
#define AXIS 0x888888u

double chart_nice_step(double range, int max_ticks) {
  if (!(range > 0) || max_ticks < 1) return 1;
  const double raw = range / max_ticks, p = pow(10, floor(log10(raw)));
  const double f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

static void fmt_tick(char *buf, size_t n, double v, double step) {
  int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
  if (dec > 6) dec = 6;
  if (fabs(v) < step * 1e-6) v = 0;
  snprintf(buf, n, "%.*f", dec, v);
}

/* Shorten a label to at most `max` characters ("..." at the end). */
static void clip_label(char *out, size_t n, const char *in, int max) {
  if ((int)strlen(in) <= max || max < 4) {
    snprintf(out, n, "%.*s", max, in);
    return;
  }
  snprintf(out, n, "%.*s..", max - 2, in);
}

typedef struct Plot {
  int x0, y0, x1, y1; /* the data area in pixels: [x0, x1] x [y0, y1], y0 at the top */
  double xmin, xmax, ymin, ymax;
} Plot;

static double px(const Plot *p, double x) {
  return p->x0 + (x - p->xmin) / (p->xmax - p->xmin) * (p->x1 - p->x0);
}
static double py(const Plot *p, double y) {
  return p->y1 - (y - p->ymin) / (p->ymax - p->ymin) * (p->y1 - p->y0);
}

static void title_and_labels(Canvas *c, const char *title, const char *xlabel, const char *ylabel) {
  canvas_text(c, (c->w - canvas_text_width(title, 2)) / 2, 8, title, INK, 2);
  if (xlabel) canvas_text(c, (c->w - canvas_text_width(xlabel, 1)) / 2, c->h - 12, xlabel, INK, 1);
  if (ylabel) canvas_text_up(c, 6, (c->h + canvas_text_width(ylabel, 1)) / 2, ylabel, INK, 1);
}

int chart_lines(Canvas *c, const char *title, const char *xlabel, const char *ylabel,
                const ChartSeries *s, int n_series, double ymin, double ymax) {
  Plot p = {.x0 = 62, .y0 = 34, .x1 = c->w - 16, .y1 = c->h - 40};
  p.xmin = INFINITY, p.xmax = -INFINITY;
  double lo = INFINITY, hi = -INFINITY;
  for (int k = 0; k < n_series; k++)
    for (int i = 0; i < s[k].n; i++) {
      if (!isfinite(s[k].y[i])) continue;
      p.xmin = fmin(p.xmin, s[k].x[i]);
      p.xmax = fmax(p.xmax, s[k].x[i]);
      lo = fmin(lo, s[k].y[i]);
      hi = fmax(hi, s[k].y[i]);
    }
  if (!(p.xmax >= p.xmin)) p.xmin = 0, p.xmax = 1;
  if (p.xmin > 0 && p.xmin < 0.5 * p.xmax) p.xmin = 0; /* epochs: start the axis at 0 */
  if (p.xmax - p.xmin < 1e-12) p.xmax = p.xmin + 1;
  if (ymin > ymax) {
    ymin = isfinite(lo) ? lo : 0;
    ymax = isfinite(hi) ? hi : 1;
    if (ymin > 0 && ymin < 0.5 * ymax) ymin = 0; /* losses: start at 0 when it is near */
    if (ymax - ymin < 1e-9) ymax = ymin + 1;
    const double pad = 0.05 * (ymax - ymin);
    ymax += pad;
    if (ymin != 0) ymin -= pad;
  }
  p.ymin = ymin;
  p.ymax = ymax;
  title_and_labels(c, title, xlabel, ylabel);
  /* grid and tick labels */
  const double ys = chart_nice_step(p.ymax - p.ymin, 6);
  for (double v = ceil(p.ymin / ys) * ys; v <= p.ymax + ys * 1e-9; v += ys) {
    const int y = (int)floor(py(&p, v) + 0.5);
    canvas_rect(c, p.x0, y, p.x1 - p.x0 + 1, 1, GRID);
    char t[32];
    fmt_tick(t, sizeof t, v, ys);
    canvas_text(c, p.x0 - 6 - canvas_text_width(t, 1), y - 3, t, INK, 1);
  }
  const double xs = chart_nice_step(p.xmax - p.xmin, 8);
  for (double v = ceil(p.xmin / xs) * xs; v <= p.xmax + xs * 1e-9; v += xs) {
    const int x = (int)floor(px(&p, v) + 0.5);
    canvas_rect(c, x, p.y0, 1, p.y1 - p.y0 + 1, GRID);
    char t[32];
    fmt_tick(t, sizeof t, v, xs);
    canvas_text(c, x - canvas_text_width(t, 1) / 2, p.y1 + 6, t, INK, 1);
  }
  canvas_rect(c, p.x0, p.y1, p.x1 - p.x0 + 1, 1, AXIS);
  canvas_rect(c, p.x0, p.y0, 1, p.y1 - p.y0 + 1, AXIS);
  /* the series, clipped to the plot's y range */
  for (int k = 0; k < n_series; k++) {
    bool have = false;
    double lx = 0, ly = 0;
    for (int i = 0; i < s[k].n; i++) {
      if (!isfinite(s[k].y[i])) {
        have = false;
        continue;
      }
      double y = fmin(fmax(s[k].y[i], p.ymin), p.ymax);
      const double X = px(&p, s[k].x[i]), Y = py(&p, y);
      if (have) canvas_line(c, lx, ly, X, Y, s[k].color, s[k].thick);
      if (s[k].markers) canvas_rect(c, (int)X - 2, (int)Y - 2, 5, 5, s[k].color);
      lx = X, ly = Y, have = true;
    }
  }
  /* legend, top right, on a white box */
  int ly = p.y0 + 6, lw = 0, ln = 0;
  for (int k = 0; k < n_series; k++)
    if (s[k].name) lw = MOKA_MAX(lw, canvas_text_width(s[k].name, 1)), ln++;
  if (ln) {
    canvas_rect(c, p.x1 - lw - 30, p.y0 + 2, lw + 26, 12 * ln + 6, 0xffffff);
    canvas_frame(c, p.x1 - lw - 30, p.y0 + 2, lw + 26, 12 * ln + 6, GRID);
  }
  for (int k = 0; k < n_series; k++) {
    if (!s[k].name) continue;
    const int w = canvas_text_width(s[k].name, 1);
    const int x = p.x1 - w - 8;
    canvas_rect(c, x - 18, ly + 2, 12, 3, s[k].color);
    canvas_text(c, x, ly, s[k].name, INK, 1);
    ly += 12;
  }
  return 0;
}

/* white -> blue, by t in [0, 1] */
static uint32_t shade(double t) {
  t = fmin(fmax(t, 0), 1);
  const int r = (int)(255 - t * (255 - 33)), g = (int)(255 - t * (255 - 102)),
            b = (int)(255 - t * (255 - 172));
  return (uint32_t)(r << 16 | g << 8 | b);
}

int chart_bars(Canvas *c, const char *title, char *const *labels, const double *values, int n) {
  title_and_labels(c, title, "accuracy on the validation images (%)", NULL);
  const int label_w = 6 * 16 + 8, x0 = label_w + 6, x1 = c->w - 50, y0 = 36, y1 = c->h - 30;
  if (n < 1) return 0;
  const double row = (double)(y1 - y0) / n;
  for (int v = 0; v <= 100; v += 20) {
    const int x = x0 + (x1 - x0) * v / 100;
    canvas_rect(c, x, y0, 1, y1 - y0, GRID);
    char t[8];
    snprintf(t, sizeof t, "%d", v);
    canvas_text(c, x - canvas_text_width(t, 1) / 2, y1 + 4, t, INK, 1);
  }
  for (int i = 0; i < n; i++) {
    const int top = y0 + (int)(i * row), h = MOKA_MAX(1, (int)(row * 0.7));
    char lab[40];
    clip_label(lab, sizeof lab, labels[i], 16);
    if (row >= 8) canvas_text(c, x0 - 6 - canvas_text_width(lab, 1), top + (h - 7) / 2, lab, INK, 1);
    const double v = isfinite(values[i]) ? fmin(fmax(values[i], 0), 1) : 0;
    canvas_rect(c, x0, top, (int)((x1 - x0) * v + 0.5), h, shade(0.35 + 0.65 * v));
    if (row >= 8) {
      char t[16];
      if (isfinite(values[i]))
        snprintf(t, sizeof t, "%.0f%%", 100 * values[i]);
      else
        snprintf(t, sizeof t, "n/a");
      canvas_text(c, x0 + (int)((x1 - x0) * v) + 4, top + (h - 7) / 2, t, INK, 1);
    }
  }
  canvas_rect(c, x0, y0, 1, y1 - y0, AXIS);
  return 0;
}

int chart_confusion(Canvas *c, const char *title, char *const *labels, const int *counts, int K) {
  title_and_labels(c, title, "predicted class", "true class");
  if (K < 1) return 0;
  const int label_w = K <= 40 ? 6 * 12 + 6 : 0;
  const int x0 = 20 + label_w, y0 = 36 + (K <= 40 ? 0 : 0);
  const int avail = MOKA_MIN(c->w - x0 - 10, c->h - y0 - 30 - (K <= 40 ? label_w : 0));
  const int cell = MOKA_MAX(1, avail / K);
  for (int r = 0; r < K; r++) {
    long row_sum = 0;
    for (int k = 0; k < K; k++) row_sum += counts[r * K + k];
    for (int k = 0; k < K; k++) {
      const int v = counts[r * K + k];
      const double t = row_sum ? (double)v / row_sum : 0;
      const uint32_t col = r == k ? shade(t) : (v ? (uint32_t)(0xff0000 | (int)(255 - 200 * t) << 8 | (int)(255 - 200 * t)) : 0xffffffu);
      canvas_rect(c, x0 + k * cell, y0 + r * cell, cell, cell, col);
      if (cell >= 18 && v) {
        char t2[16];
        snprintf(t2, sizeof t2, "%d", v);
        const int w = canvas_text_width(t2, 1);
        if (w < cell - 2)
          canvas_text(c, x0 + k * cell + (cell - w) / 2, y0 + r * cell + (cell - 7) / 2, t2,
                      t > 0.6 ? 0xffffffu : INK, 1);
      }
    }
  }
  canvas_frame(c, x0 - 1, y0 - 1, K * cell + 2, K * cell + 2, AXIS);
  if (label_w && cell >= 8) {
    for (int r = 0; r < K; r++) {
      char lab[24];
      clip_label(lab, sizeof lab, labels[r], 12);
      canvas_text(c, x0 - 6 - canvas_text_width(lab, 1), y0 + r * cell + (cell - 7) / 2, lab, INK, 1);
      canvas_text_up(c, x0 + r * cell + (cell - 7) / 2, y0 + K * cell + 6 + canvas_text_width(lab, 1),
                     lab, INK, 1);
    }
  }
  return 0;
}
