/* net.h — Caffe's Net: layers and blobs built from a NetParameter.
 *
 * Building (net_create) follows Caffe's Net::Init:
 *   1. upgrade legacy definitions (V1 `layers`, deprecated `input` fields ->
 *      an Input layer named "input");
 *   2. keep the layers whose include/exclude rules match the NetState
 *      (phase, level, stages);
 *   3. insert a Split layer after every top that several layers consume, so
 *      each consumer gets its own blob and gradients add up in the Split;
 *   4. create blobs by name (a top named like one of the layer's bottoms is
 *      computed in place), set up and shape each layer in order;
 *   5. decide which layers and bottoms need backward (learnable params with
 *      lr_mult != 0, blobs that lead to a loss, propagate_down, force_backward);
 *   6. place every parameter blob in one flat allocation, in net order
 *      (param_data / param_diff), with the layer's blobs as views into it.
 */
#ifndef MOKA_NET_H
#define MOKA_NET_H

#include <stdbool.h>

#include "blob.h"
#include "caffe.pb-c.h"
#include "layer.h"
#include "rng.h"

/* Total learnable/statistics values a net may hold (2^31 floats = 8 GiB,
 * plus as much again for the gradients). A definition asking for more
 * (e.g. num_output: 1073741824) is refused, naming the layer that crossed
 * the limit. Each blob is also checked against the memory limit before it
 * is allocated (blob_set_memory_limit). */
#define MOKA_MAX_NET_PARAMS (1LL << 31)

typedef struct NetOptions {
  Phase phase;
  int level;
  int n_stages;
  const char *const *stages;
  Backend backend;
  uint32_t seed;     /* random_seed for fillers/Dropout; 0 with has_seed false = entropy */
  bool has_seed;
  bool quiet;        /* no per-layer set-up log lines */
} NetOptions;

typedef struct Net {
  char *name;
  Phase phase;
  Backend backend;
  Caffe__NetParameter *param; /* the upgraded, filtered definition (owned) */
  Rng rng;

  int n_layers;
  Layer **layers;
  Caffe__LayerParameter **split_params; /* Split layers the net made (owned) */
  int n_split_params;
  bool *layer_need_backward; /* [n_layers] */

  int n_blobs;
  Blob **blobs;              /* every named blob, in order of creation */

  /* Every parameter blob of every layer, in net order (Caffe's params_). */
  int n_params;
  Blob **params;
  int *param_layer;          /* [n_params] owning layer index */
  float *param_lr_mult;      /* [n_params] */
  float *param_decay_mult;   /* [n_params] */
  size_t param_count;        /* total floats */
  float *param_data;         /* (param_count) all values, one allocation */
  float *param_diff;         /* (param_count) all gradients */

  /* Caffe's debug_info_: net_forward / net_backward log per-layer mean
   * absolute values (src/net_check.h). Set from the definition's
   * `debug_info`; the solver sets the train net's on display iterations. */
  bool debug_info;

  /* Outputs: blobs no layer consumes (Caffe's net_output_blobs_). */
  int n_outputs;
  Blob **outputs;

  /* CUDA backend (src/net_cuda.c, net_to_device); NULL otherwise. The flat
   * buffers have param_data's layout; every parameter blob's dev_data/dev_diff
   * are views into the first two. */
  struct MokaCuda *cuda;     /* device context (owned) */
  float *dev_param_data;     /* (param_count) parameters on the device */
  float *dev_param_diff;     /* (param_count) gradients on the device */
  float *dev_history;        /* (param_count) SGD momentum on the device (zeroed) */
  struct NetCudaState *cuda_state; /* net_cuda.c's own bookkeeping (owned) */
  /* Device memory plan (src/net_memplan.h), read by net_to_device (and again
   * after a reshape). false, the default: every blob keeps its own device
   * memory and stays readable after forward and backward, as in Caffe, so a
   * library user can read any blob. true: activations whose values no later
   * step needs share one arena, and only the net's outputs, loss tops,
   * source tops and the blobs named in memplan_keep stay readable. `moka
   * time`, `moka train` and `moka test` turn it on for their nets
   * (net_cuda_plan_memory_by_default); MOKA_CUDA_MEMPLAN=0 in the
   * environment turns it off everywhere, =1 on everywhere. */
  bool plan_device_memory;
  const char *const *memplan_keep; /* [n_memplan_keep] blob names (not owned; read
                                      when the plan is made: net_to_device, reshapes) */
  int n_memplan_keep;
  /* CUDA: the tops of Input layers are on the device already and the host
   * copies are not sent again each forward (false: every forward sends them,
   * as the caller may have written new values). `moka time` sets it after its
   * one fill, as Caffe's Input blobs stay on the GPU until the host writes
   * them; whoever sets it and then writes the host values calls
   * net_inputs_to_device. Data layers send their tops every forward anyway. */
  bool inputs_resident;

  /* Fused BatchNorm -> Scale (-> Eltwise) (-> ReLU) chains (src/net_fuse.h);
   * NULL when fusion does not apply (reference backend, MOKA_FUSE=0). */
  struct NetFusePlan *fuse;
} Net;

