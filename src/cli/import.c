/* moka import — build a net from its prototxt, copy weights from one or more
 * caffemodels by layer name (Caffe's rules, with its log lines), and write
 * the result as one caffemodel in the layout Caffe itself writes (V2 layers,
 * BlobShape, the BatchNorm lr_mult 0 ParamSpecs, phase). Old V1 caffemodels
 * (CaffeNet/VGG era) come out upgraded.
 *
 * Without --weights, parameters come from the prototxt's fillers; --fill=msra
 * additionally gives layers that declare no filler usable random values
 * (Convolution/InnerProduct: MSRA gaussian; BatchNorm: statistics calibrated
 * on a random input; Scale: random gamma/beta), which is what the demo and
 * the cross-checks use to make a full-size ResNet without downloading
 * anything. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "util.h"

static bool all_zero(const Blob *b) {
  for (size_t i = 0; i < b->count; i++)
    if (b->data[i] != 0.0f) return false;
  return true;
}

/* Random parameters for layers that have none (see the header comment).
 * BatchNorm statistics are calibrated on a random input (N(0, 50^2) pixels):
 * layer by layer, each BatchNorm gets the mean and variance of what really
 * reaches it, times a random scale factor s (stored as [mean*s, var*s, s],
 * so the third blob matters), so activations stay O(1) through 152 layers
 * and every layer does real work. Scale: gamma U(0.5, 1.5), beta N(0, 0.2). */
static int fill_msra(Net *net, Rng *rng) {
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (!strcmp(l->type->name, "Input"))
      for (int t = 0; t < l->n_top; t++)
        for (size_t k = 0; k < l->top[t]->count; k++) l->top[t]->data[k] = rng_gaussian(rng, 0, 50);
  }
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    const char *t = l->type->name;
    if (!strcmp(t, "Convolution") || !strcmp(t, "InnerProduct")) {
      if (l->n_params < 1 || !all_zero(l->params[0])) goto run;
      Blob *w = l->params[0];
      double fan_in = (double)w->count / w->shape[0];
      if (!strcmp(t, "InnerProduct") && l->param->inner_product_param &&
          l->param->inner_product_param->transpose)
        fan_in = w->shape[0];
      float sd = (float)sqrt(2.0 / fan_in);
      for (size_t k = 0; k < w->count; k++) w->data[k] = rng_gaussian(rng, 0.0f, sd);
      if (l->n_params > 1 && all_zero(l->params[1]))
        for (size_t k = 0; k < l->params[1]->count; k++)
          l->params[1]->data[k] = rng_gaussian(rng, 0.0f, 0.01f);
    } else if (!strcmp(t, "BatchNorm") && l->n_params == 3 && all_zero(l->params[2])) {
      const Blob *x = l->bottom[0];
      int n = x->shape[0], c = x->num_axes > 1 ? x->shape[1] : 1;
      size_t sp = x->count / ((size_t)n * c);
      float s = rng_uniform(rng, 0.5f, 1.5f);
      /* A channel that is (almost) constant on this input -- dead after a
       * ReLU -- would get a near-zero variance and amplify rounding noise by
       * orders of magnitude; give such channels the layer's typical variance. */
      double var_sum = 0;
      double *vars = malloc(sizeof(double) * (size_t)c), *means = malloc(sizeof(double) * (size_t)c);
      if (!vars || !means) {
        free(vars);
        free(means);
        return moka_errorf("out of memory");
      }
      for (int ch = 0; ch < c; ch++) {
        double sum = 0, sq = 0;
        for (int q = 0; q < n; q++)
          for (size_t k = 0; k < sp; k++) {
            double v = x->data[((size_t)q * c + ch) * sp + k];
            sum += v;
            sq += v * v;
          }
        double m = (double)n * sp, mean = sum / m, var = sq / m - mean * mean;
        means[ch] = mean;
        vars[ch] = var > 0 ? var : 0;
        var_sum += vars[ch];
      }
      double floor = 0.1 * var_sum / c;
      if (floor <= 0) floor = 1.0;
      for (int ch = 0; ch < c; ch++) {
        l->params[0]->data[ch] = (float)(means[ch] * s);
        l->params[1]->data[ch] = (float)((vars[ch] > floor ? vars[ch] : floor) * s);
      }
      l->params[2]->data[0] = s;
      free(vars);
      free(means);
    } else if (!strcmp(t, "Scale") && l->n_params >= 1 &&
               !(l->param->scale_param && l->param->scale_param->filler)) {
      /* The last Scale of a residual branch (its output is added to the
       * shortcut) gets a small gamma, as trained ResNets have: otherwise
       * every block doubles the signal and fp32 rounding grows with depth. */
      bool feeds_sum = false;
      for (int j = i + 1; j < net->n_layers && !feeds_sum; j++)
        if (!strcmp(net->layers[j]->type->name, "Eltwise"))
          for (int b = 1; b < net->layers[j]->n_bottom; b++)
            if (net->layers[j]->bottom[b] == l->top[0]) feeds_sum = true;
      float lo = feeds_sum ? 0.1f : 0.5f, hi = feeds_sum ? 0.3f : 1.5f;
      for (size_t k = 0; k < l->params[0]->count; k++)
        l->params[0]->data[k] = rng_uniform(rng, lo, hi);
      if (l->n_params > 1 && l->param->scale_param && !l->param->scale_param->bias_filler)
        for (size_t k = 0; k < l->params[1]->count; k++)
          l->params[1]->data[k] = rng_gaussian(rng, 0.0f, 0.2f);
    }
  run:
    if (layer_forward(l, net->backend)) return -1;
  }
  return 0;
}

