/* resnet_nets.h — nets the tests build from text (test_memplan.c, test_net_bf16.c,
 * tests/gpu/test_cuda_fused.c):
 * ResNet-50 as Kaiming's deploy prototxt writes it (data/ResNet-50-deploy.prototxt) at a
 * given batch, and its training variant; a tiny two-block ResNet (test_cuda_fused.c,
 * test_net_bf16.c, test_net_bf16_cpu.c) and tiny_randomise for two nets of it; on the backend
 * in `build_backend`. */
#ifndef MOKA_TESTS_RESNET_NETS_H
#define MOKA_TESTS_RESNET_NETS_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "prototxt.h"
#include "rng.h"
#include "util.h"

/* Nets are built on the reference backend unless a test sets this (the fast
 * CPU backend plans fused chains, src/net_fuse.h, which the plan must respect). */
static Backend build_backend __attribute__((unused)) = MOKA_BACKEND_CPU;

/* A net from prototxt text on backend be, its fillers seeded with `seed` (< 0: not seeded;
 * net_from_text: on build_backend, not seeded); NULL (the error printed) when it does not
 * build. */
static inline Net *net_from_text_on(const char *text, Phase phase, Backend be, long long seed,
                                    const char *what) {
  ProtobufCMessage *m = NULL;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), what, &m)) {
    fprintf(stderr, "    %s: %s\n", what, moka_error());
    return NULL;
  }
  NetOptions o;
  net_options_default(&o);
  o.phase = phase;
  o.backend = be;
  o.quiet = true;
  if (seed >= 0) {
    o.has_seed = true;
    o.seed = (uint32_t)seed;
  }
  Net *net = net_create((Caffe__NetParameter *)m, &o, what);
  if (!net) fprintf(stderr, "    %s: %s\n", what, moka_error());
  protobuf_c_message_free_unpacked(m, NULL);
  return net;
}

static inline Net *net_from_text(const char *text, Phase phase, const char *what) {
  return net_from_text_on(text, phase, build_backend, -1, what);
}

static inline char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
    free(s);
    s = NULL;
  }
  if (s) s[n] = 0;
  fclose(f);
  return s;
}

/* Replace the first `from` in s by `to` (new string; s freed). NULL when absent. */
static inline char *replace1(char *s, const char *from, const char *to) {
  char *p = s ? strstr(s, from) : NULL;
  if (!p) {
    free(s);
    return NULL;
  }
  size_t a = (size_t)(p - s), nf = strlen(from), nt = strlen(to), rest = strlen(p + nf);
  char *r = malloc(a + nt + rest + 1);
  memcpy(r, s, a);
  memcpy(r + a, to, nt);
  memcpy(r + a + nt, p + nf, rest + 1);
  free(s);
  return r;
}

/* ResNet-50 deploy with input batch `batch` (the first input_dim). */
static inline Net *resnet50_deploy(int batch) {
  char *t = read_text("data/ResNet-50-deploy.prototxt");
  char dims[64];
  snprintf(dims, sizeof dims, "input_dim: %d\ninput_dim: 3", batch);
  t = replace1(t, "input_dim: 1\ninput_dim: 3", dims);
  if (!t) return NULL;
  Net *net = net_from_text(t, MOKA_TEST, "ResNet-50-deploy (batch 8)");
  free(t);
  return net;
}

/* A ResNet-50 training net as tests/bench/gen_prototxt.py train makes it:
 * DummyData data (B,3,224,224) and label (B) instead of the input fields,
 * SoftmaxWithLoss instead of the Softmax (the fillers and use_global_stats
 * do not change the memory plan and are left as they are). */
static inline Net *resnet50_train(int batch) {
  char *t = read_text("data/ResNet-50-deploy.prototxt");
  char data[512];
  snprintf(data, sizeof data,
           "layer { name: \"data\" type: \"DummyData\" top: \"data\" top: \"label\"\n"
           "  dummy_data_param { shape { dim: %d dim: 3 dim: 224 dim: 224 } shape { dim: %d }\n"
           "  data_filler { type: \"constant\" value: 0 } data_filler { type: \"constant\" "
           "value: 0 } } }\n",
           batch, batch);
  t = replace1(t, "input: \"data\"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n",
               data);
  t = replace1(t, "\tbottom: \"fc1000\"\n\ttop: \"prob\"\n\tname: \"prob\"\n\ttype: \"Softmax\"",
               "\tbottom: \"fc1000\"\n\tbottom: \"label\"\n\ttop: \"loss\"\n\tname: \"loss\"\n"
               "\ttype: \"SoftmaxWithLoss\"");
  if (!t) return NULL;
  Net *net = net_from_text(t, MOKA_TRAIN, "ResNet-50 train (batch 8)");
  free(t);
  return net;
}

/* Two residual blocks (the second with the Eltwise's bottoms swapped), each
 * BatchNorm -> Scale -> ReLU in place, global average pooling, a classifier. */
