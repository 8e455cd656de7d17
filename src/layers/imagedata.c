/* imagedata.c — Caffe's ImageData layer (reference): batches of image files
 * named by a list file, decoded as cv::imread does, optionally resized as
 * cv::resize does, then transformed exactly as the Data layer's records.
 *
 * image_data_param: source (the list file, "<path> <label>" per line, split
 * at the LAST space so paths may contain spaces; src/data/listfile.h),
 * root_folder (prefix of every path, concatenated as is), batch_size
 * (default 1), new_height / new_width (both or neither; image_resize_bilinear
 * = cv::resize INTER_LINEAR), is_color (default true: BGR; false: grey),
 * shuffle, rand_skip. transform_param as for Data. data_param.prefetch (if
 * given) sets the queue depth, as in Caffe.
 *
 * Order and randomness follow Caffe 1.0's ImageDataLayer: at setup, from the
 * net's stream (Caffe's global one): the transformer's InitRand, then — when
 * shuffle — the shuffle stream's seed, and the list is shuffled
 * (caffe::shuffle), then — when rand_skip > 0 — skip = draw % rand_skip (the
 * first record read is line `skip`), then InitRand again and the prefetch
 * thread's seed (data_layer.h). Records are read in list order from there;
 * after the last line the list starts again at its first line, reshuffled
 * (with the shuffle stream) when shuffle is set. Per record, the transform's
 * draws come from its own stream in record order (src/data/prefetch.h).
 *
 * Differences from Caffe, all where Caffe would crash or silently misread:
 * a malformed list line (no label, a label that is not an integer, an empty
 * path) is a setup error naming file:line (Caffe takes atoi's 0); blank
 * lines are ignored (Caffe keeps them as "" and then fails to read them);
 * an unreadable image is an error naming the list line and the file (Caffe
 * aborts on its CHECK).
 *
 * CUDA forward: as the Data layer's (src/data/data_cuda.h): images decoded
 * (and resized) to uint8 on the host, transformed on the device.
 */
#include <stdlib.h>
#include <string.h>

#include "data/data_cuda.h"
#include "data/data_layer.h"
#include "data/listfile.h"
#include "image.h"
#include "layer.h"
#include "util.h"

typedef struct ImageDataPriv {
  Prefetcher *pf; /* first two members: DataLayerHead (data_layer.h) */
  struct DataCuda *dc;
  size_t item_bytes; /* bytes of the first image, decoded */
  Transformer tf;
  int tf_init;
  ListEntry *all;    /* every line of the list file (owns the strings) */
  int n_all;
  ListEntry *lines;  /* [n] the usable lines in their current order (reader thread) */
  ListEntry *order0; /* [n] the order at the first record (after the setup shuffle) */
  int n;
  int pos;           /* Caffe's lines_id_: the next line to read */
  int skip;          /* rand_skip's draw: the first record is line `skip` */
  int shuffle;
  Rng shuf_rng, shuf_rng0; /* Caffe's prefetch_rng_: now / after the setup shuffle */
  char *root;
  char *list;
  int new_h, new_w, channels;
  char what[300];
} ImageDataPriv;

/* ---- the list source of the pipeline ------------------------------------- */

static int list_next(void *ctx, PrefetchItem *it) {
  ImageDataPriv *p = ctx;
  const ListEntry *e = &p->lines[p->pos];
  it->key = e->path;
  it->key_len = strlen(e->path);
  it->label = (float)e->label;
  it->line = e->line;
  if (++p->pos >= p->n) {
    p->pos = 0;
    if (p->shuffle) list_shuffle(p->lines, p->n, &p->shuf_rng);
  }
  return 0;
}

static void list_describe(void *ctx, const PrefetchItem *it, char *buf, size_t len) {
  ImageDataPriv *p = ctx;
  snprintf(buf, len, "list '%s' line %d, image '%s%.*s'", p->list, it->line, p->root,
           (int)it->key_len, (const char *)it->key);
}

/* The image of `it`, read, decoded and resized as Caffe's ReadImageToCVMat;
 * *use points at im or rs (free both). */
static int list_read(ImageDataPriv *p, const PrefetchItem *it, Image *im, Image *rs,
                     const Image **use) {
  char path[4096];
  int n = snprintf(path, sizeof path, "%s%.*s", p->root, (int)it->key_len, (const char *)it->key);
  if (n < 0 || (size_t)n >= sizeof path) return moka_errorf("the path is too long");
  if (image_read_file(path, p->channels, im) != 0) return -1;
  if (image_decode_warning()[0])
    LOG_WARN("%s: %s (accepted, as OpenCV does)", path, image_decode_warning());
  *use = im;
  if (p->new_h > 0) {
    if (image_resize_bilinear(im, p->new_h, p->new_w, rs) != 0) return -1;
    *use = rs;
  }
  return 0;
}

