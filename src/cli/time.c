/* moka time — per-layer forward/backward timings, as Caffe's `caffe time`
 * (tools/caffe.cpp time()), with the same log lines so that scripts written
 * for Caffe's output read moka's:
 *
 *   Performing Forward / Initial loss: L / Performing Backward
 *   *** Benchmark begins *** / Testing for N iterations.
 *   Iteration: j forward-backward time: X ms.
 *   Average time per layer:
 *   <name>\tforward: X ms. / <name>\tbackward: X ms.
 *   Average Forward pass: X ms. / Average Backward pass: X ms.
 *   Average Forward-Backward: X ms. / Total Time: X ms. / *** Benchmark ends ***
 *
 * plus one line of throughput, "Average throughput: X img/s (batch size N,
 * ...)", N being the first dimension of the first data-layer top.
 *
 * As Caffe, the net is built in the TRAIN phase and one untimed forward +
 * backward pass comes first (the warm-up: buffers allocated, caches warm).
 * --forward_only times inference instead: TEST phase (unless --phase says
 * otherwise), forward passes only, and no backward lines.
 *
 * Caffe's time assumes the net needs no input: a DummyData layer, or an
 * Input layer that Caffe leaves at zeros. moka fills the 4-D tops of Input
 * layers with gaussian noise, N(0, 50^2) (about the spread of mean-subtracted
 * pixels) instead: all-zero input makes ReLU, BatchNorm and the GEMMs'
 * memory traffic artificially cheap and the timing dishonest.
 *
 * The per-layer loops below are net_forward/net_backward (net.c) with a
 * timer around each layer (net_forward_layer/net_backward_layer): layers the
 * net would skip in backward (layer_need_backward false) are skipped here too.
 *
 * --gpu N (CUDA builds): the net runs on device N. Each timed layer is
 * followed by a stream synchronisation, as Caffe's per-layer GPU timers do,
 * so the per-layer figures are honest but the sum pays one launch latency
 * per layer. The same number of whole passes then run again without
 * per-layer synchronisation (one at the end of each pass), giving the line
 * "Average throughput (unsynchronised passes): X img/s"; and the device
 * memory taken (now and peak) is logged. The Input tops go up to the
 * device once, in the untimed pass, and stay there (net->inputs_resident),
 * as Caffe's Input blobs stay on the GPU while the host does not write them:
 * the timed passes do not include a host->device copy of the input (Data
 * layers still decode and send a batch every pass).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "net_cuda.h"
#include "util.h"
#ifdef MOKA_WITH_CUDA
#include "moka_cuda.h"
#include "net_cuda.h"
#endif

/* Wait for the device (CUDA); nothing on the CPU. */
static int device_sync(Net *net) {
#ifdef MOKA_WITH_CUDA
  if (net->cuda) return moka_cuda_sync(net->cuda);
#else
  (void)net;
#endif
  return 0;
}

/* One layer's forward, timed (ms). */
static int time_forward(Net *net, int i, double *ms) {
  double t0 = moka_now();
  if (net_forward_layer(net, i) || device_sync(net)) return -1;
  *ms = (moka_now() - t0) * 1e3;
  return 0;
}

/* One layer's backward as net_backward runs it, timed (ms; 0 when the net
 * would skip the layer). */
static int time_backward(Net *net, int i, double *ms) {
  *ms = 0;
  if (!net->layer_need_backward[i]) return 0;
  double t0 = moka_now();
  if (net_backward_layer(net, i) || device_sync(net)) return -1;
  *ms = (moka_now() - t0) * 1e3;
  return 0;
}

/* Batch size: first dimension of the first top of the first layer that has
 * no bottoms (Input, DummyData, Data, ...); 0 when there is none. */
static int batch_size_of(const Net *net) {
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    if (l->n_bottom == 0 && l->n_top > 0 && l->top[0]->num_axes > 0)
      return l->top[0]->shape[0];
  }
  return 0;
}

/* Gaussian noise into the 4-D tops of Input layers (see the header). */
static void fill_inputs(Net *net) {
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    if (strcmp(l->type->name, "Input") != 0) continue;
    for (int t = 0; t < l->n_top; t++) {
      Blob *b = l->top[t];
      if (b->num_axes != 4) continue;
      for (size_t k = 0; k < b->count; k++) b->data[k] = rng_gaussian(&net->rng, 0.0f, 50.0f);
      char s[128];
      LOG_INFO("Input blob '%s' (%s): filled with gaussian noise N(0, 50^2)", b->name,
               blob_shape_string(b, s, sizeof s));
    }
  }
}

