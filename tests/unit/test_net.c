/* test_net.c — whole nets against real Caffe's outputs (shared/golden):
 * mini ResNet (TEST, both input sizes, the in-place stem chain), mini
 * AlexNet/GoogLeNet (grouped conv, LRN, Concat, Dropout in TEST), caffemodel
 * round trips, weight copying by name and its errors, net building rules
 * (splits, in-place, include/exclude, legacy input). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "manifest.h"
#include "net.h"
#include "proto_io.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

static Net *load(const char *proto, const char *weights, Phase ph) {
  NetOptions o;
  net_options_default(&o);
  o.phase = ph;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1;
  Net *net = net_create_from_file(shared_path(proto), &o);
  if (!net) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  if (weights && net_copy_from_file(net, shared_path(weights))) {
    fprintf(stderr, "    %s\n", moka_error());
    net_free(net);
    return NULL;
  }
  return net;
}

static int set_input(Net *net, const char *blob, const char *file) {
  Blob *b = net_blob(net, blob);
  size_t n;
  float *v = read_f32(shared_path(file), &n);
  if (!b || !v || n != b->count) {
    free(v);
    return -1;
  }
  memcpy(b->data, v, n * sizeof(float));
  free(v);
  return 0;
}

static int compare_blob(const Net *net, const char *blob, const char *file, double rtol,
                        double abs_floor) {
  Blob *b = net_blob(net, blob);
  size_t n;
  float *want = read_f32(file, &n);
  int ok = b && want && n == b->count;
  if (!ok) fprintf(stderr, "    %s: missing blob or size mismatch\n", blob);
  if (ok) ok = compare_f32(blob, b->data, want, n, rtol, abs_floor);
  free(want);
  return ok;
}

/* Every manifest entry with the given prefix ("" = no '/' in the name). */
static int compare_manifest(const Net *net, const char *manifest, const char *prefix, int *count) {
  ManifestEntry *e;
  int n, ok = 1;
  *count = 0;
  if (manifest_read(shared_path(manifest), &e, &n)) return 0;
  for (int i = 0; i < n; i++) {
    const char *name = e[i].name;
    if (*prefix) {
      if (strncmp(name, prefix, strlen(prefix))) continue;
      name += strlen(prefix);
    } else if (strchr(name, '/') && !net_blob(net, name)) {
      continue;
    }
    if (!net_blob(net, name)) continue; /* inputs named differently, stage entries */
    if (!strcmp(name, "input") || !strcmp(name, "data")) continue;
    double rtol = 1e-4, floor = 0;
    if (!strcmp(name, "prob")) floor = 1e-5;
    ok &= compare_blob(net, name, e[i].file, rtol, floor);
    (*count)++;
  }
  manifest_free(e, n);
  return ok;
}

static void test_mini_resnet_64(void) {
  Net *net = load("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/weights.caffemodel",
                  MOKA_TEST);
  REQUIRE(net);
  REQUIRE(set_input(net, "data", "golden/mini_resnet/input.bin") == 0);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  int count;
  CHECK(compare_manifest(net, "golden/mini_resnet/manifest.txt", "", &count));
  CHECK_MSG(count == 19, "%d blobs compared, 19 expected", count);
  Blob *pool1 = net_blob(net, "pool1");
  CHECK(pool1 && pool1->shape[2] == 16 && pool1->shape[3] == 16);
  net_free(net);
}

static void test_mini_resnet_odd(void) {
  Net *net = load("golden/mini_resnet/deploy_67x61.prototxt",
                  "golden/mini_resnet/weights.caffemodel", MOKA_TEST);
  REQUIRE(net);
  REQUIRE(set_input(net, "data", "golden/mini_resnet/input_67x61.bin") == 0);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  int count;
  CHECK(compare_manifest(net, "golden/mini_resnet/manifest.txt", "odd/", &count));
  CHECK_MSG(count == 19, "%d blobs compared, 19 expected", count);
  Blob *pool1 = net_blob(net, "pool1");
  CHECK(pool1 && pool1->shape[2] == 17 && pool1->shape[3] == 15);
  net_free(net);
}

