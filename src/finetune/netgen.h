/* netgen.h — writing the Caffe files of a fine-tuning run from a deploy
 * prototxt: train_val.prototxt, deploy.prototxt and solver.prototxt, as
 * ordinary, commented Caffe text files (they parse with Caffe's and moka's
 * readers; every choice is explained in a comment beside it).
 *
 * train_val = the deploy net with
 *   - its input (the legacy `input:` header or an Input layer) replaced by two
 *     Data layers: TRAIN (train LMDB, random crop of the input size, random
 *     mirror, mean) and TEST (val LMDB, centre crop, mean);
 *   - BatchNorm statistics frozen (use_global_stats: true, both phases) or
 *     computed per batch in TRAIN (the field removed: Caffe's default);
 *   - the last InnerProduct renamed (fc1000 -> fc<N>) with num_output = N,
 *     lr_mult 10/20, decay_mult 1/0 and gaussian/constant fillers, so that it
 *     is initialised afresh instead of copied from the pretrained weights;
 *   - the final Softmax replaced by SoftmaxWithLoss (both phases) and
 *     Accuracy (TEST; top-1, and top-5 when there are more than 5 classes).
 * deploy = the deploy net with the renamed classifier (and the new input
 * size, when one is asked for: the last pooling then becomes global so that
 * the classifier still sees 1x1 features).
 */
#ifndef MOKA_FT_NETGEN_H
#define MOKA_FT_NETGEN_H

#include <stdbool.h>

typedef enum FtBnMode { FT_BN_FROZEN = 0, FT_BN_BATCH = 1 } FtBnMode;

typedef struct FtNetSpec {
  int n_classes;
  const char *classifier_name;  /* NULL/"": derived (fc1000 -> fc<N>) */
  int input_size;               /* 0: the deploy's input size */
  int batch, val_batch;
  int resize;                   /* the LMDB images' size (for comments) */
  int n_train, n_val;           /* (for comments) */
  const char *train_lmdb, *val_lmdb; /* as written in data_param.source */
  const char *mean_file;        /* NULL: mean_value instead */
  int n_mean_values;
  float mean_values[4];
  const char *mean_why;         /* where the mean comes from (comment) */
  bool mirror;
  FtBnMode bn;
  const char *bn_why;           /* why this BN mode (comment) */
  float bn_maf;                 /* > 0: moving_average_fraction (batch mode) */
  bool from_scratch;            /* no --weights: add MSRA fillers to Convolutions */
  float cls_lr_mult, cls_bias_lr_mult; /* 10, 20 */
  const char *command;          /* the command that wrote the files (header comment) */
} FtNetSpec;

typedef struct FtNetInfo {
  char name[256];               /* the net's name */
  int channels, height, width;  /* the deploy's input (C, H, W) */
  int crop;                     /* the input size trained at */
  char input_blob[256];         /* the image blob ("data") */
  char classifier_old[256], classifier_new[256];
  int old_outputs;
  char logits[256];             /* the new classifier's top */
  char prob[256];               /* the deploy's Softmax top ("prob") */
  char pool_made_global[256];   /* the pooling made global (input_size), or "" */
  int n_bn;                     /* BatchNorm layers */
} FtNetInfo;

/* Read `deploy_path` and write the two net texts (malloc'd; free them).
 * Errors: no single image input, no InnerProduct classifier, layers after the
 * classifier other than a Softmax, a non-square input without input_size. */
int ft_net_write(const char *deploy_path, const FtNetSpec *spec, char **train_val, char **deploy,
                 FtNetInfo *info);

typedef struct FtSolverSpec {
  const char *net;              /* train_val.prototxt as written in `net:` */
  int n_train, n_val, batch, val_batch;
  int epochs;
  double base_lr, momentum, weight_decay, gamma;
  int n_steps;
  double steps[16];             /* lr drops, as fractions of the run */
  const char *snapshot_prefix;
  bool gpu;
  int device_id;
  int seed;
  bool from_scratch;            /* no pretrained weights (comments only) */
  const char *command;
} FtSolverSpec;

/* Iterations per epoch: ceil(n_train / batch). */
int ft_iters_per_epoch(int n_train, int batch);
/* The multistep stepvalues: for each fraction f, round(f * epochs) epochs
 * (at least 1) times iters_per_epoch; increasing, below max_iter. Returns
 * their count (<= 16). */
int ft_stepvalues(const FtSolverSpec *s, int *out);
/* solver.prototxt text (malloc'd). */
char *ft_solver_text(const FtSolverSpec *s);

#endif
