/* test_prototxt.c — the protobuf text format reader/writer (src/prototxt.c).
 *
 * Every .prototxt under shared/ (golden fixtures and Kaiming He's ResNet
 * deploy files) parses, formats and parses back to the same binary message;
 * known values are checked; every kind of bad input is a -1 with a
 * "FILE:LINE:COL: message" error; truncated and corrupted inputs never crash.
 * A hand-written descriptor (TNode below) covers the scalar types caffe.proto
 * does not use and a self-recursive message for the nesting limit.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "caffe.pb-c.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

/* ---- a test message type with every field type ------------------------------------------ */

typedef struct TNode TNode;
struct TNode {
  ProtobufCMessage base;
  protobuf_c_boolean has_i32;
  int32_t i32;
  protobuf_c_boolean has_i64;
  int64_t i64;
  protobuf_c_boolean has_u32;
  uint32_t u32;
  protobuf_c_boolean has_u64;
  uint64_t u64;
  protobuf_c_boolean has_s32;
  int32_t s32;
  protobuf_c_boolean has_s64;
  int64_t s64;
  protobuf_c_boolean has_fx32;
  uint32_t fx32;
  protobuf_c_boolean has_fx64;
  uint64_t fx64;
  protobuf_c_boolean has_sf32;
  int32_t sf32;
  protobuf_c_boolean has_sf64;
  int64_t sf64;
  protobuf_c_boolean has_fl;
  float fl;
  protobuf_c_boolean has_db;
  double db;
  protobuf_c_boolean has_b;
  protobuf_c_boolean b;
  char *str; /* [default = "dflt"] */
  protobuf_c_boolean has_by;
  ProtobufCBinaryData by;
  protobuf_c_boolean has_e;
  int e;
  TNode *child;
  size_t n_kids;
  TNode **kids;
  size_t n_rf;
  float *rf;
  size_t n_rs;
  char **rs;
  size_t n_rby;
  ProtobufCBinaryData *rby;
  size_t n_ri64;
  int64_t *ri64;
  size_t n_re;
  int *re;
};

static const ProtobufCEnumValue tcolor_values[] = {
    {"ZERO", "T_ZERO", 0}, {"ONE", "T_ONE", 1}, {"TWO", "T_TWO", 2}};
static const ProtobufCEnumValueIndex tcolor_by_name[] = {{"ONE", 1}, {"TWO", 2}, {"ZERO", 0}};
static const ProtobufCIntRange tcolor_ranges[] = {{0, 0}, {0, 3}};
static const ProtobufCEnumDescriptor tcolor_desc = {PROTOBUF_C__ENUM_DESCRIPTOR_MAGIC,
                                                    "t.Color",
                                                    "Color",
                                                    "TColor",
                                                    "t",
                                                    3,
                                                    tcolor_values,
                                                    3,
                                                    tcolor_by_name,
                                                    1,
                                                    tcolor_ranges,
                                                    NULL,
                                                    NULL,
                                                    NULL,
                                                    NULL};

static char tnode_str_default[] = "dflt";
extern const ProtobufCMessageDescriptor tnode_desc;

