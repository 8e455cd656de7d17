/* data_layer.h — controls shared by the Data and ImageData layers
 * (src/layers/data.c, src/layers/imagedata.c), both fed by the prefetch
 * pipeline (src/data/prefetch.h).
 */
#ifndef MOKA_DATA_LAYER_H
#define MOKA_DATA_LAYER_H

#include <stdint.h>

#include "data/prefetch.h"
#include "layer.h"

/* Make the next forward of a Data or ImageData layer return the batch that
 * starts `record_index` records after the layer's start (record r of an
 * uninterrupted run, counting from 0 and across wrap-arounds): the same
 * records (LMDB: record r mod count in key order; ImageData: the list in the
 * order its shuffles would have reached) and the same random crops and
 * mirrors. The solver resumes with record_index = iteration x batch_size
 * (x iter_size), so that a resumed run continues exactly as one that never
 * stopped. Cost: O(record_index) cursor steps and random draws. Errors: not
 * a data layer, or the source cannot be positioned. */
int data_layer_seek(Layer *l, uint64_t record_index);

/* The first members of both layers' priv structs: the pipeline and (CUDA
 * builds, once the layer ran on a device) its device-transform state
 * (src/data/data_cuda.h). */
typedef struct DataLayerHead {
  Prefetcher *pf;
  struct DataCuda *dc;
} DataLayerHead;

/* The layer's pipeline (for statistics: prefetch_wait_seconds, ...), or
 * NULL when l is not a Data / ImageData layer. */
Prefetcher *data_layer_prefetcher(Layer *l);

/* What Caffe 1.0's BasePrefetchingDataLayer::LayerSetUp takes from the
 * global stream, in order, around the layer's own setup: the transformer's
 * InitRand (a draw only when the transform is random) before and again after
 * DataLayerSetUp — the second seed is the one kept —, then the prefetch
 * thread's seed (always). data_setup_draws_before / _after take them from
 * `global` (may be NULL when nothing is random: then nothing is taken) and
 * seed `own`, the transformer's stream. */
void data_setup_draws_before(const Transformer *t, Rng *global, Rng *own);
void data_setup_draws_after(const Transformer *t, Rng *global, Rng *own);

#endif
