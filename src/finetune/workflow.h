/* workflow.h — `moka finetune`: from a folder of images (or a list file) and
 * a deploy prototxt (+ pretrained weights) to a fine-tuned model, a report
 * and ordinary Caffe files, in stages that each leave a marker
 * DIR/.done/<stage> (written atomically, only once the stage is complete):
 *
 *   prepare     read DATA, split train/val (stratified, seeded), write
 *               train.txt, val.txt (absolute paths) and labels.txt
 *   train_lmdb  convert_imageset -> DIR/train_lmdb (bad files skipped and
 *   val_lmdb    listed in DIR/train_lmdb.skipped.txt, val_lmdb.skipped.txt)
 *   mean        compute_image_mean -> DIR/mean.binaryproto (unless a mean is given)
 *   files       train_val.prototxt, deploy.prototxt, solver.prototxt
 *   train       the solver, epoch by epoch (trainer.h)
 * then the report (report.h). Rerunning the same command skips completed
 * stages and resumes training from the newest snapshot; a stage that did not
 * complete is redone from scratch (its partial output removed). The settings
 * are recorded in DIR/finetune.cfg: once the data are prepared, a rerun with
 * different ones is refused (use another --out), except those that do not
 * change the result (--gpu, --keep_snapshots).
 */
#ifndef MOKA_FT_WORKFLOW_H
#define MOKA_FT_WORKFLOW_H

#include <stdbool.h>

#include "layer.h"

typedef struct FtOptions {
  const char *model;           /* deploy prototxt (required) */
  const char *weights;         /* pretrained caffemodel; NULL/"" = train from scratch */
  const char *data;            /* folder of class folders, or list file (required) */
  const char *val;             /* validation folder/list; NULL = split off val_fraction */
  const char *root;            /* root of a list file's paths (default: its folder) */
  const char *labels;          /* class names file (optional) */
  const char *out;             /* the run's folder (required) */
  double val_fraction;         /* 0.1 */
  int epochs, batch, val_batch;
  double lr, lr_gamma, momentum, weight_decay;
  const char *lr_steps;        /* fractions of the run, "0.089,0.278,0.667,0.944" */
  int resize;                  /* 0: 256, or input_size * 256/224 */
  int input_size;              /* 0: the deploy's */
  bool encoded;                /* store JPEG/PNG bytes in the LMDBs */
  const char *mean_file, *mean_value;
  const char *bn;              /* "auto", "frozen", "batch" */
  double bn_maf;               /* 0: Caffe's default (0.999) */
  bool mirror;
  const char *classifier_name;
  double cls_lr_mult;          /* 0 = auto: 10 with --weights, 1 from scratch (bias: twice) */
  int seed;
  Backend backend;
  const char *gpu;             /* as given (for solver_mode/device_id), "" = CPU */
  int keep_snapshots;
  bool quiet;                  /* no log lines on stderr during preparation */
  const char *command;         /* the command line (recorded in the files) */
} FtOptions;

void ft_options_default(FtOptions *o);

typedef struct FtOutcome {
  bool interrupted;
  double best_val_acc;         /* -1: no epoch finished */
  int best_epoch;
  int n_classes;
} FtOutcome;

/* Run (or resume) the workflow. Returns 0 (finished, or interrupted: see
 * outcome), -1 with moka_error(). */
int ft_run(const FtOptions *o, FtOutcome *outcome);

#endif