static const char *const TINY_RESNET_TEXT =
    "name: 'tiny'\n"
    "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: 5 dim: 11 "
    "dim: 9 } } }\n"
    "layer { name: 'label' type: 'Input' top: 'label' input_param { shape { dim: 3 } } }\n"
    "layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'c1' convolution_param { "
    "num_output: 12 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bn1' type: 'BatchNorm' bottom: 'c1' top: 'c1' }\n"
    "layer { name: 'sc1' type: 'Scale' bottom: 'c1' top: 'c1' scale_param { bias_term: true } }\n"
    "layer { name: 'relu1' type: 'ReLU' bottom: 'c1' top: 'c1' }\n"
    "layer { name: 'conv2a' type: 'Convolution' bottom: 'c1' top: 'c2a' convolution_param { "
    "num_output: 12 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bn2a' type: 'BatchNorm' bottom: 'c2a' top: 'c2a' }\n"
    "layer { name: 'sc2a' type: 'Scale' bottom: 'c2a' top: 'c2a' scale_param { bias_term: true } }\n"
    "layer { name: 'relu2a' type: 'ReLU' bottom: 'c2a' top: 'c2a' }\n"
    "layer { name: 'conv2b' type: 'Convolution' bottom: 'c2a' top: 'c2b' convolution_param { "
    "num_output: 12 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bn2b' type: 'BatchNorm' bottom: 'c2b' top: 'c2b' }\n"
    "layer { name: 'sc2b' type: 'Scale' bottom: 'c2b' top: 'c2b' scale_param { bias_term: true } }\n"
    "layer { name: 'res2' type: 'Eltwise' bottom: 'c1' bottom: 'c2b' top: 'r2' }\n"
    "layer { name: 'relu_r2' type: 'ReLU' bottom: 'r2' top: 'r2' }\n"
    "layer { name: 'conv3a' type: 'Convolution' bottom: 'r2' top: 'c3a' convolution_param { "
    "num_output: 12 kernel_size: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bn3a' type: 'BatchNorm' bottom: 'c3a' top: 'c3a' }\n"
    "layer { name: 'sc3a' type: 'Scale' bottom: 'c3a' top: 'c3a' scale_param { bias_term: true } }\n"
    "layer { name: 'res3' type: 'Eltwise' bottom: 'c3a' bottom: 'r2' top: 'r3' }\n"
    "layer { name: 'relu_r3' type: 'ReLU' bottom: 'r3' top: 'r3' }\n"
    "layer { name: 'pool' type: 'Pooling' bottom: 'r3' top: 'pool' pooling_param { pool: AVE "
    "global_pooling: true } }\n"
    "layer { name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc' inner_product_param { "
    "num_output: 4 weight_filler { type: 'gaussian' std: 0.3 } } }\n"
    "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc' bottom: 'label' top: 'loss' }\n";

/* TINY_RESNET_TEXT (malloc'd), or wide: 8 input channels and 16 in every convolution
 * (multiples of 8, the channel counts bf16 channels-last activations need) instead of 5 and
 * 12. NULL when out of memory. */
static inline char *tiny_resnet_text(bool wide) {
  char *text = moka_strdup(TINY_RESNET_TEXT);
  if (!text || !wide) return text;
  char *p = strstr(text, "dim: 3 dim: 5 dim: 11");
  if (p) p[12] = '8'; /* "dim: 3 dim: 5": the 5 */
  while ((p = strstr(text, "num_output: 12"))) memcpy(p + 12, "16", 2);
  return text;
}

/* Random BatchNorm statistics, Scale gammas and betas in net a, copied to net b (the same
 * net text: one flat parameter layout), and the same random inputs ('data' uniform in
 * [-1, 1]) and labels ('label', 4 classes) in both. */
static inline void tiny_randomise(Net *a, Net *b, Rng *r) {
  for (int i = 0; i < a->n_layers; i++) {
    Layer *l = a->layers[i];
    if (!strcmp(l->type->name, "BatchNorm")) {
      for (size_t c = 0; c < l->params[0]->count; c++) {
        l->params[0]->data[c] = 0.73f * rng_uniform(r, -0.5f, 0.5f);
        l->params[1]->data[c] = 0.73f * rng_uniform(r, 0.5f, 1.5f);
      }
      l->params[2]->data[0] = 0.73f;
    } else if (!strcmp(l->type->name, "Scale")) {
      for (size_t c = 0; c < l->params[0]->count; c++)
        l->params[0]->data[c] = rng_uniform(r, -1.5f, 1.5f);
      for (size_t c = 0; c < l->params[1]->count; c++)
        l->params[1]->data[c] = rng_uniform(r, -0.5f, 0.5f);
    }
  }
  memcpy(b->param_data, a->param_data, a->param_count * sizeof(float));
  Blob *da = net_blob(a, "data"), *la = net_blob(a, "label");
  for (size_t i = 0; i < da->count; i++) da->data[i] = rng_uniform(r, -1.0f, 1.0f);
  for (size_t i = 0; i < la->count; i++) la->data[i] = (float)(rng_u32(r) % 4u);
  memcpy(net_blob(b, "data")->data, da->data, da->count * sizeof(float));
  memcpy(net_blob(b, "label")->data, la->data, la->count * sizeof(float));
}

#endif