static void test_mini_resnet_stem_in_place(void) {
  Net *net = load("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/weights.caffemodel",
                  MOKA_TEST);
  REQUIRE(net);
  REQUIRE(set_input(net, "data", "golden/mini_resnet/input.bin") == 0);
  const char *layers[] = {"conv1", "bn_conv1", "scale_conv1", "conv1_relu"};
  for (int i = 0; i < 4; i++) {
    char file[256];
    snprintf(file, sizeof file, "golden/mini_resnet/stem_conv1_after_%s.f32", layers[i]);
    int li = net_layer_index(net, layers[i]);
    REQUIRE(li >= 0);
    float loss;
    REQUIRE(net_forward_to(net, li, &loss) == 0);
    CHECK_MSG(compare_blob(net, "conv1", shared_path(file), 1e-4, 0), "after %s", layers[i]);
  }
  net_free(net);
}

static void test_mini_alexnet(void) {
  Net *net = load("golden/mini_alexnet/deploy.prototxt", "golden/mini_alexnet/weights.caffemodel",
                  MOKA_TEST);
  REQUIRE(net);
  REQUIRE(set_input(net, "data", "golden/mini_alexnet/input.bin") == 0);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  int count;
  CHECK(compare_manifest(net, "golden/mini_alexnet/manifest.txt", "", &count));
  CHECK_MSG(count >= 15, "only %d blobs compared", count);
  /* stage/<blob>@<layer>: the blob right after <layer>, before its in-place ReLU */
  ManifestEntry *e;
  int n;
  REQUIRE(manifest_read(shared_path("golden/mini_alexnet/manifest.txt"), &e, &n) == 0);
  int staged = 0;
  for (int i = 0; i < n; i++) {
    if (strncmp(e[i].name, "stage/", 6)) continue;
    char blob[256];
    snprintf(blob, sizeof blob, "%s", e[i].name + 6);
    char *at = strchr(blob, '@');
    REQUIRE(at);
    *at = 0;
    int li = net_layer_index(net, at + 1);
    REQUIRE(li >= 0);
    REQUIRE(net_forward_to(net, li, &loss) == 0);
    CHECK_MSG(compare_blob(net, blob, e[i].file, 1e-4, 0), "%s", e[i].name);
    staged++;
  }
  CHECK(staged >= 4);
  manifest_free(e, n);
  net_free(net);
}

/* Caffe inserts a Split for every blob read by several layers, and writes
 * those layers into its caffemodels: 58 layers for the mini training net. */
