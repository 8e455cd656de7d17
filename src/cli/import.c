/* moka import — build a net from its prototxt, copy weights from one or more
 * caffemodels by layer name (Caffe's rules, with its log lines), and write
 * the result as one caffemodel in the layout Caffe itself writes (V2 layers,
 * BlobShape, the BatchNorm lr_mult 0 ParamSpecs, phase). Old V1 caffemodels
 * (CaffeNet/VGG era) come out upgraded.
 *
 * Without --weights, parameters come from the prototxt's fillers; --fill=msra
 * additionally gives layers that declare no filler usable random values
 * (Convolution/InnerProduct: MSRA gaussian; BatchNorm: mean 0, variance 1;
 * Scale: gamma 1, beta 0), which is what the demo and the cross-checks use
 * to make a full-size ResNet without downloading anything. */
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

static void fill_msra(Net *net, Rng *rng) {
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    const char *t = l->type->name;
    if (!strcmp(t, "Convolution") || !strcmp(t, "InnerProduct")) {
      if (l->n_params < 1 || !all_zero(l->params[0])) continue;
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
      /* mean 0, variance 1, scale factor 1 */
      for (size_t k = 0; k < l->params[1]->count; k++) l->params[1]->data[k] = 1.0f;
      l->params[2]->data[0] = 1.0f;
    } else if (!strcmp(t, "Scale") && l->n_params >= 1 && all_zero(l->params[0])) {
      for (size_t k = 0; k < l->params[0]->count; k++) l->params[0]->data[k] = 1.0f;
    }
  }
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
    fill_msra(net, &r);
  }
  rc = net_save_caffemodel(net, out);
  if (!rc)
    fprintf(stderr, "moka import: %s: %d layers, %d parameter blobs, %zu values -> %s (%.2f s)\n",
            model, net->n_layers, net->n_params, net->param_count, out, moka_now() - t0);
  net_free(net);
  return rc;
}
