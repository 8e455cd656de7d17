/* convert.h — Caffe's convert_imageset and compute_image_mean tools
 * (tools/convert_imageset.cpp, tools/compute_image_mean.cpp), as library
 * functions; src/cli/convert_imageset.c and compute_image_mean.c parse the
 * flags and call them.
 *
 * convert_imageset: one record per line of the list file ("<path> <label>",
 * split at the LAST space, so paths may contain spaces), key
 * "%08d_<path>" numbered by line (a skipped line keeps its number), value a
 * Datum: raw (decoded as cv::imread does, resized with OpenCV's bilinear
 * rule when both resize_height and resize_width are > 0, BGR (C,H,W)) or
 * encoded (the original file's bytes when there is no resize and the file's
 * extension matches the encoding, else re-encoded: JPEG quality 95 / PNG, as
 * cv::imencode). Files that cannot be decoded are skipped with one line
 * each; a summary follows. Records are committed 1000 at a time.
 *
 * compute_image_mean: the per-pixel mean over all records (encoded ones
 * decoded as stored), summed in float as Caffe does, written as a BlobProto
 * (num 1, channels, height, width); prints the per-channel means.
 */
#ifndef MOKA_CONVERT_H
#define MOKA_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ConvertOptions {
  const char *root;        /* prefix of each listed path (concatenated as is) */
  const char *list;        /* the list file */
  const char *db;          /* LMDB folder to create */
  int resize_height, resize_width; /* both > 0 to resize */
  bool gray;               /* decode as grey (1 channel) */
  bool shuffle;            /* shuffle the lines first (Caffe's shuffle) */
  uint32_t shuffle_seed;   /* seed of the shuffle's mt19937 */
  bool encoded;            /* store encoded images */
  const char *encode_type; /* "jpg"/"jpeg"/"png", or NULL/"" = from each file's extension;
                              setting it implies encoded */
  bool check_size;         /* all raw records must have the same size */
} ConvertOptions;

typedef struct ConvertStats {
  int lines;   /* lines in the list */
  int written; /* records stored */
  int skipped; /* lines whose image could not be used */
} ConvertStats;

/* Returns 0 when the database was written (even with skipped files; see
 * stats), -1 on errors that stop the conversion (unreadable list, existing
 * or unwritable database, --check_size mismatch, ...). Skipped files are
 * reported with LOG_WARN, one line each. */
int convert_imageset(const ConvertOptions *o, ConvertStats *stats);

/* Compute the mean of `db` and write it to out_file (NULL: only print).
 * channel_means (may be NULL) receives up to max_channels per-channel
 * means; *channels their count. */
int compute_image_mean(const char *db, const char *out_file, float *channel_means,
                       int max_channels, int *channels);

#endif
