/* moka classify — label images with a deploy net, as Caffe's classification
 * example does: decode (JPEG/PNG, by content), resize the short side to
 * --resize (default 256), centre-crop to the net's input, BGR, subtract the
 * mean, scale; forward in batches of the input's N; print the top-k of the
 * net's output for each image.
 *
 * Inputs: image files, folders (every image below them, recursively, in
 * sorted order) and --list=FILE (Caffe's "path [label]" lines, paths relative
 * to --root, default the list's folder). --csv=FILE writes one row per image,
 * "file,top1,p1,...,topK,pK,error"; an unreadable image gets a row with its
 * error and does not stop the run. --mirror averages the probabilities of
 * each image and its horizontal mirror (test-time augmentation). --squash
 * resizes to exactly RESIZE x RESIZE, as convert_imageset (and so a net
 * trained by `moka finetune`) does, instead of keeping the aspect ratio. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "data/listfile.h"
#include "finetune/dataset.h"
#include "finetune/strbuf.h"
#include "image.h"
#include "util.h"

/* The images to classify, in order. */
typedef struct Paths {
  int n, cap;
  char **p;
} Paths;

static int paths_add(Paths *P, const char *path) {
  if (P->n == P->cap) {
    int cap = P->cap ? P->cap * 2 : 64;
    char **np = moka_realloc(P->p, sizeof *np * (size_t)cap);
    if (!np) return -1;
    P->p = np;
    P->cap = cap;
  }
  if (!(P->p[P->n] = moka_strdup(path))) return -1;
  P->n++;
  return 0;
}

static void paths_free(Paths *P) {
  for (int i = 0; i < P->n; i++) free(P->p[i]);
  free(P->p);
}

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

/* Every image file below `dir`, sorted, recursively (hidden entries skipped). */
static int add_folder(Paths *P, const char *dir, int depth) {
  if (depth > 16) return moka_errorf("'%s': folders nested too deep (a link loop?)", dir);
  struct dirent **e;
  int n = scandir(dir, &e, NULL, by_name);
  if (n < 0) return moka_errorf("cannot read folder '%s'", dir);
  int rc = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    struct stat st;
    if (!rc && e[i]->d_name[0] != '.' &&
        snprintf(path, sizeof path, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/",
                 e[i]->d_name) < (int)sizeof path &&
        stat(path, &st) == 0) {
      if (S_ISDIR(st.st_mode)) rc = add_folder(P, path, depth + 1);
      else if (ft_is_image_name(e[i]->d_name)) rc = paths_add(P, path);
    }
    free(e[i]);
  }
  free(e);
  return rc;
}

/* --list: "path [label]" lines; a line without a label is a path. */
static int add_list(Paths *P, const char *list, const char *root) {
  char base[4096];
  if (root && *root) {
    snprintf(base, sizeof base, "%s%s", root, root[strlen(root) - 1] == '/' ? "" : "/");
  } else {
    const char *slash = strrchr(list, '/');
    snprintf(base, sizeof base, "%.*s", slash ? (int)(slash - list + 1) : 0, list);
  }
  ListEntry *e;
  int n;
  if (list_file_read(list, &e, &n)) return -1;
  int rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    const char *rel = e[i].path ? e[i].path : e[i].text;
    if (!rel || !*rel) continue;
    char path[8200];
    snprintf(path, sizeof path, "%s%s", rel[0] == '/' ? "" : base, rel);
    rc = paths_add(P, path);
  }
  list_file_free(e, n);
  return rc;
}

/* A CSV field, quoted when it needs to be (RFC 4180). */
static void csv_field(StrBuf *b, const char *s) {
  if (!strpbrk(s, ",\"\n\r")) {
    sb_puts(b, s);
    return;
  }
  sb_puts(b, "\"");
  for (; *s; s++) {
    if (*s == '"') sb_puts(b, "\"\"");
    else sb_append(b, s, 1);
  }
  sb_puts(b, "\"");
}

typedef struct Labels {
  int n;
  char **names;
} Labels;

