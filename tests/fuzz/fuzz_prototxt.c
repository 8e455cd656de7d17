/* fuzz_prototxt.c — the protobuf text reader (src/prototxt.c) on arbitrary
 * text, as a caffe.NetParameter (net definitions) and as a
 * caffe.SolverParameter (solver files). What parses is written back with
 * prototxt_format and read again: that must succeed and give the same
 * message (compared as packed binary) and, written again, the same text. */
#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>
#include <string.h>

#include "caffe.pb-c.h"
#include "fuzz.h"
#include "prototxt.h"

static uint8_t *fz_pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  FUZZ_ASSERT(buf, "out of memory packing %zu bytes", *len);
  FUZZ_ASSERT(protobuf_c_message_pack(m, buf) == *len, "pack size differs");
  return buf;
}

static void fz_prototxt_round_trip(const ProtobufCMessageDescriptor *desc, const char *text,
                                   size_t len) {
  ProtobufCMessage *m = NULL;
  if (prototxt_parse(desc, text, len, "fuzz.prototxt", &m) != 0) {
    FUZZ_ASSERT(m == NULL, "failed parse left a message");
    FUZZ_ASSERT(moka_error()[0], "failed parse without an error message");
    return;
  }
  char *t1 = prototxt_format(m);
  FUZZ_ASSERT(t1, "prototxt_format failed: %s", moka_error());
  ProtobufCMessage *m2 = NULL;
  int rc = prototxt_parse(desc, t1, strlen(t1), "formatted.prototxt", &m2);
  FUZZ_ASSERT(rc == 0, "the formatted text does not parse again: %s\n--- text ---\n%s",
              moka_error(), t1);
  char *t2 = prototxt_format(m2);
  FUZZ_ASSERT(t2, "prototxt_format failed: %s", moka_error());
  FUZZ_ASSERT(strcmp(t1, t2) == 0,
              "formatting is not stable:\n--- first ---\n%s\n--- second ---\n%s", t1, t2);
  size_t l1, l2;
  uint8_t *b1 = fz_pack(m, &l1), *b2 = fz_pack(m2, &l2);
  /* A NaN's payload is not kept by the text form ("nan"): compare the bytes
   * only when the text has no NaN. */
  if (!strstr(t1, "nan"))
    FUZZ_ASSERT(l1 == l2 && memcmp(b1, b2, l1) == 0,
                "the re-read message differs from the first (%zu vs %zu packed bytes)\n%s", l1, l2,
                t1);
  free(b1);
  free(b2);
  free(t1);
  free(t2);
  protobuf_c_message_free_unpacked(m, NULL);
  protobuf_c_message_free_unpacked(m2, NULL);
}

int fuzz_prototxt(const uint8_t *data, size_t size) {
  fuzz_init();
  fz_prototxt_round_trip(&caffe__net_parameter__descriptor, (const char *)data, size);
  fz_prototxt_round_trip(&caffe__solver_parameter__descriptor, (const char *)data, size);
  return 0;
}

FUZZ_ENTRY(fuzz_prototxt)