#define OPT(name, id, type, member, desc)                                     \
  {                                                                           \
    name, id, PROTOBUF_C_LABEL_OPTIONAL, type, offsetof(TNode, has_##member), \
        offsetof(TNode, member), desc, NULL, 0, 0, NULL, NULL                 \
  }
#define REP(name, id, type, member, desc)                                   \
  {                                                                         \
    name, id, PROTOBUF_C_LABEL_REPEATED, type, offsetof(TNode, n_##member), \
        offsetof(TNode, member), desc, NULL, 0, 0, NULL, NULL               \
  }

static const ProtobufCFieldDescriptor tnode_fields[] = {
    OPT("i32", 1, PROTOBUF_C_TYPE_INT32, i32, NULL),
    OPT("i64", 2, PROTOBUF_C_TYPE_INT64, i64, NULL),
    OPT("u32", 3, PROTOBUF_C_TYPE_UINT32, u32, NULL),
    OPT("u64", 4, PROTOBUF_C_TYPE_UINT64, u64, NULL),
    OPT("s32", 5, PROTOBUF_C_TYPE_SINT32, s32, NULL),
    OPT("s64", 6, PROTOBUF_C_TYPE_SINT64, s64, NULL),
    OPT("fx32", 7, PROTOBUF_C_TYPE_FIXED32, fx32, NULL),
    OPT("fx64", 8, PROTOBUF_C_TYPE_FIXED64, fx64, NULL),
    OPT("sf32", 9, PROTOBUF_C_TYPE_SFIXED32, sf32, NULL),
    OPT("sf64", 10, PROTOBUF_C_TYPE_SFIXED64, sf64, NULL),
    OPT("fl", 11, PROTOBUF_C_TYPE_FLOAT, fl, NULL),
    OPT("db", 12, PROTOBUF_C_TYPE_DOUBLE, db, NULL),
    OPT("b", 13, PROTOBUF_C_TYPE_BOOL, b, NULL),
    {"str", 14, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_STRING, 0, offsetof(TNode, str), NULL,
     tnode_str_default, 0, 0, NULL, NULL},
    OPT("by", 15, PROTOBUF_C_TYPE_BYTES, by, NULL),
    OPT("e", 16, PROTOBUF_C_TYPE_ENUM, e, &tcolor_desc),
    {"child", 17, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_MESSAGE, 0, offsetof(TNode, child),
     &tnode_desc, NULL, 0, 0, NULL, NULL},
    REP("kids", 18, PROTOBUF_C_TYPE_MESSAGE, kids, &tnode_desc),
    REP("rf", 19, PROTOBUF_C_TYPE_FLOAT, rf, NULL),
    REP("rs", 20, PROTOBUF_C_TYPE_STRING, rs, NULL),
    REP("rby", 21, PROTOBUF_C_TYPE_BYTES, rby, NULL),
    REP("ri64", 22, PROTOBUF_C_TYPE_INT64, ri64, NULL),
    REP("re", 23, PROTOBUF_C_TYPE_ENUM, re, &tcolor_desc),
};
#define TNODE_NFIELDS (sizeof tnode_fields / sizeof tnode_fields[0])
static unsigned tnode_by_name[TNODE_NFIELDS]; /* filled by tnode_setup() */
static const ProtobufCIntRange tnode_ranges[] = {{1, 0}, {0, TNODE_NFIELDS}};

static void tnode_init(ProtobufCMessage *m) {
  static const TNode init = {PROTOBUF_C_MESSAGE_INIT(&tnode_desc), .str = tnode_str_default};
  *(TNode *)m = init;
}

const ProtobufCMessageDescriptor tnode_desc = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                               "t.Node",
                                               "Node",
                                               "TNode",
                                               "t",
                                               sizeof(TNode),
                                               TNODE_NFIELDS,
                                               tnode_fields,
                                               tnode_by_name,
                                               1,
                                               tnode_ranges,
                                               tnode_init,
                                               NULL,
                                               NULL,
                                               NULL};

static int cmp_field_index(const void *a, const void *b) {
  return strcmp(tnode_fields[*(const unsigned *)a].name, tnode_fields[*(const unsigned *)b].name);
}

static void tnode_setup(void) {
  for (unsigned i = 0; i < TNODE_NFIELDS; i++) tnode_by_name[i] = i;
  qsort(tnode_by_name, TNODE_NFIELDS, sizeof(unsigned), cmp_field_index);
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Parse a C string; the text is copied into an exact-size buffer with no NUL
 * after it, so the sanitizer build catches any read past `len`. */
static int parse_exact(const ProtobufCMessageDescriptor *d, const char *text, size_t len,
                       ProtobufCMessage **out) {
  char *copy = malloc(len ? len : 1);
  if (len) memcpy(copy, text, len);
  int rc = prototxt_parse(d, copy, len, "t.prototxt", out);
  free(copy);
  return rc;
}

static int parse_str(const ProtobufCMessageDescriptor *d, const char *text,
                     ProtobufCMessage **out) {
  return parse_exact(d, text, strlen(text), out);
}

/* Parsing must fail with exactly this error message. */
static int expect_error(const ProtobufCMessageDescriptor *d, const char *text, const char *want) {
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  int rc = parse_str(d, text, &m);
  if (rc != -1 || m != NULL) {
    fprintf(stderr, "    expected failure for input:\n%s\n", text);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    return 0;
  }
  if (strcmp(moka_error(), want) != 0) {
    fprintf(stderr, "    error was: %s\n    wanted:    %s\n", moka_error(), want);
    return 0;
  }
  return 1;
}

/* Parsing must fail with an error containing `part`. */
static int expect_error_part(const ProtobufCMessageDescriptor *d, const char *text,
                             const char *part) {
  ProtobufCMessage *m = NULL;
  int rc = parse_str(d, text, &m);
  if (rc != -1 || m != NULL) {
    fprintf(stderr, "    expected failure for input:\n%s\n", text);
    if (m) protobuf_c_message_free_unpacked(m, NULL);
    return 0;
  }
  if (!strstr(moka_error(), part)) {
    fprintf(stderr, "    error was: %s\n    wanted a part: %s\n", moka_error(), part);
    return 0;
  }
  return 1;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  size_t n = protobuf_c_message_pack(m, buf);
  if (n != *len) {
    free(buf);
    return NULL;
  }
  return buf;
}

/* format(m) parses back to a message with identical binary encoding, and
 * formatting that gives identical text. Returns 1 when so. */
static int round_trips(const ProtobufCMessage *m, const char *what) {
  char *text = prototxt_format(m);
  if (!text) {
    fprintf(stderr, "    %s: format failed: %s\n", what, moka_error());
    return 0;
  }
  ProtobufCMessage *m2 = NULL;
  if (parse_str(m->descriptor, text, &m2)) {
    fprintf(stderr, "    %s: formatted text does not parse: %s\n", what, moka_error());
    free(text);
    return 0;
  }
  int ok = 1;
  size_t l1, l2;
  uint8_t *b1 = pack(m, &l1), *b2 = pack(m2, &l2);
  if (!b1 || !b2 || l1 != l2 || memcmp(b1, b2, l1) != 0) {
    fprintf(stderr, "    %s: binary differs after a round trip (%zu vs %zu bytes)\n", what, l1, l2);
    ok = 0;
  }
  char *text2 = prototxt_format(m2);
  if (!text2 || strcmp(text, text2) != 0) {
    fprintf(stderr, "    %s: text differs after a round trip\n", what);
    ok = 0;
  }
  free(b1);
  free(b2);
  free(text);
  free(text2);
  protobuf_c_message_free_unpacked(m2, NULL);
  return ok;
}

static const ProtobufCMessageDescriptor *desc_for(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  return strcmp(base, "solver.prototxt") == 0 ? &caffe__solver_parameter__descriptor
                                              : &caffe__net_parameter__descriptor;
}

/* All *.prototxt files under dir, recursively, appended to paths[]. */
static void find_prototxt(const char *dir, char paths[][512], int *n, int max) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char p[512];
    if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
    struct stat st;
    if (stat(p, &st) != 0) continue;
    size_t l = strlen(e->d_name);
    if (S_ISDIR(st.st_mode)) {
      find_prototxt(p, paths, n, max);
    } else if (l > 9 && strcmp(e->d_name + l - 9, ".prototxt") == 0 && *n < max) {
      strcpy(paths[(*n)++], p);
    }
  }
  closedir(d);
}