int cmd_time(int argc, char **argv) {
  /* Only outputs are read: activations share device memory (src/net_memplan.h). */
  net_cuda_plan_memory_by_default(true);
  const char *model = NULL, *weights = NULL, *phase_s = NULL, *gpu = NULL, *precision = NULL;
  int iterations = 50;
  bool forward_only = false;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "net prototxt (required)"},
      {"iterations", FLAG_INT, &iterations, "timed iterations (default 50)"},
      {"phase", FLAG_STRING, &phase_s,
       "TRAIN (default) or TEST; --forward_only makes TEST the default"},
      {"forward_only", FLAG_BOOL, &forward_only,
       "time forward passes only (inference; TEST phase unless --phase is given)"},
      {"weights", FLAG_STRING, &weights, ".caffemodel to copy by layer name (default: fillers)"},
      {"gpu", FLAG_STRING, &gpu, "GPU id (default: CPU)"},
      {"precision", FLAG_STRING, &precision, CLI_PRECISION_HELP},
  };
  const char *pos[1];
  int n_pos;
  int rc = flags_parse("time", "",
                       "Benchmark a net: per-layer forward/backward times, as Caffe's `caffe time`.",
                       flags, MOKA_ARRAY_LEN(flags), argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (iterations < 1) return moka_errorf("moka time: --iterations must be >= 1, got %d", iterations);
  Phase ph;
  if (!phase_s) ph = forward_only ? MOKA_TEST : MOKA_TRAIN;
  else if (!strcmp(phase_s, "TRAIN")) ph = MOKA_TRAIN;
  else if (!strcmp(phase_s, "TEST")) ph = MOKA_TEST;
  else return moka_errorf("moka time: --phase must be TRAIN or TEST, not '%s'", phase_s);
  Backend be;
  if (cli_backend(gpu, &be) || cli_precision(precision, be)) return -1;
  LOG_INFO("Use %s.", be == MOKA_BACKEND_CUDA ? "GPU" : "CPU");
  Net *net = cli_load_net(model, weights, ph, be, gpu);
  if (!net) return -1;
  /* Timing inference: the weights never change, and layers may prepare
   * them once, as for classify and test (the untimed first pass does). A
   * training step's timing keeps the per-GEMM packing a real step pays. */
  if (forward_only) net_freeze_weights(net);
  int nl = net->n_layers;
  double *fwd = moka_calloc((size_t)nl + 1, sizeof *fwd); /* (nl) summed ms per layer */
  double *bwd = moka_calloc((size_t)nl + 1, sizeof *bwd); /* (nl) summed ms per layer */
  if (!fwd || !bwd) {
    rc = -1;
    goto done;
  }
  fill_inputs(net);

  /* One clean pass first (untimed), as Caffe. */
  LOG_INFO("Performing Forward");
  float loss = 0;
  if (net_forward(net, &loss)) {
    rc = -1;
    goto done;
  }
  LOG_INFO("Initial loss: %g", loss);
  if (!forward_only) {
    LOG_INFO("Performing Backward");
    if (net_backward(net)) {
      rc = -1;
      goto done;
    }
  }
  net_clear_param_diffs(net);
#ifdef MOKA_WITH_CUDA
  /* The input went up in the untimed pass; it stays on the device (see the
   * header). Sent once more so that the flag's contract holds whatever the
   * warm-up did to device memory. */
  if (net->cuda) {
    net->inputs_resident = true;
    if (net_inputs_to_device(net) || device_sync(net)) {
      rc = -1;
      goto done;
    }
  }
#endif

  LOG_INFO("*** Benchmark begins ***");
  LOG_INFO("Testing for %d iterations.", iterations);
  double total0 = moka_now(), fwd_total = 0, bwd_total = 0;
  for (int j = 0; j < iterations; j++) {
    double it0 = moka_now(), ms;
    for (int i = 0; i < nl; i++) {
      if (time_forward(net, i, &ms)) {
        rc = -1;
        goto done;
      }
      fwd[i] += ms;
    }
    double it1 = moka_now();
    fwd_total += it1 - it0;
    if (!forward_only) {
      for (int i = nl - 1; i >= 0; i--) {
        if (time_backward(net, i, &ms)) {
          rc = -1;
          goto done;
        }
        bwd[i] += ms;
      }
      bwd_total += moka_now() - it1;
    }
    LOG_INFO("Iteration: %d %s time: %g ms.", j + 1,
             forward_only ? "forward" : "forward-backward", (moka_now() - it0) * 1e3);
  }
  LOG_INFO("Average time per layer: ");
  for (int i = 0; i < nl; i++) {
    LOG_INFO("%10s\tforward: %g ms.", net->layers[i]->name, fwd[i] / iterations);
    if (!forward_only)
      LOG_INFO("%10s\tbackward: %g ms.", net->layers[i]->name, bwd[i] / iterations);
  }
  double total_ms = (moka_now() - total0) * 1e3;
  LOG_INFO("Average Forward pass: %g ms.", fwd_total * 1e3 / iterations);
  if (!forward_only) {
    LOG_INFO("Average Backward pass: %g ms.", bwd_total * 1e3 / iterations);
    LOG_INFO("Average Forward-Backward: %g ms.", total_ms / iterations);
  }
  LOG_INFO("Total Time: %g ms.", total_ms);
  int batch = batch_size_of(net);
  if (batch > 0) {
    double per_iter_ms = forward_only ? fwd_total * 1e3 / iterations : total_ms / iterations;
    LOG_INFO("Average throughput: %.2f img/s (batch size %d, %s, %s phase)",
             batch * 1e3 / per_iter_ms, batch, forward_only ? "forward" : "forward-backward",
             ph == MOKA_TRAIN ? "TRAIN" : "TEST");
  } else {
    LOG_INFO("Average throughput: unknown (the net has no data or input layer)");
  }
#ifdef MOKA_WITH_CUDA
  if (net->cuda) {
    /* Whole passes, synchronised once per pass (see the header). */
    double t0 = moka_now();
    for (int j = 0; j < iterations; j++) {
      if (net_forward(net, &loss) || (!forward_only && net_backward(net)) || device_sync(net)) {
        rc = -1;
        goto done;
      }
    }
    double pass_ms = (moka_now() - t0) * 1e3 / iterations;
    if (batch > 0)
      LOG_INFO("Average throughput (unsynchronised passes): %.2f img/s (%g ms per %s pass, "
               "batch size %d)",
               batch * 1e3 / pass_ms, pass_ms, forward_only ? "forward" : "forward-backward",
               batch);
    if (net_cuda_memory(net, NULL, NULL, true)) {
      rc = -1;
      goto done;
    }
  }
#endif
  LOG_INFO("*** Benchmark ends ***");
done:
  free(fwd);
  free(bwd);
  net_free(net);
  return rc;
}