int cmd_import(int argc, char **argv) {
  const char *model = NULL, *weights = NULL, *out = NULL, *fill = NULL, *phase_s = "TEST";
  int seed = 1;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "net prototxt (required)"},
      {"weights", FLAG_STRING, &weights, "caffemodel(s) to copy from, comma-separated (default: fillers)"},
      {"out", FLAG_STRING, &out, "caffemodel to write (required; written atomically)"},
      {"fill", FLAG_STRING, &fill, "'msra': random values for parameters that have no filler"},
      {"seed", FLAG_INT, &seed, "random seed for fillers (default 1)"},
      {"phase", FLAG_STRING, &phase_s, "TEST (default) or TRAIN: which layers to build"},
  };
  const char *pos[1];
  int n_pos;
  int rc = flags_parse("import", "", "Copy caffemodel weights into a net by layer name (or fill "
                       "them) and write one caffemodel.",
                       flags, MOKA_ARRAY_LEN(flags), argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (!model || !out) return moka_errorf("moka import: --model and --out are required");
  if (fill && strcmp(fill, "msra")) return moka_errorf("moka import: --fill must be 'msra'");
  Phase ph;
  if (!strcmp(phase_s, "TEST")) ph = MOKA_TEST;
  else if (!strcmp(phase_s, "TRAIN")) ph = MOKA_TRAIN;
  else return moka_errorf("moka import: --phase must be TEST or TRAIN");
  NetOptions o;
  net_options_default(&o);
  if (cli_backend(NULL, &o.backend)) return -1; /* the CPU backend for --fill's calibration */
  o.phase = ph;
  o.seed = (uint32_t)seed;
  o.has_seed = true;
  o.quiet = true;
  double t0 = moka_now();
  Net *net = net_create_from_file(model, &o);
  if (!net) return -1;
  if (weights && *weights && net_copy_from_file(net, weights)) {
    net_free(net);
    return -1;
  }
  if (fill) {
    Rng r;
    rng_seed(&r, (uint32_t)seed + 1000003u);
    if (fill_msra(net, &r)) {
      net_free(net);
      return -1;
    }
  }
  rc = net_save_caffemodel(net, out);
  if (!rc)
    fprintf(stderr, "moka import: %s: %d layers, %d parameter blobs, %zu values -> %s (%.2f s)\n",
            model, net->n_layers, net->n_params, net->param_count, out, moka_now() - t0);
  net_free(net);
  return rc;
}
