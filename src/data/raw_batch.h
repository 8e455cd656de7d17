/* raw_batch.h — the "raw batch" of the device transforms: what the prefetch
 * pipeline hands to the CUDA Data/ImageData forward when the transforms run
 * on the GPU (src/data/data_cuda.c, kernels/transform.cu).
 *
 * One batch is ONE buffer (pinned host memory, copied to the device as is):
 *
 *   [ TransformRawItem items[B] | pad to 256 | image 0 | image 1 | ... ]
 *
 * Image i is its decoded pixels, uint8 (C,H,W) in BGR order (a Datum's raw
 * bytes, or a JPEG/PNG decoded as OpenCV does), at byte items[i].offset from
 * the start of the buffer; the images follow in whatever order the decode
 * threads finished them — the offsets say where each one is. items[i] also
 * holds the image's own size and the crop offset and mirror flag drawn for it
 * on the host, in Caffe's order (transform.h), so that images of different
 * sizes may share a batch when crop_size makes their outputs equal (as the
 * float path allows), and the record's label, so that the labels go up in
 * the same copy (pinned, asynchronous) as the pixels.
 *
 * Plain C with fixed-width fields: the same layout in C and in CUDA C++.
 */
#ifndef MOKA_RAW_BATCH_H
#define MOKA_RAW_BATCH_H

#include <stdint.h>

typedef struct TransformRawItem {
  uint64_t offset;      /* bytes from the start of the batch buffer to the pixels */
  int32_t c, h, w;      /* the decoded image: (C,H,W) uint8 */
  int32_t h_off, w_off; /* top-left corner of the crop (0, 0 without crop) */
  int32_t mirror;       /* 1: flip the crop horizontally */
  float label;          /* the record's label */
  int32_t pad_;         /* (keeps the size a multiple of 8 in C and C++) */
} TransformRawItem;

/* Bytes before the first image in a batch of `batch` items. */
static inline uint64_t transform_raw_header_bytes(int batch) {
  const uint64_t n = (uint64_t)batch * sizeof(TransformRawItem);
  return (n + 255u) & ~(uint64_t)255u;
}

#endif