void net_options_default(NetOptions *o);

/* Build from a parsed definition. The net takes a private copy of `param`.
 * `source` names the file in error messages. Returns NULL + moka_error(). */
Net *net_create(const Caffe__NetParameter *param, const NetOptions *o, const char *source);
/* Read a prototxt and build. */
Net *net_create_from_file(const char *prototxt, const NetOptions *o);
void net_free(Net *net);

/* Upgrade a definition in place: V1 layers -> layers, input fields -> Input
 * layer. Returns 0 / -1. Used by net_create and by weight loading. */
int net_param_upgrade(Caffe__NetParameter *p, const char *source);

/* Forward through every layer; *loss gets the weighted sum of loss tops.
 * On the CUDA backend (src/net_cuda.h) source layers (no bottoms) run on the
 * host and their tops are copied to the device after their forward, and loss
 * tops (scalars) are copied back to the host: those are the only copies the
 * net makes by itself. */
int net_forward(Net *net, float *loss);
/* One layer as net_forward / net_backward run it (net_backward_layer: does
 * nothing for a layer that needs no backward; sets the loss tops' diffs to
 * their loss weights first). */
int net_forward_layer(Net *net, int i);
int net_backward_layer(Net *net, int i);
/* Forward up to and including layer index `end` (Caffe's ForwardTo). */
int net_forward_to(Net *net, int end, float *loss);
/* Backward through every layer that needs it (param diffs accumulate). */
int net_backward(Net *net);
void net_clear_param_diffs(Net *net);
/* A promise that the weights no longer change (classify, test, forward-only
 * timing): layers may prepare copies of them once (layer.h). Training never
 * freezes; a caller that writes weights after this must not. */
void net_freeze_weights(Net *net);
/* Reshape every layer (after an input blob changed shape). */
int net_reshape(Net *net);

Blob *net_blob(const Net *net, const char *name);
Layer *net_layer(const Net *net, const char *name);
int net_layer_index(const Net *net, const char *name);

/* Copy parameters from trained weights by layer name (Caffe's
 * CopyTrainedLayersFrom): logs "Copying source layer …" / "Ignoring source
 * layer …"; a shape mismatch is an error naming the layer and both shapes. */
int net_copy_from(Net *net, const Caffe__NetParameter *weights, const char *source);
/* Read a .caffemodel (or several, comma-separated) and copy. */
int net_copy_from_file(Net *net, const char *paths);

/* The net as a NetParameter with its parameters as blobs (Caffe's ToProto):
 * a caffemodel. Free with protobuf_c_message_free_unpacked. */
Caffe__NetParameter *net_to_proto(const Net *net, bool write_diff);
int net_save_caffemodel(const Net *net, const char *path);

#endif
