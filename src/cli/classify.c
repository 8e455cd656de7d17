/* moka classify — label images with a deploy net, as Caffe's classification
 * example does: decode (JPEG/PNG, by content), resize the short side to
 * --resize (default 256), centre-crop to the net's input, BGR, subtract the
 * mean, scale; forward in batches of the input's N; print the top-k of the
 * net's output for each image. */
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "image.h"
#include "util.h"

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
static int preprocess(const char *path, int c, int h, int w, int resize, bool fast,
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

int cmd_classify(int argc, char **argv) {
  const char *model = NULL, *weights = NULL, *mean_file = NULL, *mean_value = NULL,
             *labels_path = NULL, *gpu = NULL;
  int top_k = 5, resize = 256;
  bool fast_resize = false;
  double scale = 1.0;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "deploy prototxt (required)"},
      {"weights", FLAG_STRING, &weights, "trained .caffemodel (required)"},
      {"mean_file", FLAG_STRING, &mean_file, "mean .binaryproto (e.g. ResNet_mean.binaryproto)"},
      {"mean_value", FLAG_STRING, &mean_value, "per-channel mean in BGR order, e.g. 104,117,123"},
      {"labels", FLAG_STRING, &labels_path, "label names, one per line (synset_words.txt)"},
      {"top_k", FLAG_INT, &top_k, "how many classes to print per image (default 5)"},
      {"resize", FLAG_INT, &resize, "resize the short side to this before the centre crop (default 256)"},
      {"scale", FLAG_DOUBLE, &scale, "multiply pixels by this after subtracting the mean (default 1)"},
      {"gpu", FLAG_STRING, &gpu, "GPU id to run on (default: CPU)"},
      {"fast_resize", FLAG_BOOL, &fast_resize,
       "let libjpeg-turbo shrink large JPEGs in the DCT domain while decoding, then resize "
       "(default false): faster, but the pixels differ from Caffe/OpenCV's resize by more "
       "than 1, so scores can differ slightly"},
  };
  const char *pos[4096];
  int n_img;
  const char *summary = "Classify images with a deploy net and its weights; prints the top-k classes.";
  int rc = flags_parse("classify", " IMAGE...", summary, flags, MOKA_ARRAY_LEN(flags), argc, argv,
                       pos, 4096, &n_img);
  if (rc) return rc < 0 ? -1 : 0;
  if (!weights || !*weights) return moka_errorf("moka classify: --weights is required");
  if (n_img == 0) return moka_errorf("moka classify: no images given");
  if (top_k < 1) return moka_errorf("moka classify: --top_k must be at least 1");
  Backend be;
  if (cli_backend(gpu, &be)) return -1;
  double t0 = moka_now();
  moka_set_log_level(1); /* no per-layer "Copying source layer" lines here */
  Net *net = cli_load_net(model, weights, MOKA_TEST, be, gpu);
  moka_set_log_level(0);
  if (!net) return -1;
  Blob *in = cli_input_blob(net);
  if (!in || in->num_axes != 4) {
    net_free(net);
    return in ? moka_errorf("the net's input must be 4-D (N,C,H,W)") : -1;
  }
  int N = in->shape[0], C = in->shape[1], H = in->shape[2], W = in->shape[3];
  float *mean = cli_load_mean(mean_file, mean_value, C, H, W);
  Labels L;
  if (!mean || load_labels(labels_path, &L)) {
    free(mean);
    net_free(net);
    return -1;
  }
  double t_load = moka_now() - t0;
  Blob *out = net->outputs[net->n_outputs - 1];
  int failed = 0, done = 0;
  double t_fwd = 0;
  int *ok = malloc(sizeof(int) * (size_t)N);
  for (int start = 0; start < n_img; start += N) {
    int nb = n_img - start < N ? n_img - start : N;
    for (int k = 0; k < nb; k++) {
      ok[k] = preprocess(pos[start + k], C, H, W, resize, fast_resize, mean, (float)scale,
                         in->data + (size_t)k * C * H * W) == 0;
      if (!ok[k]) {
        fprintf(stderr, "moka: error: %s\n", moka_error());
        memset(in->data + (size_t)k * C * H * W, 0, sizeof(float) * C * H * W);
        failed++;
      }
    }
    double tf = moka_now();
    float loss;
    /* The net copies the input up itself (it is an Input layer's top); the
     * probabilities come down here. */
    if (net_forward(net, &loss) || cli_outputs_to_host(net, &out, 1)) {
      free(ok);
      free(mean);
      net_free(net);
      return -1;
    }
    t_fwd += moka_now() - tf;
    int D = (int)(out->count / (size_t)out->shape[0]);
    for (int k = 0; k < nb; k++) {
      if (!ok[k]) continue;
      done++;
      const float *p = out->data + (size_t)k * D;
      printf("---------- Prediction for %s ----------\n", pos[start + k]);
      int kk = top_k < D ? top_k : D;
      int *best = malloc(sizeof(int) * (size_t)kk);
      for (int r = 0; r < kk; r++) {
        int bi = -1;
        for (int j = 0; j < D; j++) {
          bool used = false;
          for (int q = 0; q < r; q++) used |= best[q] == j;
          if (!used && (bi < 0 || p[j] > p[bi])) bi = j;
        }
        best[r] = bi;
        if (L.n)
          printf("%.4f - \"%s\"\n", p[bi], bi < L.n ? L.names[bi] : "?");
        else
          printf("%.4f - \"%d\"\n", p[bi], bi);
      }
      free(best);
    }
  }
  fprintf(stderr, "moka classify: %d image(s) in %.3f s (net load %.3f s, forward %.3f s, %.2f img/s)%s\n",
          done, moka_now() - t0, t_load, t_fwd, t_fwd > 0 ? done / t_fwd : 0.0,
          failed ? "; some images could not be read" : "");
  free(ok);
  for (int i = 0; i < L.n; i++) free(L.names[i]);
  free(L.names);
  free(mean);
  net_free(net);
  return failed ? 1 : 0;
}