static int list_decode_u8(void *ctx, PrefetchItem *it, DatumBytes *px) {
  ImageDataPriv *p = ctx;
  Image im = {0}, rs = {0};
  const Image *use = NULL;
  int rc = list_read(p, it, &im, &rs, &use);
  if (rc == 0) rc = datum_bytes_from_image(use, px);
  image_free(&im);
  image_free(&rs);
  return rc;
}

static int list_decode(void *ctx, PrefetchItem *it, DatumPixels *px) {
  ImageDataPriv *p = ctx;
  Image im = {0}, rs = {0};
  const Image *use = NULL;
  int rc = list_read(p, it, &im, &rs, &use);
  if (rc == 0) rc = datum_pixels_from_image(use, px);
  image_free(&im);
  image_free(&rs);
  return rc;
}

static int list_seek(void *ctx, uint64_t record_index) {
  ImageDataPriv *p = ctx;
  /* record r is line (skip + r) mod n of the order after (skip + r) / n
   * wrap-arounds, each of which reshuffles */
  const uint64_t v = (uint64_t)p->skip + record_index, epochs = v / (uint64_t)p->n;
  memcpy(p->lines, p->order0, (size_t)p->n * sizeof *p->lines);
  p->shuf_rng = p->shuf_rng0;
  if (p->shuffle)
    for (uint64_t e = 0; e < epochs; e++) list_shuffle(p->lines, p->n, &p->shuf_rng);
  p->pos = (int)(v % (uint64_t)p->n);
  return 0;
}

/* ---- the layer ------------------------------------------------------------------ */

static int read_lines(ImageDataPriv *p) {
  if (list_file_read(p->list, &p->all, &p->n_all) != 0) return -1;
  list_file_check_paths(p->all, p->n_all, p->root);
  p->lines = moka_calloc((size_t)p->n_all + 1, sizeof *p->lines);
  p->order0 = moka_calloc((size_t)p->n_all + 1, sizeof *p->order0);
  if (!p->lines || !p->order0) return -1;
  p->n = 0;
  for (int i = 0; i < p->n_all; i++) {
    const ListEntry *e = &p->all[i];
    if (e->error)
      return moka_errorf("image_data_param.source '%s' line %d: %s: '%s'", p->list, e->line,
                         e->error, e->text);
    if (!e->path) continue; /* blank line */
    p->lines[p->n++] = *e;
  }
  if (p->n == 0)
    return moka_errorf("image_data_param.source '%s' lists no image (File is empty)", p->list);
  return 0;
}

