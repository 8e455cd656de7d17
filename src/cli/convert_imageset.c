/* convert_imageset.c — `moka convert_imageset`: Caffe's tool of the same
 * name (tools/convert_imageset.cpp), with its flags and formats; the work is
 * done by convert_imageset() in src/data/convert.c.
 *
 * Wiring: the lead engineer registers cmd_convert_imageset in the command
 * table of src/main.c (it is already listed there as a weak symbol).
 *
 *   moka convert_imageset [flags] ROOTFOLDER/ LISTFILE DB_NAME
 */
#include <string.h>

#include "cli/flags.h"
#include "data/convert.h"
#include "rng.h"
#include "util.h"

int cmd_convert_imageset(int argc, char **argv) {
  bool gray = false, shuffle = false, check_size = false, encoded = false, fast_resize = false,
       check_decodable = true;
  const char *backend = "lmdb", *encode_type = "";
  int resize_width = 0, resize_height = 0, seed = -1;
  Flag flags[] = {
      {"gray", FLAG_BOOL, &gray, "treat images as grayscale ones (1 channel)"},
      {"shuffle", FLAG_BOOL, &shuffle, "randomly shuffle the order of images and their labels"},
      {"seed", FLAG_INT, &seed,
       "seed of --shuffle's random stream (moka addition; default: random, as Caffe)"},
      {"backend", FLAG_STRING, &backend, "the backend for storing the result: lmdb (leveldb is "
                                         "not supported)"},
      {"resize_width", FLAG_INT, &resize_width, "width images are resized to (0: no resize)"},
      {"resize_height", FLAG_INT, &resize_height, "height images are resized to (0: no resize)"},
      {"check_size", FLAG_BOOL, &check_size, "check that all the datum have the same size"},
      {"encoded", FLAG_BOOL, &encoded, "store the encoded image (JPEG/PNG bytes) in the datum"},
      {"encode_type", FLAG_STRING, &encode_type,
       "what type to encode the image as: jpg or png (default: each file's own)"},
      {"fast_resize", FLAG_BOOL, &fast_resize,
       "moka addition, default false: with --resize_*, let libjpeg-turbo shrink JPEGs in the DCT "
       "domain while decoding, then resize: much faster on large photos, but the pixels are "
       "NOT Caffe's (a different filter, differences well over 1)"},
      {"check_decodable", FLAG_BOOL, &check_decodable,
       "moka addition, default true: decode every image before storing it, as Caffe does, even "
       "with --encoded and no resize (where the file's bytes are stored as they are); false: "
       "check only the format and header there (faster; a file cut short after its header is "
       "then stored without a warning)"},
  };
  const char *pos[3];
  int n_pos;
  const char *summary =
      "Convert a set of images to the lmdb format used as input for Caffe: one Datum per line "
      "of LISTFILE (\"path label\", split at the last space), keyed %08d_<path>. Unreadable, "
      "empty, truncated or non-image files and malformed lines are skipped, one line each; a "
      "summary follows and DB_NAME.skipped.txt lists them (path<TAB>reason). The database is "
      "built in DB_NAME.tmp-<pid> and renamed when complete; DB_NAME must not exist. Images are "
      "decoded by MOKA_DATA_THREADS threads (default min(4, CPUs)); the result does not depend "
      "on it.";
  int rc = flags_parse("convert_imageset", " ROOTFOLDER/ LISTFILE DB_NAME", summary, flags,
                       (int)MOKA_ARRAY_LEN(flags), argc, argv, pos, 3, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (n_pos != 3) {
    flags_usage(stderr, "convert_imageset", " ROOTFOLDER/ LISTFILE DB_NAME", summary, flags,
                (int)MOKA_ARRAY_LEN(flags));
    return 1;
  }
  if (strcmp(backend, "lmdb") != 0)
    return moka_errorf("convert_imageset: --backend=%s is not supported (use lmdb)", backend);
  ConvertOptions o = {0};
  o.root = pos[0];
  o.list = pos[1];
  o.db = pos[2];
  o.resize_height = resize_height > 0 ? resize_height : 0;
  o.resize_width = resize_width > 0 ? resize_width : 0;
  o.gray = gray;
  o.shuffle = shuffle;
  o.shuffle_seed = seed >= 0 ? (uint32_t)seed : rng_entropy_seed();
  o.encoded = encoded;
  o.encode_type = encode_type;
  o.check_size = check_size;
  o.fast_resize = fast_resize;
  o.header_check_only = !check_decodable;
  if (fast_resize && (o.resize_height == 0 || o.resize_width == 0))
    LOG_WARN("--fast_resize does nothing without --resize_height and --resize_width");
  ConvertStats st;
  if (convert_imageset(&o, &st) != 0) return -1;
  return 0;
}
