/* report.h — DIR/report.html: one self-contained page (its PNG charts are
 * embedded as base64 data: URIs and also written beside it as loss.png,
 * accuracy.png, per_class.png, confusion.png) with the loss and accuracy
 * curves, per-class accuracy, the confusion matrix and the top confusions,
 * the time per epoch, the data and the configuration used. */
#ifndef MOKA_FT_REPORT_H
#define MOKA_FT_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "finetune/history.h"

typedef struct FtReport {
  const char *dir;
  const char *data;              /* what was trained on (shown in the title) */
  char *const *classes;
  int n_classes;
  const int *train_counts;       /* [n_classes] images per class (NULL: unknown) */
  const int *val_counts;
  int n_train, n_val;            /* records in the LMDBs */
  int n_bad;                     /* files convert_imageset skipped */
  char *const *notes;            /* warnings from the data preparation */
  int n_notes;
  char *const *config_keys;      /* the configuration used */
  char *const *config_values;
  int n_config;
  const FtHistory *h;
  int iters_per_epoch, epochs;
  const char *usage;             /* how to use the result (a command line) */
  const char *status;            /* "finished", "interrupted at ..." */
} FtReport;

int ft_report_write(const FtReport *r);

/* Standard base64 of n bytes (malloc'd, NUL-terminated). */
char *ft_base64(const uint8_t *data, size_t n);

#endif