static int count_occurrences(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

static Caffe__LayerParameter *find_layer(Caffe__NetParameter *net, const char *name) {
  for (size_t i = 0; i < net->n_layer; i++)
    if (net->layer[i]->name && strcmp(net->layer[i]->name, name) == 0) return net->layer[i];
  return NULL;
}

/* ---- tests on the shared files ------------------------------------------------------------ */

static void test_all_shared_files_round_trip(void) {
  static char paths[256][512];
  int n = 0;
  find_prototxt(shared_path("golden"), paths, &n, 256);
  find_prototxt(shared_path("models"), paths, &n, 256);
  REQUIRE(n >= 19); /* 16 golden + 3 ResNet deploy files when this was written */
  int solvers = 0, nets = 0;
  for (int i = 0; i < n; i++) {
    const ProtobufCMessageDescriptor *d = desc_for(paths[i]);
    ProtobufCMessage *m = NULL;
    int rc = prototxt_read_file(d, paths[i], &m);
    CHECK_MSG(rc == 0, "%s: %s", paths[i], moka_error());
    if (rc) continue;
    if (d == &caffe__solver_parameter__descriptor)
      solvers++;
    else {
      nets++;
      CHECK_MSG(((Caffe__NetParameter *)m)->n_layer > 0, "%s has no layers", paths[i]);
    }
    CHECK_MSG(round_trips(m, paths[i]), "%s", paths[i]);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  CHECK(solvers >= 4);
  CHECK(nets >= 15);
}

static void test_resnet50_values(void) {
  const char *path = shared_path("models/ResNet-50-deploy.prototxt");
  uint8_t *text;
  size_t len;
  REQUIRE(moka_read_file(path, &text, &len) == 0);
  int layers_in_text = count_occurrences((const char *)text, "\nlayer {");
  free(text);
  CHECK(layers_in_text == 228);

  ProtobufCMessage *m;
  REQUIRE(prototxt_read_file(&caffe__net_parameter__descriptor, path, &m) == 0);
  Caffe__NetParameter *net = (Caffe__NetParameter *)m;
  CHECK(net->name && strcmp(net->name, "ResNet-50") == 0);
  CHECK(net->n_input == 1 && strcmp(net->input[0], "data") == 0);
  REQUIRE(net->n_input_dim == 4);
  CHECK(net->input_dim[0] == 1 && net->input_dim[1] == 3 && net->input_dim[2] == 224 &&
        net->input_dim[3] == 224);
  CHECK((int)net->n_layer == layers_in_text);

  Caffe__LayerParameter *conv1 = net->layer[0];
  CHECK(strcmp(conv1->name, "conv1") == 0 && strcmp(conv1->type, "Convolution") == 0);
  CHECK(conv1->n_bottom == 1 && strcmp(conv1->bottom[0], "data") == 0);
  CHECK(conv1->n_top == 1 && strcmp(conv1->top[0], "conv1") == 0);
  Caffe__ConvolutionParameter *cp = conv1->convolution_param;
  REQUIRE(cp != NULL);
  CHECK(cp->has_num_output && cp->num_output == 64);
  CHECK(cp->n_kernel_size == 1 && cp->kernel_size[0] == 7);
  CHECK(cp->n_stride == 1 && cp->stride[0] == 2);
  CHECK(cp->n_pad == 1 && cp->pad[0] == 3);
  CHECK(!cp->has_group); /* not given: default, and not marked as set */
  CHECK(cp->bias_term);  /* [default = true] from the descriptor's init */
  CHECK(cp->weight_filler == NULL);

  Caffe__LayerParameter *bn = find_layer(net, "bn_conv1");
  REQUIRE(bn != NULL && bn->batch_norm_param != NULL);
  CHECK(bn->batch_norm_param->has_use_global_stats && bn->batch_norm_param->use_global_stats);

  Caffe__LayerParameter *pool1 = find_layer(net, "pool1");
  REQUIRE(pool1 != NULL && pool1->pooling_param != NULL);
  CHECK(pool1->pooling_param->has_pool &&
        pool1->pooling_param->pool == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX);

  Caffe__LayerParameter *fc = find_layer(net, "fc1000");
  REQUIRE(fc != NULL && fc->inner_product_param != NULL);
  CHECK(fc->inner_product_param->num_output == 1000);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_resnet_101_152_layer_counts(void) {
  const char *names[] = {"models/ResNet-101-deploy.prototxt", "models/ResNet-152-deploy.prototxt"};
  const int want[] = {449, 670};
  for (int i = 0; i < 2; i++) {
    ProtobufCMessage *m;
    REQUIRE(prototxt_read_file(&caffe__net_parameter__descriptor, shared_path(names[i]), &m) == 0);
    CHECK_MSG((int)((Caffe__NetParameter *)m)->n_layer == want[i], "%s: %zu layers", names[i],
              ((Caffe__NetParameter *)m)->n_layer);
    protobuf_c_message_free_unpacked(m, NULL);
  }
}

static void test_mini_train_solver_values(void) {
  ProtobufCMessage *m;
  REQUIRE(prototxt_read_file(&caffe__solver_parameter__descriptor,
                             shared_path("golden/mini_train/solver.prototxt"), &m) == 0);
  Caffe__SolverParameter *s = (Caffe__SolverParameter *)m;
  CHECK(s->has_base_lr && s->base_lr == 0.01f);
  CHECK(s->lr_policy && strcmp(s->lr_policy, "multistep") == 0);
  REQUIRE(s->n_stepvalue == 2);
  CHECK(s->stepvalue[0] == 2 && s->stepvalue[1] == 4);
  CHECK(s->momentum == 0.9f && s->weight_decay == 0.0005f && s->gamma == 0.1f);
  CHECK(s->max_iter == 6 && s->display == 1);
  CHECK(s->net && strcmp(s->net, "train.prototxt") == 0);
  CHECK(s->type && strcmp(s->type, "SGD") == 0);
  CHECK(s->has_solver_mode && s->solver_mode == CAFFE__SOLVER_PARAMETER__SOLVER_MODE__CPU);
  CHECK(s->snapshot_prefix && strcmp(s->snapshot_prefix, "snapshots/mini") == 0);
  /* not given: the descriptor's default string, unset */
  CHECK(s->regularization_type && strcmp(s->regularization_type, "L2") == 0);
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- syntax ------------------------------------------------------------------------------- */

static void test_syntax_forms(void) {
  const char *text =
      "# a comment\n"
      "name: 'net' \"work\"  # adjacent literals concatenate\n"
      "input: \"a\\tb\\n\\\"q\\\"\\'\\\\\\101\\x42\"\n"
      "layer { name: \"l1\"; type: \"Convolution\", bottom: \"x\" bottom: \"y\" }\n"
      "layer: { name: \"l2\" convolution_param < num_output: 0x10 kernel_size: [3, 5] pad: [] > }\n"
      "layer < name: \"l3\" include { phase: TEST } include: { phase: 0 } >\n"
      "layer: [ { name: \"l4\" }, { name: \"l5\" } ]\n"
      "input_dim: [1, 3, -0, 010]\n"
      "force_backward: True debug_info: t\n";
  ProtobufCMessage *m;
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, text, &m) == 0);
  Caffe__NetParameter *net = (Caffe__NetParameter *)m;
  CHECK(strcmp(net->name, "network") == 0);
  CHECK(net->n_input == 1 && strcmp(net->input[0], "a\tb\n\"q\"'\\AB") == 0);
  REQUIRE(net->n_layer == 5);
  CHECK(strcmp(net->layer[0]->name, "l1") == 0 && net->layer[0]->n_bottom == 2);
  CHECK(strcmp(net->layer[0]->bottom[1], "y") == 0);
  Caffe__ConvolutionParameter *cp = net->layer[1]->convolution_param;
  REQUIRE(cp != NULL);
  CHECK(cp->num_output == 16);
  CHECK(cp->n_kernel_size == 2 && cp->kernel_size[0] == 3 && cp->kernel_size[1] == 5);
  CHECK(cp->n_pad == 0);
  REQUIRE(net->layer[2]->n_include == 2);
  CHECK(net->layer[2]->include[0]->has_phase &&
        net->layer[2]->include[0]->phase == CAFFE__PHASE__TEST);
  CHECK(net->layer[2]->include[1]->phase == CAFFE__PHASE__TRAIN);
  CHECK(strcmp(net->layer[4]->name, "l5") == 0);
  REQUIRE(net->n_input_dim == 4);
  CHECK(net->input_dim[0] == 1 && net->input_dim[2] == 0 && net->input_dim[3] == 8);
  CHECK(net->has_force_backward && net->force_backward && net->debug_info);
  CHECK(round_trips(m, "syntax forms"));
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_empty_and_comment_only_input(void) {
  ProtobufCMessage *m = NULL;
  REQUIRE(prototxt_parse(&caffe__net_parameter__descriptor, NULL, 0, "e", &m) == 0);
  CHECK(((Caffe__NetParameter *)m)->n_layer == 0 && ((Caffe__NetParameter *)m)->name == NULL);
  char *t = prototxt_format(m);
  CHECK(t && strcmp(t, "") == 0);
  free(t);
  protobuf_c_message_free_unpacked(m, NULL);
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, "  # only a comment, no newline", &m) == 0);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_all_scalar_types(void) {
  const char *text =
      "i32: -2147483648 i64: -9223372036854775808 u32: 4294967295 u64: 18446744073709551615\n"
      "s32: 2147483647 s64: 0x7fffffffffffffff fx32: 0xFFFFFFFF fx64: 1 sf32: -5 sf64: -6\n"
      "fl: 1e-4 db: .5 b: 1 str: \"hi\" by: \"\\000\\377a\\x7\" e: TWO\n"
      "child { fl: 5. child { db: -inf } }\n"
      "kids { fl: nan } kids < fl: -Infinity > kids: { fl: 1.5f }\n"
      "rf: [0.1, 3, 1e10] rs: 'x' rs: \"\" rby: \"\\001\" ri64: [-1, 0x10] re: ONE re: 2\n";
  ProtobufCMessage *m;
  REQUIRE(parse_str(&tnode_desc, text, &m) == 0);
  TNode *t = (TNode *)m;
  CHECK(t->has_i32 && t->i32 == INT32_MIN);
  CHECK(t->has_i64 && t->i64 == INT64_MIN);
  CHECK(t->has_u32 && t->u32 == UINT32_MAX);
  CHECK(t->has_u64 && t->u64 == UINT64_MAX);
  CHECK(t->s32 == INT32_MAX && t->s64 == INT64_MAX && t->fx32 == UINT32_MAX && t->fx64 == 1);
  CHECK(t->sf32 == -5 && t->sf64 == -6);
  CHECK(t->has_fl && t->fl == 1e-4f);
  CHECK(t->has_db && t->db == 0.5);
  CHECK(t->has_b && t->b == 1);
  CHECK(t->str && strcmp(t->str, "hi") == 0);
  CHECK(t->has_by && t->by.len == 4 && memcmp(t->by.data, "\0\377a\a", 4) == 0);
  CHECK(t->has_e && t->e == 2);
  REQUIRE(t->child && t->child->child);
  CHECK(t->child->fl == 5.0f && isinf(t->child->child->db) && t->child->child->db < 0);
  REQUIRE(t->n_kids == 3);
  CHECK(isnan(t->kids[0]->fl) && isinf(t->kids[1]->fl) && t->kids[1]->fl < 0);
  CHECK(t->kids[2]->fl == 1.5f);
  CHECK(t->n_rf == 3 && t->rf[0] == 0.1f && t->rf[1] == 3.0f && t->rf[2] == 1e10f);
  CHECK(t->n_rs == 2 && strcmp(t->rs[0], "x") == 0 && strcmp(t->rs[1], "") == 0);
  CHECK(t->n_rby == 1 && t->rby[0].len == 1 && t->rby[0].data[0] == 1);
  CHECK(t->n_ri64 == 2 && t->ri64[0] == -1 && t->ri64[1] == 16);
  CHECK(t->n_re == 2 && t->re[0] == 1 && t->re[1] == 2);
  CHECK(round_trips(m, "all scalar types"));
  protobuf_c_message_free_unpacked(m, NULL);

  /* defaults: an unset string keeps the descriptor's default pointer and is
   * not written; an explicitly given one is */
  REQUIRE(parse_str(&tnode_desc, "i32: 1", &m) == 0);
  CHECK(((TNode *)m)->str == tnode_str_default);
  char *s = prototxt_format(m);
  CHECK(s && strcmp(s, "i32: 1\n") == 0);
  free(s);
  protobuf_c_message_free_unpacked(m, NULL);
  REQUIRE(parse_str(&tnode_desc, "str: \"dflt\"", &m) == 0);
  s = prototxt_format(m);
  CHECK(s && strcmp(s, "str: \"dflt\"\n") == 0);
  free(s);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_bool_forms(void) {
  const char *yes[] = {"b: true", "b: True", "b: t", "b: 1"};
  const char *no[] = {"b: false", "b: False", "b: f", "b: 0"};
  for (int i = 0; i < 4; i++) {
    ProtobufCMessage *m;
    REQUIRE(parse_str(&tnode_desc, yes[i], &m) == 0);
    CHECK_MSG(((TNode *)m)->b == 1, "%s", yes[i]);
    protobuf_c_message_free_unpacked(m, NULL);
    REQUIRE(parse_str(&tnode_desc, no[i], &m) == 0);
    CHECK_MSG(((TNode *)m)->has_b && ((TNode *)m)->b == 0, "%s", no[i]);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  CHECK(
      expect_error(&tnode_desc, "b: 2",
                   "t.prototxt:1:4: expected true or false for bool field 'b' in t.Node, got '2'"));
  CHECK(expect_error(
      &tnode_desc, "b: yes",
      "t.prototxt:1:4: expected true or false for bool field 'b' in t.Node, got 'yes'"));
}

/* ---- writer ------------------------------------------------------------------------------- */

static void test_format_caffe_style(void) {
  const char *in =
      "layer { convolution_param { weight_filler { type: \"msra\" } kernel_size: 3 num_output: 8 "
      "}\n"
      "type: \"Convolution\" name: \"c\" }\n"
      "name: \"n\"\n";
  const char *want =
      "name: \"n\"\n"
      "layer {\n"
      "  name: \"c\"\n"
      "  type: \"Convolution\"\n"
      "  convolution_param {\n"
      "    num_output: 8\n"
      "    kernel_size: 3\n"
      "    weight_filler {\n"
      "      type: \"msra\"\n"
      "    }\n"
      "  }\n"
      "}\n";
  ProtobufCMessage *m;
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, in, &m) == 0);
  char *s = prototxt_format(m);
  REQUIRE(s != NULL);
  CHECK_MSG(strcmp(s, want) == 0, "got:\n%s", s);
  free(s);
  protobuf_c_message_free_unpacked(m, NULL);

  /* floats: shortest text that reads back identically; unset defaults
   * (regularization_type "L2", type "SGD") are not written */
  REQUIRE(parse_str(&caffe__solver_parameter__descriptor,
                    "base_lr: 0.001 momentum: 0.9 weight_decay: 1e-4 gamma: 1e-5 power: 0.75 "
                    "delta: 3.4028235e38 lr_policy: \"step\" solver_mode: GPU",
                    &m) == 0);
  s = prototxt_format(m);
  REQUIRE(s != NULL);
  const char *want_solver =
      "base_lr: 0.001\n"
      "lr_policy: \"step\"\n"
      "gamma: 1e-05\n"
      "power: 0.75\n"
      "momentum: 0.9\n"
      "weight_decay: 0.0001\n"
      "solver_mode: GPU\n"
      "delta: 3.4028235e+38\n";
  CHECK_MSG(strcmp(s, want_solver) == 0, "got:\n%s", s);
  free(s);
  CHECK(round_trips(m, "solver floats"));
  protobuf_c_message_free_unpacked(m, NULL);

  /* string escapes */
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, "name: \"a\\\"b\\\\c\\nd\\001\"", &m) == 0);
  s = prototxt_format(m);
  CHECK_MSG(s && strcmp(s, "name: \"a\\\"b\\\\c\\nd\\001\"\n") == 0, "got: %s", s);
  free(s);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_float_round_trip_exhaustive_sample(void) {
  /* floats across the range, each formatted and parsed back bit-exactly */
  uint32_t x = 12345;
  int bad = 0;
  for (int i = 0; i < 20000; i++) {
    x = x * 1664525u + 1013904223u;
    float v;
    memcpy(&v, &x, sizeof v);
    if (isnan(v)) continue;
    Caffe__FillerParameter fp = CAFFE__FILLER_PARAMETER__INIT;
    fp.has_value = 1;
    fp.value = v;
    char *s = prototxt_format(&fp.base);
    ProtobufCMessage *m;
    if (!s || parse_str(&caffe__filler_parameter__descriptor, s, &m) != 0) {
      bad++;
      free(s);
      continue;
    }
    float back = ((Caffe__FillerParameter *)m)->value;
    if (memcmp(&back, &v, sizeof v) != 0) bad++;
    free(s);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  CHECK_MSG(bad == 0, "%d floats did not round-trip", bad);
}

static void test_write_file(void) {
  char dir[] = "/tmp/moka_ptxt_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char path[256];
  snprintf(path, sizeof path, "%s/out.prototxt", dir);
  ProtobufCMessage *m, *m2;
  REQUIRE(prototxt_read_file(&caffe__net_parameter__descriptor,
                             shared_path("golden/mini_resnet/deploy.prototxt"), &m) == 0);
  CHECK(prototxt_write_file(m, path) == 0);
  REQUIRE(prototxt_read_file(&caffe__net_parameter__descriptor, path, &m2) == 0);
  size_t l1, l2;
  uint8_t *b1 = pack(m, &l1), *b2 = pack(m2, &l2);
  CHECK(b1 && b2 && l1 == l2 && memcmp(b1, b2, l1) == 0);
  free(b1);
  free(b2);
  protobuf_c_message_free_unpacked(m, NULL);
  protobuf_c_message_free_unpacked(m2, NULL);
  /* into a directory that does not exist: an error, not a crash */
  char bad[300];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.prototxt", dir);
  Caffe__NetParameter net = CAFFE__NET_PARAMETER__INIT;
  CHECK(prototxt_write_file(&net.base, bad) == -1);
  CHECK(strstr(moka_error(), "no/such/dir") != NULL);
  unlink(path);
  rmdir(dir);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void test_error_unknown_field(void) {
  const char *text =
      "name: \"x\"\n"
      "layer {\n"
      "  name: \"bn\"\n"
      "  batch_norm_param {\n"
      "    use_global_stat: true\n"
      "  }\n"
      "}\n";
  CHECK(expect_error(&caffe__net_parameter__descriptor, text,
                     "t.prototxt:5:5: unknown field 'use_global_stat' in caffe.BatchNormParameter "
                     "(did you mean 'use_global_stats'?)"));
  /* a tab advances the column to the next multiple of 8 (plus one) */
  CHECK(expect_error(&caffe__net_parameter__descriptor, "layer {\n\tnmae: \"a\"\n}\n",
                     "t.prototxt:2:9: unknown field 'nmae' in caffe.LayerParameter "
                     "(did you mean 'name'?)"));
  CHECK(expect_error(&caffe__net_parameter__descriptor, "zzzzzz: 1",
                     "t.prototxt:1:1: unknown field 'zzzzzz' in caffe.NetParameter"));
}

static void test_error_enum(void) {
  CHECK(expect_error(&caffe__net_parameter__descriptor, "layer { pooling_param { pool: MAXX } }",
                     "t.prototxt:1:31: unknown value 'MAXX' for enum field 'pool' in "
                     "caffe.PoolingParameter (valid: MAX, AVE, STOCHASTIC)"));
  CHECK(expect_error(&caffe__net_parameter__descriptor, "layer { phase: 7 }",
                     "t.prototxt:1:16: unknown number 7 for enum field 'phase' in "
                     "caffe.LayerParameter (type caffe.Phase)"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "layer { phase: \"TEST\" }",
                          "expected an enum value name for enum field 'phase'"));
}

static void test_error_strings(void) {
  CHECK(expect_error(&caffe__net_parameter__descriptor, "layer {\n  name: \"conv1\n}\n",
                     "t.prototxt:2:9: unterminated string literal (strings cannot span lines) "
                     "(field 'name' in caffe.LayerParameter)"));
  CHECK(expect_error(&caffe__net_parameter__descriptor, "name: \"abc",
                     "t.prototxt:1:7: unterminated string literal (strings cannot span lines) "
                     "(field 'name' in caffe.NetParameter)"));
  CHECK(expect_error(&caffe__net_parameter__descriptor, "name: \"a\\qb\"",
                     "t.prototxt:1:7: invalid escape '\\q' in string for field 'name' in "
                     "caffe.NetParameter"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name: \"a\\000b\"",
                          "cannot hold a NUL byte"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name: abc",
                          "1:7: expected a quoted string for string field 'name' in "
                          "caffe.NetParameter, got 'abc'"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name: \"\\xzz\"",
                          "without hex digits"));
}

static void test_error_braces(void) {
  CHECK(expect_error(&caffe__net_parameter__descriptor,
                     "layer {\n  name: \"a\"\n  convolution_param {\n    num_output: 3\n  }\n",
                     "t.prototxt:6:1: unexpected end of input: missing '}' to close 'layer' "
                     "(opened at 1:7) in caffe.LayerParameter"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "layer < name: \"a\" }",
                          "1:19: expected a field name or '>' in caffe.LayerParameter, got '}'"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "}",
                          "1:1: expected a field name in caffe.NetParameter, got '}'"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "layer \"a\"",
                          "1:7: expected '{' for message field 'layer' in caffe.NetParameter"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name \"a\"",
                          "1:6: expected ':' for string field 'name' in caffe.NetParameter"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "input_dim: [1, 2",
                          "expected ',' or ']' in the list for int32 field 'input_dim'"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name: [\"a\"]",
                          "field 'name' in caffe.NetParameter is not repeated"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor, "name: \"a\" @",
                          "1:11: unexpected character '@' (in caffe.NetParameter)"));
}

static void test_error_numbers(void) {
  CHECK(expect_error(&caffe__net_parameter__descriptor,
                     "layer { convolution_param { num_output: 99999999999 } }",
                     "t.prototxt:1:41: value 99999999999 is out of range for uint32 field "
                     "'num_output' in caffe.ConvolutionParameter (0 to 4294967295)"));
  CHECK(expect_error_part(&caffe__net_parameter__descriptor,
                          "layer { convolution_param { num_output: -1 } }",
                          "value -1 is out of range for uint32 field 'num_output'"));
  CHECK(expect_error_part(&tnode_desc, "i32: 2147483648",
                          "value 2147483648 is out of range for int32"));
  CHECK(expect_error_part(&tnode_desc, "i32: -2147483649", "out of range for int32"));
  CHECK(expect_error_part(&tnode_desc, "i64: 9223372036854775808", "out of range for int64"));
  CHECK(expect_error_part(&tnode_desc, "u64: 18446744073709551616", "out of range for uint64"));
  CHECK(expect_error_part(&tnode_desc, "u64: 0x10000000000000000", "out of range for uint64"));
  CHECK(expect_error(&caffe__net_parameter__descriptor,
                     "layer { convolution_param { num_output: 1.5 } }",
                     "t.prototxt:1:41: expected an integer for uint32 field 'num_output' in "
                     "caffe.ConvolutionParameter, got '1.5'"));
  CHECK(expect_error_part(&tnode_desc, "i32: 1e3", "expected an integer for int32 field 'i32'"));
  CHECK(expect_error_part(&tnode_desc, "fl: 1e39",
                          "value 1e39 is out of range for float field 'fl'"));
  CHECK(expect_error_part(&tnode_desc, "db: 1e400", "out of range for double field 'db'"));
  CHECK(expect_error_part(&tnode_desc, "fl: 1e", "the exponent has no digits"));
  CHECK(expect_error_part(&tnode_desc, "i32: 12abc", "invalid number '12abc'"));
  CHECK(expect_error_part(&tnode_desc, "i32: 09", "invalid octal number '09'"));
  CHECK(expect_error_part(&tnode_desc, "fl: abc", "expected a number for float field 'fl'"));
  CHECK(expect_error_part(&tnode_desc, "i32: 0x", "'0x' needs digits"));
}

static void test_error_duplicates_and_required(void) {
  CHECK(expect_error(&caffe__net_parameter__descriptor, "name: \"a\"\nname: \"b\"\n",
                     "t.prototxt:2:1: non-repeated field 'name' is specified multiple times in "
                     "caffe.NetParameter"));
  CHECK(expect_error_part(
      &caffe__net_parameter__descriptor, "layer { convolution_param { } convolution_param { } }",
      "1:31: non-repeated field 'convolution_param' is specified multiple times"));
  /* repeated fields may repeat */
  ProtobufCMessage *m;
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, "input: \"a\" input: \"b\"", &m) == 0);
  protobuf_c_message_free_unpacked(m, NULL);
  /* required fields must be present (ClipParameter's min and max are
   * required upstream); the error points at the closing brace */
  CHECK(expect_error(&caffe__net_parameter__descriptor, "layer { clip_param { min: 0 } }",
                     "t.prototxt:1:29: missing required field 'max' in caffe.ClipParameter"));
  REQUIRE(parse_str(&caffe__net_parameter__descriptor, "layer { clip_param { max: 6 min: 0 } }",
                    &m) == 0);
  Caffe__ClipParameter *cp = ((Caffe__NetParameter *)m)->layer[0]->clip_param;
  CHECK(cp && cp->min == 0.0f && cp->max == 6.0f);
  char *s = prototxt_format(m);
  CHECK_MSG(s && strcmp(s, "layer {\n  clip_param {\n    min: 0\n    max: 6\n  }\n}\n") == 0,
            "got: %s", s);
  free(s);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_error_deep_nesting(void) {
  /* 100 nested levels are fine, 101 are not */
  for (int depth = 100; depth <= 101; depth++) {
    size_t cap = (size_t)depth * 10 + 16, n = 0;
    char *s = malloc(cap);
    for (int i = 0; i < depth; i++) n += (size_t)sprintf(s + n, "child { ");
    for (int i = 0; i < depth; i++) n += (size_t)sprintf(s + n, "} ");
    ProtobufCMessage *m = NULL;
    int rc = parse_exact(&tnode_desc, s, n, &m);
    if (depth == 100) {
      CHECK_MSG(rc == 0, "%s", moka_error());
      if (m) {
        CHECK(round_trips(m, "100 levels"));
        protobuf_c_message_free_unpacked(m, NULL);
      }
    } else {
      CHECK(rc == -1 && m == NULL);
      CHECK_MSG(strstr(moka_error(), "t.prototxt:1:807: messages nested deeper than 100 levels") ==
                    moka_error(),
                "%s", moka_error());
    }
    free(s);
  }
  /* hostile: a million opening braces */
  size_t n = 1000000;
  char *s = malloc(n);
  for (size_t i = 0; i < n; i += 5) memcpy(s + i, "kids{", MOKA_MIN((size_t)5, n - i));
  ProtobufCMessage *m = NULL;
  CHECK(parse_exact(&tnode_desc, s, n, &m) == -1 && m == NULL);
  CHECK(strstr(moka_error(), "deeper than 100 levels") != NULL);
  free(s);
}

static void test_error_missing_file(void) {
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  CHECK(prototxt_read_file(&caffe__net_parameter__descriptor, "/nonexistent/dir/x.prototxt", &m) ==
        -1);
  CHECK(m == NULL);
  CHECK(strstr(moka_error(), "/nonexistent/dir/x.prototxt") != NULL);
}

/* ---- robustness --------------------------------------------------------------------------- */

static void test_truncated_inputs_never_crash(void) {
  const char *files[] = {"models/ResNet-50-deploy.prototxt", "golden/mini_train/solver.prototxt",
                         "golden/lmdb/data_raw32_crop28_meanfile.prototxt"};
  for (int fi = 0; fi < 3; fi++) {
    uint8_t *text;
    size_t len;
    REQUIRE(moka_read_file(shared_path(files[fi]), &text, &len) == 0);
    const ProtobufCMessageDescriptor *d = desc_for(files[fi]);
    int ok = 0, failed = 0, bad = 0;
    for (size_t cut = 0; cut <= len; cut += 97) {
      ProtobufCMessage *m = NULL;
      int rc = parse_exact(d, (const char *)text, cut, &m);
      if (rc == 0 && m)
        ok++;
      else if (rc == -1 && !m && strstr(moka_error(), "t.prototxt:"))
        failed++;
      else
        bad++;
      if (m) protobuf_c_message_free_unpacked(m, NULL);
    }
    CHECK_MSG(bad == 0, "%s: %d bad results", files[fi], bad);
    CHECK(ok > 0 && failed > 0); /* some cuts land between fields, most do not */
    free(text);
  }
}

static void test_corrupted_inputs_never_crash(void) {
  uint8_t *text;
  size_t len;
  REQUIRE(moka_read_file(shared_path("golden/mini_train/train.prototxt"), &text, &len) == 0);
  const char alphabet[] = "{}<>[]:;,-\"'\\#\n\t x0.e5_";
  uint32_t x = 7;
  int bad = 0;
  char *copy = malloc(len);
  for (int iter = 0; iter < 400; iter++) {
    memcpy(copy, text, len);
    for (int k = 0; k < 3; k++) {
      x = x * 1664525u + 1013904223u;
      size_t pos = (x >> 8) % len;
      x = x * 1664525u + 1013904223u;
      copy[pos] = (x >> 24) & 1 ? alphabet[(x >> 8) % (sizeof alphabet - 1)] : (char)(x >> 16);
    }
    ProtobufCMessage *m = NULL;
    int rc = parse_exact(&caffe__net_parameter__descriptor, copy, len, &m);
    if (!((rc == 0 && m) || (rc == -1 && !m))) bad++;
    if (m) {
      if (!round_trips(m, "corrupted input")) bad++;
      protobuf_c_message_free_unpacked(m, NULL);
    }
  }
  CHECK(bad == 0);
  free(copy);
  free(text);
}

int main(void) {
  tnode_setup();
  RUN(test_all_shared_files_round_trip);
  RUN(test_resnet50_values);
  RUN(test_resnet_101_152_layer_counts);
  RUN(test_mini_train_solver_values);
  RUN(test_syntax_forms);
  RUN(test_empty_and_comment_only_input);
  RUN(test_all_scalar_types);
  RUN(test_bool_forms);
  RUN(test_format_caffe_style);
  RUN(test_float_round_trip_exhaustive_sample);
  RUN(test_write_file);
  RUN(test_error_unknown_field);
  RUN(test_error_enum);
  RUN(test_error_strings);
  RUN(test_error_braces);
  RUN(test_error_numbers);
  RUN(test_error_duplicates_and_required);
  RUN(test_error_deep_nesting);
  RUN(test_error_missing_file);
  RUN(test_truncated_inputs_never_crash);
  RUN(test_corrupted_inputs_never_crash);
  return test_summary();
}