static void test_splits_like_caffe(void) {
  Net *net = load("golden/mini_train/train.prototxt", NULL, MOKA_TRAIN);
  REQUIRE(net);
  ProtobufCMessage *m;
  REQUIRE(proto_read_binary(&caffe__net_parameter__descriptor,
                            shared_path("golden/mini_train/snapshots/mini_iter_6.caffemodel"), &m) == 0);
  Caffe__NetParameter *caffe = (Caffe__NetParameter *)m;
  CHECK_MSG((int)caffe->n_layer == net->n_layers, "caffe %zu layers, moka %d", caffe->n_layer,
            net->n_layers);
  for (size_t i = 0; i < caffe->n_layer && (int)i < net->n_layers; i++) {
    CHECK_MSG(!strcmp(caffe->layer[i]->name, net->layers[i]->name), "layer %zu: caffe '%s' moka '%s'",
              i, caffe->layer[i]->name, net->layers[i]->name);
    CHECK(!strcmp(caffe->layer[i]->type, net->layers[i]->type->name));
    CHECK((int)caffe->layer[i]->n_blobs == net->layers[i]->n_params);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  net_free(net);
}

/* A caffemodel written by moka reloads to identical parameters, and has the
 * layout Caffe writes (compare with Caffe's own weights.caffemodel). */
static void test_caffemodel_round_trip(void) {
  Net *net = load("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/weights.caffemodel",
                  MOKA_TEST);
  REQUIRE(net);
  char path[] = "/tmp/moka_test_rt_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  REQUIRE(net_save_caffemodel(net, path) == 0);
  Net *back = load("golden/mini_resnet/deploy.prototxt", NULL, MOKA_TEST);
  REQUIRE(back);
  REQUIRE(net_copy_from_file(back, path) == 0);
  REQUIRE(back->param_count == net->param_count);
  CHECK(memcmp(back->param_data, net->param_data, net->param_count * sizeof(float)) == 0);
  /* Caffe's file and moka's describe the same layers and blobs. */
  ProtobufCMessage *a, *b;
  REQUIRE(proto_read_binary(&caffe__net_parameter__descriptor, path, &a) == 0);
  REQUIRE(proto_read_binary(&caffe__net_parameter__descriptor,
                            shared_path("golden/mini_resnet/weights.caffemodel"), &b) == 0);
  Caffe__NetParameter *ma = (Caffe__NetParameter *)a, *cb = (Caffe__NetParameter *)b;
  CHECK(ma->n_layer == cb->n_layer);
  for (size_t i = 0; i < ma->n_layer && i < cb->n_layer; i++) {
    CHECK(!strcmp(ma->layer[i]->name, cb->layer[i]->name));
    CHECK(ma->layer[i]->n_blobs == cb->layer[i]->n_blobs);
    CHECK(ma->layer[i]->n_param == cb->layer[i]->n_param);
  }
  size_t la = protobuf_c_message_get_packed_size(a), lb = protobuf_c_message_get_packed_size(b);
  if (la == lb) {
    uint8_t *pa = malloc(la), *pb = malloc(lb);
    protobuf_c_message_pack(a, pa);
    protobuf_c_message_pack(b, pb);
    CHECK_MSG(memcmp(pa, pb, la) == 0, "same size, different bytes from Caffe's caffemodel");
    free(pa);
    free(pb);
  } else {
    CHECK_MSG(la == lb, "moka wrote %zu bytes, Caffe %zu", la, lb);
  }
  protobuf_c_message_free_unpacked(a, NULL);
  protobuf_c_message_free_unpacked(b, NULL);
  unlink(path);
  net_free(back);
  net_free(net);
}

static Net *net_from_text(const char *text, Phase ph) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "test.prototxt", &m))
    return NULL;
  NetOptions o;
  net_options_default(&o);
  o.phase = ph;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 3;
  Net *net = net_create((Caffe__NetParameter *)m, &o, "test.prototxt");
  protobuf_c_message_free_unpacked(m, NULL);
  return net;
}

static void test_shape_mismatch_names_layer(void) {
  /* fc with 7 outputs instead of 10: copying must fail and say to rename. */
  Net *net = net_from_text(
      "input: 'data' input_shape { dim: 2 dim: 64 dim: 1 dim: 1 }\n"
      "layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc' inner_product_param { num_output: 7 } }",
      MOKA_TEST);
  REQUIRE(net);
  CHECK(net_copy_from_file(net, shared_path("golden/mini_resnet/weights.caffemodel")) != 0);
  CHECK_MSG(strstr(moka_error(), "'fc'") && strstr(moka_error(), "rename the layer") &&
                strstr(moka_error(), "10 64") && strstr(moka_error(), "7 64"),
            "%s", moka_error());
  net_free(net);
}

static void test_include_exclude_and_stages(void) {
  const char *text =
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 2 } } }\n"
      "layer { name: 'tr' type: 'ReLU' bottom: 'x' top: 'a' include { phase: TRAIN } }\n"
      "layer { name: 'te' type: 'ReLU' bottom: 'x' top: 'b' include { phase: TEST } }\n"
      "layer { name: 'ex' type: 'ReLU' bottom: 'x' top: 'c' exclude { phase: TEST } }\n";
  Net *tr = net_from_text(text, MOKA_TRAIN), *te = net_from_text(text, MOKA_TEST);
  REQUIRE(tr && te);
  CHECK(net_layer(tr, "tr") && !net_layer(tr, "te") && net_layer(tr, "ex"));
  CHECK(!net_layer(te, "tr") && net_layer(te, "te") && !net_layer(te, "ex"));
  /* x is read by two layers in TRAIN: a Split is inserted with Caffe's names */
  CHECK(net_layer(tr, "x_in_0_split") != NULL);
  CHECK(net_blob(tr, "x_in_0_split_1") != NULL);
  net_free(tr);
  net_free(te);
}

