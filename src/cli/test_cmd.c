/* moka test — Caffe's `caffe test` (tools/caffe.cpp, test()): score a model.
 *
 *   moka test --model=net.prototxt --weights=a.caffemodel[,b...]
 *             [--iterations=50] [--gpu=N] [--level=N] [--stage=a,b]
 *
 * Builds the net in the TEST phase, runs `iterations` forward passes and
 * logs, as Caffe does, every output value of every batch ("Batch i, name =
 * v"), the mean loss ("Loss: L") and the mean of every output value
 * ("name = v", with "(* w = w*v loss)" for loss outputs). Outputs are listed
 * in name order, as Caffe lists them; sums are float, as in Caffe.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "net.h"
#include "net_cuda.h"
#include "util.h"

/* The loss weight of the last layer that has `b` as a top (Caffe's
 * blob_loss_weights_). */
static float loss_weight_of(const Net *net, const Blob *b) {
  float w = 0;
  for (int i = 0; i < net->n_layers; i++)
    for (int t = 0; t < net->layers[i]->n_top; t++)
      if (net->layers[i]->top[t] == b) w = net->layers[i]->loss_weight[t];
  return w;
}

int cmd_test(int argc, char **argv) {
  /* Only outputs are read: activations share device memory (src/net_memplan.h). */
  net_cuda_plan_memory_by_default(true);
  const char *model = NULL, *weights = NULL, *gpu = NULL, *stage = NULL, *precision = NULL;
  int iterations = 50, level = 0;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "the net definition (.prototxt, required)"},
      {"weights", FLAG_STRING, &weights, "trained weights, comma-separated .caffemodel files (required)"},
      {"iterations", FLAG_INT, &iterations, "number of forward passes (default 50)"},
      {"gpu", FLAG_STRING, &gpu, "GPU device id (default: CPU)"},
      {"precision", FLAG_STRING, &precision, CLI_PRECISION_HELP},
      {"level", FLAG_INT, &level, "net level for the NetState (default 0)"},
      {"stage", FLAG_STRING, &stage, "net stages for the NetState, comma-separated"},
  };
  const char *pos[1];
  int n_pos;
  int rc = flags_parse("test", "", "Score a model on its TEST phase, as `caffe test`.", flags,
                       MOKA_ARRAY_LEN(flags), argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (!model || !*model)
    return moka_errorf("moka test: Need a model definition to score (--model=net.prototxt)");
  if (!weights || !*weights)
    return moka_errorf("moka test: Need model weights to score (--weights=model.caffemodel)");
  if (iterations < 0) return moka_errorf("moka test: --iterations must be >= 0, got %d", iterations);
  Backend be;
  if (cli_backend(gpu, &be) || cli_precision(precision, be)) return -1;
  if (be != MOKA_BACKEND_CUDA) LOG_INFO("Use CPU.");

  const char *stages[256];
  int n_stages = 0;
  char *stage_list = stage && *stage ? moka_strdup(stage) : NULL;
  if (stage && *stage && !stage_list) return -1;
  char *save = NULL;
  for (char *t = stage_list ? strtok_r(stage_list, ",", &save) : NULL; t && n_stages < 256;
       t = strtok_r(NULL, ",", &save))
    stages[n_stages++] = t;
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TEST;
  o.level = level;
  o.n_stages = n_stages;
  o.stages = stages;
  o.backend = be;
  o.quiet = true;
  Net *net = net_create_from_file(model, &o);
  if (!net || net_copy_from_file(net, weights) || cli_net_to_device(net, gpu)) {
    net_free(net);
    free(stage_list);
    return -1;
  }
  net_freeze_weights(net); /* inference only: layers may prepare the weights once */
  LOG_INFO("Running for %d iterations.", iterations);

  /* outputs in name order */
  Blob **outs = moka_calloc((size_t)net->n_outputs + 1, sizeof *outs);
  size_t n_scores = 0;
  for (int i = 0; outs && i < net->n_outputs; i++) {
    outs[i] = net->outputs[i];
    for (int j = i; j > 0 && strcmp(outs[j - 1]->name, outs[j]->name) > 0; j--) {
      Blob *t = outs[j];
      outs[j] = outs[j - 1];
      outs[j - 1] = t;
    }
    n_scores += net->outputs[i]->count;
  }
  float *score = moka_calloc(n_scores + 1, sizeof *score);  /* (n_scores) summed outputs */
  int *score_out = moka_calloc(n_scores + 1, sizeof *score_out);
  rc = outs && score && score_out ? 0 : -1;
  float loss = 0;
  for (int i = 0; i < iterations && !rc; i++) {
    float iter_loss;
    if (net_forward(net, &iter_loss) || cli_outputs_to_host(net, outs, net->n_outputs)) {
      rc = moka_error_prefix("batch %d", i);
      break;
    }
    loss += iter_loss;
    size_t idx = 0;
    for (int j = 0; j < net->n_outputs; j++)
      for (size_t k = 0; k < outs[j]->count; k++, idx++) {
        const float v = outs[j]->data[k];
        if (i == 0) {
          score[idx] = v;
          score_out[idx] = j;
        } else {
          score[idx] += v;
        }
        LOG_INFO("Batch %d, %s = %g", i, outs[j]->name, (double)v);
      }
  }
  if (!rc) {
    loss /= (float)iterations;
    LOG_INFO("Loss: %g", (double)loss);
    for (size_t i = 0; i < n_scores && iterations > 0; i++) {
      const Blob *b = outs[score_out[i]];
      const float w = loss_weight_of(net, b);
      const float mean = score[i] / (float)iterations;
      if (w != 0.0f)
        LOG_INFO("%s = %g (* %g = %g loss)", b->name, (double)mean, (double)w, (double)(w * mean));
      else
        LOG_INFO("%s = %g", b->name, (double)mean);
    }
  }
  free(score);
  free(score_out);
  free(outs);
  free(stage_list);
  net_free(net);
  return rc ? -1 : 0;
}
