/* net_upgrade.c — legacy net definitions brought to the current form, as
 * Caffe's upgrade_proto.cpp does on load:
 *   - V1 `layers` (enum types, blobs_lr, weight_decay) -> `layer`;
 *   - the deprecated `input` / `input_dim` / `input_shape` header -> an
 *     Input layer named "input" in front of the others.
 * V0 definitions (2014 and older, `layer { layer { ... } }`) are refused
 * with a message: they predate every caffemodel moka targets.
 */
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "util.h"

static const struct {
  const char *v1, *v2;
} kV1Types[] = {
    {"ABSVAL", "AbsVal"},
    {"ACCURACY", "Accuracy"},
    {"ARGMAX", "ArgMax"},
    {"BNLL", "BNLL"},
    {"CONCAT", "Concat"},
    {"CONTRASTIVE_LOSS", "ContrastiveLoss"},
    {"CONVOLUTION", "Convolution"},
    {"DECONVOLUTION", "Deconvolution"},
    {"DATA", "Data"},
    {"DROPOUT", "Dropout"},
    {"DUMMY_DATA", "DummyData"},
    {"EUCLIDEAN_LOSS", "EuclideanLoss"},
    {"ELTWISE", "Eltwise"},
    {"EXP", "Exp"},
    {"FLATTEN", "Flatten"},
    {"HDF5_DATA", "HDF5Data"},
    {"HDF5_OUTPUT", "HDF5Output"},
    {"HINGE_LOSS", "HingeLoss"},
    {"IM2COL", "Im2col"},
    {"IMAGE_DATA", "ImageData"},
    {"INFOGAIN_LOSS", "InfogainLoss"},
    {"INNER_PRODUCT", "InnerProduct"},
    {"LRN", "LRN"},
    {"MEMORY_DATA", "MemoryData"},
    {"MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"},
    {"MVN", "MVN"},
    {"POOLING", "Pooling"},
    {"POWER", "Power"},
    {"RELU", "ReLU"},
    {"SIGMOID", "Sigmoid"},
    {"SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"},
    {"SILENCE", "Silence"},
    {"SOFTMAX", "Softmax"},
    {"SOFTMAX_LOSS", "SoftmaxWithLoss"},
    {"SPLIT", "Split"},
    {"SLICE", "Slice"},
    {"TANH", "TanH"},
    {"WINDOW_DATA", "WindowData"},
    {"THRESHOLD", "Threshold"},
};

/* Move a message-typed field with the same name from src (of type sdesc)
 * into dst (of type ddesc) for every *_param field both have. */
static void move_params(const ProtobufCMessageDescriptor *sdesc, void *src,
                        const ProtobufCMessageDescriptor *ddesc, void *dst) {
  for (unsigned i = 0; i < sdesc->n_fields; i++) {
    const ProtobufCFieldDescriptor *sf = &sdesc->fields[i];
    if (sf->type != PROTOBUF_C_TYPE_MESSAGE || sf->label == PROTOBUF_C_LABEL_REPEATED) continue;
    const ProtobufCFieldDescriptor *df =
        protobuf_c_message_descriptor_get_field_by_name(ddesc, sf->name);
    if (!df || df->type != PROTOBUF_C_TYPE_MESSAGE || df->descriptor != sf->descriptor ||
        df->label == PROTOBUF_C_LABEL_REPEATED)
      continue;
    void **sp = (void **)((char *)src + sf->offset);
    void **dp = (void **)((char *)dst + df->offset);
    if (*sp && !*dp) {
      *dp = *sp;
      *sp = NULL;
    }
  }
}

#define MOVE_REPEATED(dst, src, field)   \
  do {                                   \
    (dst)->n_##field = (src)->n_##field; \
    (dst)->field = (src)->field;         \
    (src)->n_##field = 0;                \
    (src)->field = NULL;                 \
  } while (0)

static int upgrade_v1_layer(Caffe__V1LayerParameter *v1, Caffe__LayerParameter **out,
                            const char *source) {
  const char *name = v1->name ? v1->name : "";
  if (v1->layer)
    return moka_errorf("%s: layer '%s' uses the V0 definition format (pre-2014); upgrade it "
                       "with Caffe's upgrade_net_proto_text first",
                       source, name);
  const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
      &caffe__v1_layer_parameter__layer_type__descriptor, v1->type);
  const char *tname = NULL;
  for (size_t i = 0; ev && i < MOKA_ARRAY_LEN(kV1Types); i++)
    if (strcmp(kV1Types[i].v1, ev->name) == 0) tname = kV1Types[i].v2;
  if (!tname)
    return moka_errorf("%s: V1 layer '%s' has unknown or missing type %d", source, name, v1->type);
  Caffe__LayerParameter *l = moka_malloc(sizeof *l);
  if (!l) return -1;
  caffe__layer_parameter__init(l);
  l->name = v1->name;
  v1->name = NULL;
  l->type = moka_strdup(tname);
  MOVE_REPEATED(l, v1, bottom);
  MOVE_REPEATED(l, v1, top);
  MOVE_REPEATED(l, v1, blobs);
  MOVE_REPEATED(l, v1, include);
  MOVE_REPEATED(l, v1, exclude);
  MOVE_REPEATED(l, v1, loss_weight);
  /* blobs_lr / weight_decay / param names -> ParamSpec */
  size_t np = MOKA_MAX(MOKA_MAX(v1->n_blobs_lr, v1->n_weight_decay), v1->n_param);
  if (np) {
    l->param = moka_calloc(np, sizeof *l->param);
    if (!l->param) {
      caffe__layer_parameter__free_unpacked(l, NULL);
      return -1;
    }
    l->n_param = np;
    for (size_t i = 0; i < np; i++) {
      Caffe__ParamSpec *ps = moka_malloc(sizeof *ps);
      if (!ps) {
        caffe__layer_parameter__free_unpacked(l, NULL);
        return -1;
      }
      caffe__param_spec__init(ps);
      if (i < v1->n_blobs_lr) ps->has_lr_mult = 1, ps->lr_mult = v1->blobs_lr[i];
      if (i < v1->n_weight_decay) ps->has_decay_mult = 1, ps->decay_mult = v1->weight_decay[i];
      if (i < v1->n_param) ps->name = moka_strdup(v1->param[i]);
      l->param[i] = ps;
    }
  }
  move_params(&caffe__v1_layer_parameter__descriptor, v1, &caffe__layer_parameter__descriptor, l);
  *out = l;
  return 0;
}

