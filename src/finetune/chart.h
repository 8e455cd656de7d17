/* chart.h — the report's charts, drawn on a Canvas: line charts (loss and
 * accuracy curves), horizontal bars (per-class accuracy) and a heat-map
 * (the confusion matrix), each with axes, tick labels and a title. */
#ifndef MOKA_FT_CHART_H
#define MOKA_FT_CHART_H

#include <stdbool.h>
#include <stdint.h>

#include "finetune/canvas.h"

typedef struct ChartSeries {
  const char *name;    /* legend text */
  const double *x, *y; /* [n] points (non-finite y values are skipped) */
  int n;
  uint32_t color;
  int thick;           /* line width in pixels */
  bool markers;        /* a square at every point */
} ChartSeries;

/* Line chart filling the canvas. y range [ymin, ymax]; pass ymin > ymax to
 * fit the data. */
int chart_lines(Canvas *c, const char *title, const char *xlabel, const char *ylabel,
                const ChartSeries *s, int n_series, double ymin, double ymax);
/* One horizontal bar per label, values in [0, 1] (shown as percentages). */
int chart_bars(Canvas *c, const char *title, char *const *labels, const double *values, int n);
/* K x K counts, row = true class, column = predicted; cells shaded by the
 * share of the row, with the count written in cells that are big enough. */
int chart_confusion(Canvas *c, const char *title, char *const *labels, const int *counts, int K);

/* A "nice" tick step (1, 2 or 5 times a power of ten) for a range. */
double chart_nice_step(double range, int max_ticks);

#endif
