/* convert.h — Caffe's convert_imageset and compute_image_mean tools
 * (tools/convert_imageset.cpp, tools/compute_image_mean.cpp), as library
 * functions; src/cli/convert_imageset.c and compute_image_mean.c parse the
 * flags and call them.
 *
 * convert_imageset: one record per line of the list file ("<path> <label>",
 * split at the LAST space, so paths may contain spaces; src/data/listfile.h),
 * key "%08d_<path>" numbered by line (a skipped line keeps its number), value
 * a Datum: raw (decoded as cv::imread does, resized with OpenCV's bilinear
 * rule when both resize_height and resize_width are > 0, BGR (C,H,W)) or
 * encoded (the original file's bytes when there is no resize and the file's
 * extension matches the encoding, else re-encoded: JPEG quality 95 / PNG, as
 * cv::imencode). Records are committed 1000 at a time. Files are decoded by
 * several threads (MOKA_DATA_THREADS / ConvertOptions.threads) and written
 * in list order: the database does not depend on the thread count.
 *
 * Bad input: every unreadable, zero-byte, truncated-before-the-pixels or
 * non-image file, and every malformed list line (named by its line number),
 * is skipped with one warning line naming it and the reason; nothing is
 * stored for it (every image is decoded before its record is written, as
 * Caffe does, unless header_check_only). A file that decodes with a
 * warning (a JPEG cut short: "Premature end of JPEG file") is stored, as
 * OpenCV and so Caffe accept it, and reported as a warning. At the end: one
 * summary line "converted N, skipped M (see DB.skipped.txt)", and
 * DB.skipped.txt (written atomically, even when empty) lists "path<TAB>reason"
 * and "path<TAB>warning: ..." lines. The database is written to
 * DB.tmp-<pid> and renamed to DB only when complete: a failed run leaves
 * nothing that looks like a database. DB must not exist (Caffe refuses it
 * too). Images declaring absurd sizes are refused from their header
 * (image.h); the LMDB map grows as needed (db.h).
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
  bool fast_resize;        /* with a resize: let libjpeg-turbo shrink JPEGs while decoding
                              (image_decode_reduced) — faster, NOT Caffe's pixels */
  bool header_check_only;  /* encoded without resize, file stored as is: check only the
                              format and header instead of decoding (Caffe decodes) */
  int threads;             /* decode threads; 0 = MOKA_DATA_THREADS or min(4, CPUs) */
} ConvertOptions;

typedef struct ConvertStats {
  int lines;    /* lines in the list */
  int written;  /* records stored */
  int skipped;  /* lines skipped: malformed, or their file could not be used */
  int warnings; /* records stored whose image decoded with a warning */
  int blank;    /* blank lines (ignored) */
} ConvertStats;

/* Returns 0 when the database was written (even with skipped files; see
 * stats), -1 on errors that stop the conversion (unreadable list, existing
 * or unwritable database, --check_size mismatch, ...); then no database is
 * left. Skipped files are reported with LOG_WARN, one line each. */
int convert_imageset(const ConvertOptions *o, ConvertStats *stats);

/* Compute the mean of `db` and write it to out_file (NULL: only print).
 * channel_means (may be NULL) receives up to max_channels per-channel
 * means; *channels their count. */
int compute_image_mean(const char *db, const char *out_file, float *channel_means,
                       int max_channels, int *channels);

#endif
