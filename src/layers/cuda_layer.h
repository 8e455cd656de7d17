/* cuda_layer.h — what the layers' CUDA forward/backward functions share
 * (CUDA builds only): the check that the layer was put on a device and that
 * its blobs have device memory. Internal to src/layers.
 */
#ifndef MOKA_LAYERS_CUDA_LAYER_H
#define MOKA_LAYERS_CUDA_LAYER_H

#ifdef MOKA_WITH_CUDA
#include <string.h>

#include "layer.h"
#include "moka_cuda.h"
#include "util.h"

/* 0 when l->cuda is set and every bottom, top and parameter blob with
 * values has device data (and device diffs too when `diffs`); else -1 with
 * a message naming the blob (layer_forward adds the layer's name). */
static inline int layer_cuda_ready(const Layer *l, bool diffs) {
  if (!l->cuda)
    return moka_errorf("no CUDA context: the layer was not put on a device (net_to_device)");
  /* MOKA_BF16_ACT (src/net_bf16.h): only these read bf16 channels-last blobs */
  const char *tn = l->type->name;
  const bool takes_bf16 =
      !strcmp(tn, "Convolution") || !strcmp(tn, "Pooling") || !strcmp(tn, "Split");
  for (int pass = 0; pass < 3; pass++) {
    int n = pass == 0 ? l->n_bottom : pass == 1 ? l->n_top : l->n_params;
    Blob *const *v = pass == 0 ? l->bottom : pass == 1 ? l->top : l->params;
    for (int i = 0; i < n; i++) {
      if (v[i]->count == 0) continue;
      if (v[i]->dev_bf16 && !takes_bf16)
        return moka_errorf("%s %d ('%s') is a bf16 channels-last blob (MOKA_BF16_ACT=1), "
                           "which a %s layer does not read (with MOKA_BF16_ACT the BatchNorm "
                           "chains must run fused: not with debug_info)",
                           pass == 0 ? "bottom" : "top", i, v[i]->name, tn);
      if (!v[i]->dev_data || (diffs && !v[i]->dev_diff))
        return moka_errorf("%s %d ('%s') has no device %s",
                           pass == 0 ? "bottom" : pass == 1 ? "top" : "parameter", i, v[i]->name,
                           v[i]->dev_data ? "diff" : "data");
    }
  }
  return 0;
}

#endif
#endif
