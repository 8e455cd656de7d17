/* compute_image_mean.c — `moka compute_image_mean`: Caffe's tool of the
 * same name (tools/compute_image_mean.cpp); the work is done by
 * compute_image_mean() in src/data/convert.c.
 *
 * Wiring: the lead engineer registers cmd_compute_image_mean in the command
 * table of src/main.c (it is already listed there as a weak symbol).
 *
 *   moka compute_image_mean [flags] INPUT_DB [OUTPUT_FILE]
 */
#include <string.h>

#include "cli/flags.h"
#include "data/convert.h"
#include "util.h"

int cmd_compute_image_mean(int argc, char **argv) {
  const char *backend = "lmdb";
  Flag flags[] = {
      {"backend", FLAG_STRING, &backend,
       "the backend containing the images: lmdb (leveldb is not supported)"},
  };
  const char *pos[2];
  int n_pos;
  const char *summary =
      "Compute the mean image of a set of images given by an lmdb, and write it as a "
      "binaryproto (BlobProto 1 x C x H x W).";
  int rc = flags_parse("compute_image_mean", " INPUT_DB [OUTPUT_FILE]", summary, flags,
                       (int)MOKA_ARRAY_LEN(flags), argc, argv, pos, 2, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (n_pos < 1) {
    flags_usage(stderr, "compute_image_mean", " INPUT_DB [OUTPUT_FILE]", summary, flags,
                (int)MOKA_ARRAY_LEN(flags));
    return 1;
  }
  if (strcmp(backend, "lmdb") != 0)
    return moka_errorf("compute_image_mean: --backend=%s is not supported (use lmdb)", backend);
  return compute_image_mean(pos[0], n_pos > 1 ? pos[1] : NULL, NULL, 0, NULL) == 0 ? 0 : -1;
}
