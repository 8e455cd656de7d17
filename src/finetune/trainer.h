/* trainer.h — the training stage of `moka finetune`: Caffe's solver
 * (solver.h) driven epoch by epoch.
 *
 *   - builds the solver from DIR/solver.prototxt (the nets, the pretrained
 *     weights copied by layer name), or resumes from the newest complete
 *     snapshot of an earlier run (its .solverstate exists: it is written
 *     after its .caffemodel, both atomically); solver_restore puts the Data
 *     layers where the interrupted run was;
 *   - after each epoch (the solver snapshots there) validates on exactly the
 *     validation images (each once; Caffe's test loop would wrap around
 *     into the first records), logging Caffe's "Test net output" lines;
 *     keeps the best epoch's weights as DIR/best.caffemodel (atomic write)
 *     and removes older snapshots beyond --keep_snapshots;
 *   - SIGINT / SIGTERM: the current iteration finishes, a snapshot is
 *     written, and the run stops with a message saying how to resume (a
 *     second Ctrl-C quits at once);
 *   - progress: Caffe's log lines go to `log`; on a terminal, one live line
 *     (epoch, iteration, img/s, loss, lr, ETA) on stderr, and a summary line
 *     per epoch.
 */
#ifndef MOKA_FT_TRAINER_H
#define MOKA_FT_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "finetune/history.h"
#include "layer.h"

typedef struct FtTrainConfig {
  const char *dir;             /* the run's folder (best.caffemodel, history files) */
  const char *solver_file;     /* DIR/solver.prototxt */
  const char *weights;         /* pretrained weights (a fresh start only); NULL = fillers */
  Backend backend;
  int device;                  /* CUDA device (MOKA_BACKEND_CUDA) */
  int n_classes;
  int n_val;                   /* validation records (the val LMDB's size) */
  int batch, val_batch;
  int epochs, iters_per_epoch;
  const char *logits;          /* the classifier's top blob */
  const char *label;           /* "label" */
  const char *loss;            /* "loss" */
  int keep_snapshots;          /* epoch snapshots kept (>= 1); best.caffemodel is kept apart */
  bool tty;                    /* stderr is a terminal: live progress line */
  FILE *log;                   /* Caffe's log lines (NULL: leave the log stream alone) */
} FtTrainConfig;

typedef struct FtTrainResult {
  bool interrupted;
  bool resumed;
  int resumed_from;            /* iteration resumed from */
  int iter;                    /* iterations done */
  char snapshot[4200];         /* the last .solverstate written ("" if none) */
} FtTrainResult;

/* Train (or resume) to max_iter. `h` holds the history loaded from DIR and
 * is updated and saved after every epoch. Returns 0 (finished or
 * interrupted: see r->interrupted) or -1 with moka_error(). */
int ft_train(const FtTrainConfig *c, FtHistory *h, FtTrainResult *r);

/* The newest PREFIX_iter_N.solverstate (with its .caffemodel) in the
 * prefix's folder: 1 and the path + N when there is one, 0 when none. */
int ft_find_snapshot(const char *prefix, char *path, size_t n, int *iter);

/* The live progress line (no '\r'), e.g.
 *   "epoch 3/30  iter 1020/10950  41.8 img/s  loss 0.4132  lr 0.001  ETA 1h02m" */
typedef struct FtProgress {
  int epoch, epochs, iter, max_iter;
  double img_per_s, loss, lr, eta_s;
  const char *note;            /* e.g. "validating 3/12"; NULL = none */
} FtProgress;
void ft_progress_format(char *buf, size_t n, const FtProgress *p);
/* "42s", "3m05s", "1h02m", "2d03h" */
void ft_format_duration(char *buf, size_t n, double seconds);

#endif
