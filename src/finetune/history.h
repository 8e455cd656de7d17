/* history.h — what a fine-tuning run measured, kept in DIR so that a resumed
 * run (and the report) sees the whole run:
 *   DIR/iterations.tsv  one line per training iteration: iter, loss, the
 *                       batch's top-1 accuracy (training images, augmented)
 *   DIR/epochs.tsv      one line per finished epoch: losses, accuracies,
 *                       time, speed (tab-separated, with a header line)
 *   DIR/confusion.tsv   the validation confusion matrix of the best epoch
 *                       (row = true class, column = predicted)
 * Each file is rewritten atomically after every epoch (and when a run is
 * interrupted), so a crash leaves the previous complete version.
 */
#ifndef MOKA_FT_HISTORY_H
#define MOKA_FT_HISTORY_H

typedef struct FtEpochStats {
  int epoch;           /* 1-based */
  int iter;            /* iterations done at its end */
  double train_loss;   /* mean training loss over the epoch's iterations */
  double train_acc;    /* mean top-1 accuracy of the training batches */
  double val_loss;     /* mean loss over the validation images */
  double val_acc;      /* top-1 accuracy over the validation images */
  double val_top5;     /* top-5 accuracy (-1 when there are 5 classes or fewer) */
  double seconds;      /* wall time of the epoch: training + validation */
  double img_per_s;    /* training images per second */
} FtEpochStats;

typedef struct FtHistory {
  int n_classes;
  int n_iters;         /* iterations recorded: entries 0..n_iters-1 */
  int cap_iters;
  float *loss;         /* [n_iters] */
  float *acc;          /* [n_iters] */
  int n_epochs;
  FtEpochStats *epochs; /* [n_epochs] */
  int best_epoch;      /* 1-based; 0 = none yet */
  int *confusion;      /* (K,K) of the best epoch: confusion[true*K + pred] */
} FtHistory;

int ft_history_init(FtHistory *h, int n_classes);
void ft_history_free(FtHistory *h);
/* Record iteration `iter` (must be h->n_iters). */
int ft_history_add_iter(FtHistory *h, int iter, float loss, float acc);
int ft_history_add_epoch(FtHistory *h, const FtEpochStats *e);
/* Forget iterations >= iter and epochs ending after iter (a resume from an
 * older snapshot). */
void ft_history_truncate(FtHistory *h, int iter);
/* The best epoch's stats, or NULL. */
const FtEpochStats *ft_history_best(const FtHistory *h);

/* Read the three files from dir (missing files = empty history). */
int ft_history_load(FtHistory *h, const char *dir);
int ft_history_save(const FtHistory *h, const char *dir);

#endif