static void test_bad_nets(void) {
  CHECK(net_from_text("layer { name: 'a' type: 'NoSuchLayer' top: 'x' }", MOKA_TEST) == NULL);
  CHECK_MSG(strstr(moka_error(), "unknown layer type 'NoSuchLayer'") &&
                strstr(moka_error(), "Convolution"),
            "%s", moka_error());
  CHECK(net_from_text("layer { name: 'r' type: 'ReLU' bottom: 'nope' top: 'y' }", MOKA_TEST) == NULL);
  CHECK_MSG(strstr(moka_error(), "unknown bottom blob 'nope'"), "%s", moka_error());
  CHECK(net_from_text("layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 } } }\n"
                      "layer { name: 'in' type: 'ReLU' bottom: 'x' top: 'y' }",
                      MOKA_TEST) == NULL);
  CHECK_MSG(strstr(moka_error(), "two layers are named 'in'"), "%s", moka_error());
  /* a truncated caffemodel */
  uint8_t *data;
  size_t len;
  REQUIRE(moka_read_file(shared_path("golden/mini_resnet/weights.caffemodel"), &data, &len) == 0);
  char path[] = "/tmp/moka_test_trunc_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  CHECK(write(fd, data, len / 2) == (ssize_t)(len / 2));
  close(fd);
  free(data);
  Net *net = load("golden/mini_resnet/deploy.prototxt", NULL, MOKA_TEST);
  REQUIRE(net);
  CHECK(net_copy_from_file(net, path) != 0);
  CHECK_MSG(strstr(moka_error(), "truncated or corrupt"), "%s", moka_error());
  net_free(net);
  unlink(path);
}

/* The released ResNet deploy files build, with Caffe's shapes (pool1 rounds
 * up to 56x56), and the legacy input header becomes an Input layer. */
static void test_resnet_topologies(void) {
  const char *files[] = {"models/ResNet-50-deploy.prototxt", "models/ResNet-101-deploy.prototxt",
                         "models/ResNet-152-deploy.prototxt"};
  const size_t want_params[] = {25557032 + 64 + 53120 + 53, 0, 0};
  /* torchvision's 25,557,032 (its BN weight+bias = our Scale) + the conv1 bias + BN mean
   * and variance (53,120 values: as many as Scale's gamma+beta) + 53 scale factors */
  for (int i = 0; i < 3; i++) {
    Net *net = load(files[i], NULL, MOKA_TEST);
    REQUIRE(net);
    CHECK(!strcmp(net->layers[0]->name, "input") && !strcmp(net->layers[0]->type->name, "Input"));
    Blob *p1 = net_blob(net, "pool1"), *p5 = net_blob(net, "pool5"), *prob = net_blob(net, "prob");
    CHECK(p1 && p1->shape[2] == 56 && p1->shape[3] == 56);
    CHECK(p5 && p5->shape[1] == 2048 && p5->shape[2] == 1);
    CHECK(prob && prob->shape[1] == 1000);
    if (want_params[i])
      CHECK_MSG(net->param_count == want_params[i], "%zu parameters", net->param_count);
    net_free(net);
  }
}

/* lr_mult 0 skips the parameter gradient (Caffe's param_propagate_down) but
 * the gradient still flows through the frozen layers to conv0 below them,
 * with the same values as when nothing is frozen. */
