/* fuzz_caffemodel.c — a .caffemodel as `moka classify/forward --weights`
 * and fine-tuning read it: NetParameter unpacked as proto_read_binary does;
 * net_param_upgrade on a copy (V1 layers, input fields); the net built in
 * TEST phase from the definition the file carries; the file's blobs copied
 * into it by layer name (net_copy_from); and, for small nets, one forward
 * and backward pass.
 *
 * Bounded: blobs together stay under FUZZ_BLOB_MEMORY (fuzz.h); layers that
 * read files named in the definition (Data, ImageData, ... and mean files)
 * are skipped, so the fuzzer never opens paths it made up. */
#include <string.h>

#include "caffe.pb-c.h"
#include "fuzz.h"
#include "net.h"
#include "proto_io.h"

/* Layers that open files named by the definition. */
static int fz_reads_files(const Caffe__NetParameter *p) {
  static const char *const kFileTypes[] = {"Data",       "ImageData",  "WindowData", "HDF5Data",
                                           "HDF5Output", "MemoryData", "Python"};
  for (size_t i = 0; i < p->n_layer; i++) {
    const Caffe__LayerParameter *l = p->layer[i];
    if (l->transform_param && l->transform_param->mean_file) return 1;
    if (l->data_param || l->image_data_param || l->window_data_param || l->hdf5_data_param)
      return 1;
    for (size_t k = 0; l->type && k < sizeof kFileTypes / sizeof *kFileTypes; k++)
      if (!strcmp(l->type, kFileTypes[k])) return 1;
  }
  return 0;
}

int fuzz_caffemodel(const uint8_t *data, size_t size) {
  fuzz_init();
  ProtobufCMessage *m;
  if (proto_unpack(&caffe__net_parameter__descriptor, data, size, "fuzz.caffemodel", &m) != 0)
    return 0;
  const Caffe__NetParameter *w = (const Caffe__NetParameter *)m;
  /* The upgrade on a copy (net_create upgrades its own copy again). */
  ProtobufCMessage *copy = NULL;
  FUZZ_ASSERT(proto_unpack(&caffe__net_parameter__descriptor, data, size, "copy", &copy) == 0,
              "a second unpack failed: %s", moka_error());
  Caffe__NetParameter *up = (Caffe__NetParameter *)copy;
  int upgraded = net_param_upgrade(up, "fuzz.caffemodel") == 0;
  if (upgraded) {
    FUZZ_ASSERT(up->n_layers == 0 && up->n_input == 0, "upgrade left %zu V1 layers, %zu inputs",
                up->n_layers, up->n_input);
    for (size_t i = 0; i < up->n_layer; i++) FUZZ_ASSERT(up->layer[i], "NULL layer %zu", i);
  }
  if (upgraded && !fz_reads_files(up)) {
    NetOptions o;
    net_options_default(&o);
    o.phase = MOKA_TEST;
    o.quiet = true;
    o.has_seed = true;
    o.seed = 1;
    Net *net = net_create(w, &o, "fuzz.caffemodel");
    if (net) {
      if (net_copy_from(net, w, "fuzz.caffemodel") == 0) {
        size_t acts = 0;
        for (int b = 0; b < net->n_blobs; b++) acts += net->blobs[b]->count;
        if (acts <= 4096 && net->param_count <= 4096) {
          float loss;
          if (net_forward(net, &loss) == 0) (void)net_backward(net);
        }
      }
      net_free(net);
    }
  }
  protobuf_c_message_free_unpacked(copy, NULL);
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

FUZZ_ENTRY(fuzz_caffemodel)
