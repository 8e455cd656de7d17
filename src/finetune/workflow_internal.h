/* workflow_internal.h — what the files of `moka finetune`'s workflow share
 * (not part of the public API, which is workflow.h):
 *   workflow.c         the options, the log (DIR/train.log and the notes),
 *                      the recorded settings (finetune.cfg), ft_run
 *   workflow_stages.c  files, folders and stage markers; the stages that
 *                      prepare the data: prepare, train_lmdb / val_lmdb, mean
 */
#ifndef MOKA_FT_WORKFLOW_INTERNAL_H
#define MOKA_FT_WORKFLOW_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "finetune/workflow.h"

#define PATHN 4200
#define DIRN 3072 /* the run folder and input paths: PATHN leaves room for file names */

/* ---- files, folders and stage markers ---- */

int ft_make_dir(const char *path);
/* mkdir -p */
int ft_make_dirs(const char *path);
/* lstat succeeds (a dangling link exists too). */
bool ft_path_exists(const char *path);
/* rm -rf for a folder moka made (an LMDB). */
int ft_remove_tree(const char *path);
/* An absolute form of `path` (realpath when it exists). */
void ft_absolute_path(const char *path, char *out, size_t n);
/* Stage markers: DIR/.done/<stage>, written atomically when the stage is
 * complete, holding "key=N" lines. ft_marker_int: N for `key`, -1 when absent. */
bool ft_stage_done(const char *dir, const char *stage);
int ft_mark_done(const char *dir, const char *stage, const char *content);
int ft_marker_int(const char *dir, const char *stage, const char *key);

/* ---- the data ---- */

typedef struct FtData {
  int K;
  char **classes;
  int *train_list, *val_list; /* images per class in the lists */
  int *train_db, *val_db;     /* records per class in the LMDBs */
  int n_train, n_val;         /* records in the LMDBs */
  int n_bad;
} FtData;

void ft_data_free(FtData *d);
/* The class names of DIR/labels.txt; allocates the per-class counts. */
int ft_data_read_labels(const char *path, FtData *d);
/* Images per class in `list`, and records per class in its LMDB (the list
 * minus the files listed as skipped in DB.skipped.txt). */
int ft_data_count_list(const char *list, const char *db, int K, int *in_list, int *in_db,
                       int *n_db, int *n_bad);

/* ---- the stages (each returns at once when its marker exists) ---- */

/* prepare: read DATA, split train/val, write train.txt, val.txt, labels.txt. */
int ft_stage_prepare(const FtOptions *o, const char *dir);
/* train_lmdb / val_lmdb (which = "train" / "val"): convert_imageset. */
int ft_stage_convert(const FtOptions *o, const char *dir, const char *which, int resize);

typedef struct FtMean {
  char file[PATHN];   /* "" = values */
  int n_values;
  float values[4];
  char why[512];
  char arg[PATHN];    /* the classify flag: --mean_file=... or --mean_value=... */
} FtMean;

/* The mean to subtract: --mean_value, --mean_file (or its per-channel
 * averages when its size is not the stored images'), else the mean stage
 * (compute_image_mean -> DIR/mean.binaryproto). */
int ft_stage_mean(const FtOptions *o, const char *dir, int resize, FtMean *m);

#endif