static void test_lr_mult_zero_skips_param_grad(void) {
  char a[4096], b[4096];
  snprintf(a, sizeof a,
           "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 dim: 9 dim: 7 } } }\n"
           "layer { name: 'conv0' type: 'Convolution' bottom: 'x' top: 'x0' param { lr_mult: 2 }\n"
           "  convolution_param { num_output: 3 kernel_size: 1 bias_term: false weight_filler { type: 'xavier' } } }\n"
           "layer { name: 'conv' type: 'Convolution' bottom: 'x0' top: 'c' param { lr_mult: %s } param { lr_mult: %s }\n"
           "  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: 'xavier' } bias_filler { type: 'constant' value: 0.1 } } }\n"
           "layer { name: 'sc' type: 'Scale' bottom: 'c' top: 'c' param { lr_mult: %s } param { lr_mult: %s } scale_param { bias_term: true } }\n"
           "layer { name: 'fc' type: 'InnerProduct' bottom: 'c' top: 'y' param { lr_mult: %s } inner_product_param { num_output: 3 bias_term: false weight_filler { type: 'xavier' } } }\n"
           "layer { name: 'lbl' type: 'Input' top: 'lab' input_param { shape { dim: 2 } } }\n"
           "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'y' bottom: 'lab' top: 'l' }\n",
           "0", "0", "0", "0", "1");
  snprintf(b, sizeof b, "%s", a);
  /* b: everything learnable */
  char *q;
  while ((q = strstr(b, "lr_mult: 0"))) q[9] = '1';
  Net *frozen = net_from_text(a, MOKA_TRAIN), *free_ = net_from_text(b, MOKA_TRAIN);
  REQUIRE(frozen && free_);
  REQUIRE(frozen->param_count == free_->param_count);
  memcpy(free_->param_data, frozen->param_data, frozen->param_count * sizeof(float));
  for (size_t i = 0; i < net_blob(frozen, "x")->count; i++)
    net_blob(frozen, "x")->data[i] = net_blob(free_, "x")->data[i] = (float)((i * 37) % 11) - 5.0f;
  net_blob(frozen, "lab")->data[0] = net_blob(free_, "lab")->data[0] = 1;
  net_blob(frozen, "lab")->data[1] = net_blob(free_, "lab")->data[1] = 2;
  float l1, l2;
  net_clear_param_diffs(frozen);
  net_clear_param_diffs(free_);
  REQUIRE(net_forward(frozen, &l1) == 0 && net_backward(frozen) == 0);
  REQUIRE(net_forward(free_, &l2) == 0 && net_backward(free_) == 0);
  CHECK(l1 == l2);
  Layer *conv = net_layer(frozen, "conv"), *sc = net_layer(frozen, "sc");
  for (int k = 0; k < 2; k++) {
    for (size_t i = 0; i < conv->params[k]->count; i++) CHECK(conv->params[k]->diff[i] == 0.0f);
    for (size_t i = 0; i < sc->params[k]->count; i++) CHECK(sc->params[k]->diff[i] == 0.0f);
  }
  Blob *fcw = net_layer(frozen, "fc")->params[0], *fcw2 = net_layer(free_, "fc")->params[0];
  double nz = 0;
  for (size_t i = 0; i < fcw->count; i++) {
    CHECK(fcw->diff[i] == fcw2->diff[i]);
    nz += fabs(fcw->diff[i]);
  }
  CHECK(nz > 0);
  /* the frozen layers still pass the gradient down to the learnable conv0 */
  CHECK(frozen->layer_need_backward[net_layer_index(frozen, "conv")]);
  Blob *w0 = net_layer(frozen, "conv0")->params[0], *w0b = net_layer(free_, "conv0")->params[0];
  double nz0 = 0;
  for (size_t i = 0; i < w0->count; i++) {
    CHECK(w0->diff[i] == w0b->diff[i]);
    nz0 += fabs(w0->diff[i]);
  }
  CHECK(nz0 > 0);
  net_free(frozen);
  net_free(free_);
}

int main(void) {
  moka_set_log_level(1);
  RUN(test_mini_resnet_64);
  RUN(test_mini_resnet_odd);
  RUN(test_mini_resnet_stem_in_place);
  RUN(test_mini_alexnet);
  RUN(test_splits_like_caffe);
  RUN(test_caffemodel_round_trip);
  RUN(test_shape_mismatch_names_layer);
  RUN(test_include_exclude_and_stages);
  RUN(test_bad_nets);
  RUN(test_resnet_topologies);
  RUN(test_lr_mult_zero_skips_param_grad);
  return test_summary();
}
