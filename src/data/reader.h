/* reader.h — the body of Caffe's Data layer (DataLayer::load_batch): read
 * the next batch_size records of an LMDB in key order (wrapping around after
 * the last), decode each Datum, transform it, and write data (B,C,H,W) and
 * labels (B). This is the synchronous REFERENCE: the Data layer
 * (src/layers/data.c) runs the prefetch pipeline (src/data/prefetch.h), and
 * tests/unit/test_data_pipeline.c checks that the pipeline's batches equal
 * this reader's, bit for bit, for any number of threads.
 */
#ifndef MOKA_READER_H
#define MOKA_READER_H

#include "blob.h"
#include "caffe.pb-c.h"
#include "data/datum.h"
#include "data/db.h"
#include "data/transform.h"
#include "rng.h"

typedef struct DataReader {
  char *what;        /* "layer 'data'" for messages */
  DbReader *db;
  Transformer tf;
  Rng rng;           /* the transformer's own stream (Caffe's DataTransformer rng_) */
  int batch_size;
  DatumPixels px;    /* scratch: the decoded record, (C,H,W) */
} DataReader;

/* Open `source` (an LMDB folder) and read the transform parameters (tp may
 * be NULL). When the transform draws random numbers, its stream is seeded
 * as Caffe 1.0's data layer setup does: InitRand runs twice, so two draws of
 * `global` are taken and the second is the seed. global may be NULL when
 * nothing is random (TEST without mirror). `what` names the layer. */
int data_reader_open(DataReader *r, const char *what, const char *source, int batch_size,
                     const Caffe__TransformationParameter *tp, int train, Rng *global);
void data_reader_close(DataReader *r);

/* (C,H,W) of one transformed item for the current record (Caffe's
 * InferBlobShape on it); the cursor does not move. */
int data_reader_peek_shape(DataReader *r, int *c, int *h, int *w);

/* Load the next batch: data is reshaped to (batch_size,C,H,W) from the
 * batch's first record, as Caffe does; label (may be NULL) to (batch_size). */
int data_reader_load_batch(DataReader *r, Blob *data, Blob *label);

#endif