static Caffe__LayerParameter *make_input_layer(Caffe__NetParameter *p, const char *source) {
  size_t n = p->n_input;
  if (p->n_input_shape && p->n_input_dim) {
    moka_errorf("%s: both input_shape and input_dim are given; use one", source);
    return NULL;
  }
  if (p->n_input_shape && p->n_input_shape != n) {
    moka_errorf("%s: %zu inputs but %zu input_shape entries", source, n, p->n_input_shape);
    return NULL;
  }
  if (p->n_input_dim && p->n_input_dim != 4 * n) {
    moka_errorf("%s: %zu inputs need %zu input_dim values (4 each), found %zu", source, n, 4 * n,
                p->n_input_dim);
    return NULL;
  }
  if (!p->n_input_shape && !p->n_input_dim) {
    moka_errorf("%s: input '%s' is declared without input_shape or input_dim", source,
                p->input[0]);
    return NULL;
  }
  Caffe__LayerParameter *l = moka_malloc(sizeof *l);
  if (!l) return NULL;
  caffe__layer_parameter__init(l);
  l->name = moka_strdup("input");
  l->type = moka_strdup("Input");
  Caffe__InputParameter *ip = moka_malloc(sizeof *ip);
  l->top = moka_calloc(n, sizeof *l->top);
  if (!ip || !l->top) {
    free(ip);
    caffe__layer_parameter__free_unpacked(l, NULL);
    return NULL;
  }
  caffe__input_parameter__init(ip);
  l->input_param = ip;
  l->n_top = n;
  for (size_t i = 0; i < n; i++) {
    l->top[i] = p->input[i];
    p->input[i] = NULL;
  }
  ip->shape = moka_calloc(n, sizeof *ip->shape);
  if (!ip->shape) {
    caffe__layer_parameter__free_unpacked(l, NULL);
    return NULL;
  }
  ip->n_shape = n;
  for (size_t i = 0; i < n; i++) {
    if (p->n_input_shape) {
      ip->shape[i] = p->input_shape[i];
      p->input_shape[i] = NULL;
    } else {
      Caffe__BlobShape *s = moka_malloc(sizeof *s);
      if (!s) {
        caffe__layer_parameter__free_unpacked(l, NULL);
        return NULL;
      }
      caffe__blob_shape__init(s);
      s->dim = moka_calloc(4, sizeof *s->dim);
      if (!s->dim) {
        free(s);
        caffe__layer_parameter__free_unpacked(l, NULL);
        return NULL;
      }
      s->n_dim = 4;
      for (int k = 0; k < 4; k++) s->dim[k] = p->input_dim[4 * i + (size_t)k];
      ip->shape[i] = s;
    }
  }
  /* The header fields are now empty; drop them. */
  for (size_t i = 0; i < p->n_input; i++) free(p->input[i]);
  free(p->input);
  p->input = NULL;
  p->n_input = 0;
  for (size_t i = 0; i < p->n_input_shape; i++)
    if (p->input_shape[i]) caffe__blob_shape__free_unpacked(p->input_shape[i], NULL);
  free(p->input_shape);
  p->input_shape = NULL;
  p->n_input_shape = 0;
  free(p->input_dim);
  p->input_dim = NULL;
  p->n_input_dim = 0;
  return l;
}

int net_param_upgrade(Caffe__NetParameter *p, const char *source) {
  if (p->n_layers) {
    if (p->n_layer)
      return moka_errorf("%s: uses both 'layer' and the old 'layers' field; use one", source);
    Caffe__LayerParameter **nl = moka_calloc(p->n_layers, sizeof *nl);
    if (!nl) return -1;
    for (size_t i = 0; i < p->n_layers; i++) {
      if (upgrade_v1_layer(p->layers[i], &nl[i], source)) {
        for (size_t k = 0; k < i; k++) caffe__layer_parameter__free_unpacked(nl[k], NULL);
        free(nl);
        return -1;
      }
    }
    size_t n = p->n_layers;
    for (size_t i = 0; i < n; i++) caffe__v1_layer_parameter__free_unpacked(p->layers[i], NULL);
    free(p->layers);
    p->layers = NULL;
    p->n_layers = 0;
    free(p->layer);
    p->layer = nl;
    p->n_layer = n;
  }
  if (p->n_input) {
    Caffe__LayerParameter *in = make_input_layer(p, source);
    if (!in) return -1;
    Caffe__LayerParameter **nl = moka_realloc(p->layer, (p->n_layer + 1) * sizeof *nl);
    if (!nl) {
      caffe__layer_parameter__free_unpacked(in, NULL);
      return -1;
    }
    memmove(nl + 1, nl, p->n_layer * sizeof *nl);
    nl[0] = in;
    p->layer = nl;
    p->n_layer++;
  }
  return 0;
}
