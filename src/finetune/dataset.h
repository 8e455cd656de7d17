/* dataset.h — the images `moka finetune` trains on: a folder with one
 * subfolder per class, or a Caffe list file; the stratified, seeded
 * train/val split; the list and label files handed to convert_imageset.
 *
 * A folder DATA gives classes = its subfolders in sorted (byte) order, label
 * i = the i-th name, images = every file with an image extension below each
 * subfolder (recursively, sorted). A list file gives Caffe's
 * "relative/path.jpg label" lines, relative to `root` (default: the list
 * file's folder); class names come from a labels file (one per line) or are
 * the label numbers.
 */
#ifndef MOKA_FT_DATASET_H
#define MOKA_FT_DATASET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct FtItem {
  char *path; /* relative to the dataset's root, as written in list files */
  int label;
} FtItem;

typedef struct FtDataset {
  char *root;        /* prefix of every path, ending in '/' (or "" ) */
  int n_classes;
  char **classes;    /* [n_classes] class names */
  int n;
  FtItem *items;     /* [n] */
  int n_ignored;     /* files skipped while scanning a folder (no image extension) */
} FtDataset;

/* True when the name ends in an image extension (.jpg .jpeg .png .bmp ...;
 * case-insensitive). Files moka cannot decode (BMP, GIF, ...) are still
 * listed: convert_imageset reports them as bad files. */
bool ft_is_image_name(const char *name);

/* Read DATA (a folder or a list file). `labels_file` (may be NULL) names the
 * classes: for a folder, its names must be exactly the subfolders (their
 * order then gives the labels); for a list, one name per label 0..K-1.
 * `root` (list files only; NULL = the list's folder). Errors (-1): no
 * images, a single class, an empty class folder, labels that do not match
 * the data, unreadable input. */
int ft_dataset_read(const char *data, const char *root, const char *labels_file, FtDataset *out);
/* A validation set given separately: the same format; its classes are
 * matched to `train`'s by name (folders) or label (lists). */
int ft_dataset_read_val(const char *val, const char *root, const FtDataset *train, FtDataset *out);
void ft_dataset_free(FtDataset *d);

/* Images per class: counts[k] for k < d->n_classes. */
void ft_dataset_class_counts(const FtDataset *d, int *counts);

/* Stratified split: per class, shuffle (mt19937 seeded with `seed`) and take
 * round(n_c * val_fraction) images for validation, at least 1 when the class
 * has 2 or more images, never all of them. A class with a single image goes
 * to training only (a warning says so). The training indices come out
 * shuffled across classes (the Data layer reads an LMDB in key order), the
 * validation ones grouped by class. Error when val_fraction is outside
 * (0, 1) or no validation image results. */
typedef struct FtSplit {
  int n_train, n_val;
  int *train, *val; /* indices into the dataset's items */
} FtSplit;
int ft_split(const FtDataset *d, double val_fraction, uint32_t seed, FtSplit *out);
void ft_split_free(FtSplit *s);
/* Shuffle `idx` (the training order of a set given as is). */
void ft_shuffle(int *idx, int n, uint32_t seed);

/* Write "ROOTpath label" lines for items idx[0..n) (atomically): with an
 * absolute root the list is usable from any folder (convert_imageset with
 * an empty root). */
int ft_write_list(const FtDataset *d, const int *idx, int n, const char *path);
/* labels.txt: one class name per line, line i = label i (atomically). */
int ft_write_labels(const FtDataset *d, const char *path);

#endif