static int imagedata_setup(Layer *l) {
  ImageDataPriv *p = l->priv;
  const Caffe__ImageDataParameter *ip = l->param->image_data_param;
  snprintf(p->what, sizeof p->what, "layer '%s'", l->name);
  if (!ip || !ip->source || !ip->source[0])
    return moka_errorf("image_data_param.source is required (the list file: \"path label\" per "
                       "line)");
  if (ip->batch_size == 0 || ip->batch_size > 1u << 20)
    return moka_errorf("image_data_param.batch_size must be positive (got %u)", ip->batch_size);
  if ((ip->new_height == 0) != (ip->new_width == 0) || ip->new_height > 65500 ||
      ip->new_width > 65500)
    return moka_errorf("image_data_param.new_height (%u) and new_width (%u) must be set together "
                       "(both > 0) or not at all",
                       ip->new_height, ip->new_width);
  if (ip->has_scale || ip->mean_file || ip->has_crop_size || ip->has_mirror)
    LOG_WARN("layer '%s': image_data_param.scale/mean_file/crop_size/mirror are deprecated and "
             "ignored; use transform_param",
             l->name);
  p->new_h = (int)ip->new_height;
  p->new_w = (int)ip->new_width;
  p->channels = ip->is_color ? 3 : 1;
  p->shuffle = ip->shuffle;
  p->root = moka_strdup(ip->root_folder ? ip->root_folder : "");
  p->list = moka_strdup(ip->source);
  if (!p->root || !p->list) return -1;
  if (transform_init(&p->tf, l->param->transform_param, l->phase == MOKA_TRAIN, p->what) != 0)
    return -1;
  p->tf_init = 1;
  if ((transform_needs_rand(&p->tf) || p->shuffle || ip->rand_skip) && !l->rng)
    return moka_errorf("%s: shuffle, rand_skip and random transforms need a random stream",
                       p->what);
  Rng own;
  memset(&own, 0, sizeof own);
  data_setup_draws_before(&p->tf, l->rng, &own);
  if (read_lines(p) != 0) return -1;
  if (p->shuffle) {
    rng_seed(&p->shuf_rng, rng_u32(l->rng)); /* caffe_rng_rand() */
    list_shuffle(p->lines, p->n, &p->shuf_rng);
  }
  p->shuf_rng0 = p->shuf_rng;
  memcpy(p->order0, p->lines, (size_t)p->n * sizeof *p->lines);
  LOG_INFO("A total of %d images.", p->n);
  if (ip->rand_skip) {
    p->skip = (int)(rng_u32(l->rng) % ip->rand_skip);
    if (p->skip >= p->n)
      return moka_errorf("image_data_param.rand_skip drew %d, but the list has only %d images "
                         "(Not enough points to skip)",
                         p->skip, p->n);
    LOG_INFO("Skipping first %d data points.", p->skip);
  }
  p->pos = p->skip;
  /* the top's shape, from the first image read (Caffe's InferBlobShape) */
  PrefetchItem first = {0};
  const ListEntry *e = &p->lines[p->pos];
  first.key = e->path;
  first.key_len = strlen(e->path);
  first.line = e->line;
  DatumPixels px = {0};
  int c, h, w;
  int rc = list_decode(p, &first, &px);
  if (rc == 0) rc = transform_out_shape(&p->tf, px.c, px.h, px.w, &c, &h, &w);
  p->item_bytes = (size_t)px.c * px.h * px.w;
  datum_pixels_free(&px);
  if (rc != 0) {
    char rec[600];
    list_describe(p, &first, rec, sizeof rec);
    return moka_error_prefix("%s: %s", p->what, rec);
  }
  data_setup_draws_after(&p->tf, l->rng, &own);
  const int B = (int)ip->batch_size;
  if (blob_reshape4(l->top[0], B, c, h, w) != 0) return -1;
  if (l->n_top > 1) {
    int shape[1] = {B};
    if (blob_reshape(l->top[1], 1, shape) != 0) return -1;
  }
  LOG_INFO("output data size: %d,%d,%d,%d", B, c, h, w);
  const Caffe__DataParameter *dp = l->param->data_param;
  PrefetchConfig cfg = {.what = p->what,
                        .batch_size = B,
                        .depth = dp && dp->prefetch ? (int)MOKA_MIN(dp->prefetch, 64u) : 4,
                        .threads = prefetch_default_threads(),
                        .tf = &p->tf,
                        .rng = transform_needs_rand(&p->tf) ? &own : NULL};
  PrefetchSource src = {p, list_next, list_decode, list_describe, list_seek, list_decode_u8};
  return prefetch_create(&cfg, &src, &p->pf);
}

static int imagedata_forward(Layer *l) {
  ImageDataPriv *p = l->priv;
  if (prefetch_next(p->pf, l->top[0], l->n_top > 1 ? l->top[1] : NULL) != 0)
    return moka_error_prefix("layer '%s' (ImageData)", l->name);
  return 0;
}

static int imagedata_backward(Layer *l) { return 0; }

#ifdef MOKA_WITH_CUDA
static int imagedata_forward_cuda(Layer *l) {
  ImageDataPriv *p = l->priv;
  if (data_cuda_forward(&p->dc, l, p->pf, &p->tf, p->item_bytes, 1) != 0)
    return moka_error_prefix("layer '%s' (ImageData)", l->name);
  return 0;
}
#endif

static void imagedata_destroy(Layer *l) {
  ImageDataPriv *p = l->priv;
#ifdef MOKA_WITH_CUDA
  data_cuda_quiesce(p->dc); /* no copy reads the pinned buffers any more */
#endif
  prefetch_destroy(p->pf); /* joins the threads before the list goes */
  p->pf = NULL;
#ifdef MOKA_WITH_CUDA
  data_cuda_free(p->dc);
  p->dc = NULL;
#endif
  list_file_free(p->all, p->n_all);
  free(p->lines);
  free(p->order0);
  free(p->root);
  free(p->list);
  if (p->tf_init) transform_free(&p->tf);
  memset(p, 0, sizeof *p);
}

const LayerType layer_type_imagedata = {
    .name = "ImageData",
    .min_bottoms = 0,
    .max_bottoms = 0,
    .min_tops = 1,
    .max_tops = 2,
    .priv_size = sizeof(ImageDataPriv),
    .setup = imagedata_setup,
    .reshape = NULL,
    .forward = {[MOKA_BACKEND_CPU] = imagedata_forward,
                [MOKA_BACKEND_CPU_FAST] = imagedata_forward},
    .backward = {[MOKA_BACKEND_CPU] = imagedata_backward,
                 [MOKA_BACKEND_CPU_FAST] = imagedata_backward},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = imagedata_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = imagedata_backward,
#endif
    .destroy = imagedata_destroy,
};