static int load_labels(const char *path, Labels *L) {
  L->n = 0;
  L->names = NULL;
  if (!path || !*path) return 0;
  uint8_t *data;
  size_t len;
  if (moka_read_file(path, &data, &len)) return -1;
  char *save = NULL;
  for (char *line = strtok_r((char *)data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    size_t k = strlen(line);
    while (k && (line[k - 1] == '\r' || line[k - 1] == ' ')) line[--k] = 0;
    char **nn = moka_realloc(L->names, (size_t)(L->n + 1) * sizeof *nn);
    if (!nn) {
      free(data);
      return -1;
    }
    L->names = nn;
    L->names[L->n++] = moka_strdup(line);
  }
  free(data);
  return 0;
}

/* Decode, resize the short side to `resize`, centre-crop h x w, write
 * (C,H,W) floats: (pixel - mean) * scale. fast: let libjpeg-turbo shrink
 * the JPEG while decoding (image_decode_reduced; not Caffe's pixels). */
static int preprocess(const char *path, int c, int h, int w, int resize, bool fast, bool squash,
                      const float *mean, float scale, float *out) {
  Image im = {0}, rs = {0};
  uint8_t *bytes = NULL;
  size_t len = 0;
  int ih, iw;
  if (moka_read_file(path, &bytes, &len)) return -1;
  if (image_probe(bytes, len, c, &ih, &iw, NULL)) {
    free(bytes);
    return moka_error_prefix("%s", path);
  }
  int short_side = ih < iw ? ih : iw;
  int target = resize > h && resize > w ? resize : (h > w ? h : w);
  int nh = (int)((long long)ih * target / short_side), nw = (int)((long long)iw * target / short_side);
  if (ih <= iw) nh = target; else nw = target;
  if (squash) nh = nw = target; /* convert_imageset's fixed size: the aspect ratio is not kept */
  if (nh < h) nh = h;
  if (nw < w) nw = w;
  int drc = fast ? image_decode_reduced(bytes, len, c, nh, nw, &im) : image_decode(bytes, len, c, &im);
  free(bytes);
  if (drc) return moka_error_prefix("%s", path);
  if (image_resize_bilinear(&im, nh, nw, &rs)) {
    image_free(&im);
    return moka_error_prefix("%s", path);
  }
  image_free(&im);
  int oy = (nh - h) / 2, ox = (nw - w) / 2;
  for (int ch = 0; ch < c; ch++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        size_t o = ((size_t)ch * h + y) * w + x;
        float px = rs.px[((size_t)(y + oy) * nw + x + ox) * c + ch];
        out[o] = (px - mean[o]) * scale;
      }
  image_free(&rs);
  return 0;
}

/* Top-k of p[0..D): indices in best[0..k), highest first. */
static void top_k_of(const float *p, int D, int k, int *best) {
  for (int r = 0; r < k; r++) {
    int bi = -1;
    for (int j = 0; j < D; j++) {
      bool used = false;
      for (int q = 0; q < r; q++) used |= best[q] == j;
      if (!used && (bi < 0 || p[j] > p[bi])) bi = j;
    }
    best[r] = bi;
  }
}

/* Mirror (C,H,W) images left-right in place. */
static void flip_w(float *x, size_t planes, int w) {
  for (size_t r = 0; r < planes; r++) {
    float *row = x + r * (size_t)w;
    for (int i = 0, j = w - 1; i < j; i++, j--) {
      float t = row[i];
      row[i] = row[j];
      row[j] = t;
    }
  }
}

int cmd_classify(int argc, char **argv) {
  const char *model = NULL, *weights = NULL, *mean_file = NULL, *mean_value = NULL,
             *labels_path = NULL, *gpu = NULL, *csv = NULL, *list = NULL, *root = NULL,
             *precision = NULL;
  int top_k = 5, resize = 256;
  bool fast_resize = false, mirror = false, squash = false;
  double scale = 1.0;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "deploy prototxt (required)"},
      {"weights", FLAG_STRING, &weights, "trained .caffemodel (required)"},
      {"mean_file", FLAG_STRING, &mean_file, "mean .binaryproto (e.g. ResNet_mean.binaryproto)"},
      {"mean_value", FLAG_STRING, &mean_value, "per-channel mean in BGR order, e.g. 104,117,123"},
      {"labels", FLAG_STRING, &labels_path, "label names, one per line (synset_words.txt)"},
      {"top_k", FLAG_INT, &top_k, "how many classes to print per image (default 5)"},
      {"resize", FLAG_INT, &resize, "resize the short side to this before the centre crop (default 256)"},
      {"squash", FLAG_BOOL, &squash,
       "resize to exactly RESIZE x RESIZE (as convert_imageset and moka finetune's LMDBs), not "
       "keeping the aspect ratio"},
      {"scale", FLAG_DOUBLE, &scale, "multiply pixels by this after subtracting the mean (default 1)"},
      {"mirror", FLAG_BOOL, &mirror,
       "average each prediction with that of the horizontally mirrored image"},
      {"list", FLAG_STRING, &list, "classify the images of this list file (\"path [label]\" lines)"},
      {"root", FLAG_STRING, &root, "folder the --list paths are relative to (default: the list's)"},
      {"csv", FLAG_STRING, &csv,
       "write file,top1,p1,...,topK,pK,error rows to this file (unreadable images get a row with "
       "the error instead of stopping the run)"},
      {"gpu", FLAG_STRING, &gpu, "GPU id to run on (default: CPU)"},
      {"precision", FLAG_STRING, &precision, CLI_PRECISION_HELP},
      {"fast_resize", FLAG_BOOL, &fast_resize,
       "let libjpeg-turbo shrink large JPEGs in the DCT domain while decoding, then resize "
       "(default false): faster, but the pixels differ from Caffe/OpenCV's resize by more "
       "than 1, so scores can differ slightly"},
  };
  const char *pos[4096];
  int n_pos;
  const char *summary = "Classify images (files, folders, a --list) with a deploy net and its weights; "
                        "prints the top-k classes, or writes them to a --csv file.";
  int rc = flags_parse("classify", " IMAGE_OR_FOLDER...", summary, flags, MOKA_ARRAY_LEN(flags),
                       argc, argv, pos, 4096, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (!weights || !*weights) return moka_errorf("moka classify: --weights is required");
  if (top_k < 1) return moka_errorf("moka classify: --top_k must be at least 1");
  Paths P = {0};
  for (int i = 0; i < n_pos; i++) {
    struct stat st;
    rc = stat(pos[i], &st) == 0 && S_ISDIR(st.st_mode) ? add_folder(&P, pos[i], 0) : paths_add(&P, pos[i]);
    if (rc) {
      paths_free(&P);
      return -1;
    }
  }
  if (list && *list && add_list(&P, list, root)) {
    paths_free(&P);
    return -1;
  }
  if (P.n == 0) {
    paths_free(&P);
    return moka_errorf("moka classify: no images given%s", n_pos || list ? " (the folders/list hold none)" : "");
  }
  Backend be;
  if (cli_backend(gpu, &be) || cli_precision(precision, be)) {
    paths_free(&P);
    return -1;
  }
  double t0 = moka_now();
  moka_set_log_level(1); /* no per-layer "Copying source layer" lines here */
  Net *net = cli_load_net(model, weights, MOKA_TEST, be, gpu);
  moka_set_log_level(0);
  if (!net) {
    paths_free(&P);
    return -1;
  }
  net_freeze_weights(net); /* inference only: layers may prepare the weights once */
  Blob *in = cli_input_blob(net);
  if (!in || in->num_axes != 4) {
    net_free(net);
    paths_free(&P);
    return in ? moka_errorf("the net's input must be 4-D (N,C,H,W)") : -1;
  }
  int N = in->shape[0], C = in->shape[1], H = in->shape[2], W = in->shape[3];
  float *mean = cli_load_mean(mean_file, mean_value, C, H, W);
  Labels L;
  if (!mean || load_labels(labels_path, &L)) {
    free(mean);
    net_free(net);
    paths_free(&P);
    return -1;
  }
  double t_load = moka_now() - t0;
  Blob *out = net->outputs[net->n_outputs - 1];
  int failed = 0, done = 0;
  double t_fwd = 0;
  int *ok = malloc(sizeof(int) * (size_t)N);
  char **why = calloc((size_t)N, sizeof *why);
  float *probs = NULL; /* (N, D) the first pass, with --mirror */
  StrBuf cb = {0};
  if (csv && *csv) {
    sb_puts(&cb, "file");
    for (int r = 1; r <= top_k; r++) sb_printf(&cb, ",top%d,p%d", r, r);
    sb_puts(&cb, ",error\n");
  }
  rc = 0;
  for (int start = 0; start < P.n && !rc; start += N) {
    int nb = P.n - start < N ? P.n - start : N;
    for (int k = 0; k < nb; k++) {
      ok[k] = preprocess(P.p[start + k], C, H, W, resize, fast_resize, squash, mean, (float)scale,
                         in->data + (size_t)k * C * H * W) == 0;
      free(why[k]);
      why[k] = NULL;
      if (!ok[k]) {
        if (csv && *csv) why[k] = moka_strdup(moka_error());
        else fprintf(stderr, "moka: error: %s\n", moka_error());
        memset(in->data + (size_t)k * C * H * W, 0, sizeof(float) * C * H * W);
        failed++;
      }
    }
    double tf = moka_now();
    float loss;
    /* The net copies the input up itself (it is an Input layer's top); the
     * probabilities come down here. */
    if (net_forward(net, &loss) || cli_outputs_to_host(net, &out, 1)) {
      rc = -1;
      break;
    }
    int D = (int)(out->count / (size_t)out->shape[0]);
    if (mirror) {
      /* the mirrored images, then the mean of both predictions */
      float *np = realloc(probs, sizeof(float) * out->count);
      if (!np) {
        rc = moka_errorf("out of memory");
        break;
      }
      probs = np;
      memcpy(probs, out->data, sizeof(float) * out->count);
      flip_w(in->data, (size_t)N * C * H, W);
      if (net_forward(net, &loss) || cli_outputs_to_host(net, &out, 1)) {
        rc = -1;
        break;
      }
      for (size_t q = 0; q < out->count; q++) out->data[q] = 0.5f * (out->data[q] + probs[q]);
    }
    t_fwd += moka_now() - tf;
    int kk = top_k < D ? top_k : D;
    int *best = malloc(sizeof(int) * (size_t)kk);
    for (int k = 0; k < nb; k++) {
      if (csv && *csv) {
        csv_field(&cb, P.p[start + k]);
        if (ok[k]) top_k_of(out->data + (size_t)k * D, D, kk, best);
        for (int r = 0; r < top_k; r++) {
          if (!ok[k] || r >= kk) {
            sb_puts(&cb, ",,");
            continue;
          }
          char num[32];
          snprintf(num, sizeof num, "%d", best[r]);
          sb_puts(&cb, ",");
          csv_field(&cb, L.n ? (best[r] < L.n ? L.names[best[r]] : "?") : num);
          sb_printf(&cb, ",%.6f", out->data[(size_t)k * D + best[r]]);
        }
        sb_puts(&cb, ",");
        if (!ok[k]) csv_field(&cb, why[k] ? why[k] : "unreadable");
        sb_puts(&cb, "\n");
        done += ok[k];
        continue;
      }
      if (!ok[k]) continue;
      done++;
      const float *p = out->data + (size_t)k * D;
      printf("---------- Prediction for %s ----------\n", P.p[start + k]);
      top_k_of(p, D, kk, best);
      for (int r = 0; r < kk; r++) {
        const int bi = best[r];
        if (L.n)
          printf("%.4f - \"%s\"\n", p[bi], bi < L.n ? L.names[bi] : "?");
        else
          printf("%.4f - \"%d\"\n", p[bi], bi);
      }
    }
    free(best);
  }
  if (!rc && csv && *csv) {
    char *text = sb_take(&cb);
    rc = text ? moka_write_file_atomic(csv, text, strlen(text)) : -1;
    free(text);
  }
  sb_free(&cb);
  if (!rc)
    fprintf(stderr,
            "moka classify: %d image(s) in %.3f s (net load %.3f s, forward %.3f s, %.2f img/s)%s%s\n",
            done, moka_now() - t0, t_load, t_fwd, t_fwd > 0 ? done / t_fwd : 0.0,
            failed ? (csv && *csv ? "; unreadable images are listed with their error in " : "; some images could not be read")
                   : "",
            failed && csv && *csv ? csv : "");
  for (int k = 0; k < N; k++) free(why[k]);
  free(why);
  free(probs);
  free(ok);
  for (int i = 0; i < L.n; i++) free(L.names[i]);
  free(L.names);
  free(mean);
  net_free(net);
  paths_free(&P);
  if (rc) return -1;
  /* unreadable images: a failure on the terminal; with --csv they are rows */
  return failed && !(csv && *csv) ? 1 : 0;
}
