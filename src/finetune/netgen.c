/* netgen.c — train_val.prototxt, deploy.prototxt and solver.prototxt for a
 * fine-tuning run, written from the deploy net (see netgen.h).
 *
 * The deploy file is parsed (prototxt.h) and upgraded (the legacy `input:`
 * header becomes an Input layer); the layers moka does not change are
 * written back with prototxt_format, the ones it adds or changes as text
 * with comments that say why. Tests parse the results back.
 */
#include "finetune/netgen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "caffe.pb-c.h"
#include "finetune/strbuf.h"
#include "net.h"
#include "prototxt.h"
#include "util.h"

static void copy_name(char *dst, size_t n, const char *src) { snprintf(dst, n, "%s", src ? src : ""); }

/* The layers of the deploy net that finetune rewrites. */
typedef struct Plan {
  Caffe__NetParameter *np;
  int input;       /* index of the Input layer */
  int classifier;  /* index of the last InnerProduct */
  int softmax;     /* index of the final Softmax, or -1 */
  int pool;        /* index of the pooling made global, or -1 */
} Plan;

static const char *ltype(const Caffe__LayerParameter *l) { return l->type ? l->type : ""; }

static int plan_net(const char *path, const FtNetSpec *spec, Plan *pl, FtNetInfo *info) {
  memset(info, 0, sizeof *info);
  pl->input = pl->classifier = pl->softmax = pl->pool = -1;
  ProtobufCMessage *m;
  if (prototxt_read_file(&caffe__net_parameter__descriptor, path, &m)) return -1;
  pl->np = (Caffe__NetParameter *)m;
  Caffe__NetParameter *np = pl->np;
  if (np->n_layers)
    return moka_errorf("%s: V1 `layers` definitions are not supported by moka finetune; upgrade "
                       "the file to `layer` (moka import writes the upgraded form)",
                       path);
  if (net_param_upgrade(np, path)) return -1;
  copy_name(info->name, sizeof info->name, np->name ? np->name : "net");
  for (size_t i = 0; i < np->n_layer; i++) {
    const Caffe__LayerParameter *l = np->layer[i];
    if (!strcmp(ltype(l), "Input")) {
      if (pl->input >= 0 || l->n_top != 1)
        return moka_errorf("%s: moka finetune needs a deploy net with a single image input; layer "
                           "'%s' is a second input (or has several tops)",
                           path, l->name ? l->name : "");
      pl->input = (int)i;
    } else if (!strcmp(ltype(l), "Data") || !strcmp(ltype(l), "ImageData")) {
      return moka_errorf("%s: layer '%s' is a %s layer: give the deploy prototxt (with an "
                         "`input:` header or an Input layer), not a train_val one",
                         path, l->name ? l->name : "", ltype(l));
    } else if (!strcmp(ltype(l), "InnerProduct")) {
      pl->classifier = (int)i;
    }
  }
  if (pl->input < 0)
    return moka_errorf("%s: no input: a deploy prototxt declares its image input with `input:` + "
                       "`input_dim:` or an Input layer",
                       path);
  if (pl->classifier < 0)
    return moka_errorf("%s: no InnerProduct layer: moka finetune replaces the net's last "
                       "InnerProduct (the classifier)",
                       path);
  const Caffe__LayerParameter *in = np->layer[pl->input];
  if (!in->input_param || in->input_param->n_shape < 1 || in->input_param->shape[0]->n_dim != 4)
    return moka_errorf("%s: the input '%s' must have a 4-axis shape (N, C, H, W)", path,
                       in->top[0]);
  const Caffe__BlobShape *sh = in->input_param->shape[0];
  info->channels = (int)sh->dim[1];
  info->height = (int)sh->dim[2];
  info->width = (int)sh->dim[3];
  copy_name(info->input_blob, sizeof info->input_blob, in->top[0]);
  if (spec->input_size > 0) {
    info->crop = spec->input_size;
  } else {
    if (info->height != info->width)
      return moka_errorf("%s: the input is %dx%d, not square: Data layers crop squares; give "
                         "--input_size",
                         path, info->height, info->width);
    info->crop = info->height;
  }
  if (info->crop < 1) return moka_errorf("%s: input size %d", path, info->crop);

  const Caffe__LayerParameter *cls = np->layer[pl->classifier];
  if (cls->n_bottom != 1 || cls->n_top != 1 || !cls->inner_product_param)
    return moka_errorf("%s: the classifier '%s' must have one bottom, one top and "
                       "inner_product_param",
                       path, cls->name ? cls->name : "");
  copy_name(info->classifier_old, sizeof info->classifier_old, cls->name);
  info->old_outputs = (int)cls->inner_product_param->num_output;
  /* after the classifier: at most a Softmax on its output */
  for (size_t i = (size_t)pl->classifier + 1; i < np->n_layer; i++) {
    const Caffe__LayerParameter *l = np->layer[i];
    if (!strcmp(ltype(l), "Softmax") && pl->softmax < 0 && l->n_bottom == 1 &&
        !strcmp(l->bottom[0], cls->top[0]) && l->n_top == 1) {
      pl->softmax = (int)i;
      copy_name(info->prob, sizeof info->prob, l->top[0]);
      continue;
    }
    return moka_errorf("%s: layer '%s' (%s) comes after the classifier '%s'; moka finetune "
                       "expects the classifier to be followed by a Softmax only",
                       path, l->name ? l->name : "", ltype(l), cls->name);
  }
  if (pl->softmax < 0) copy_name(info->prob, sizeof info->prob, "prob");

  /* the new classifier's name */
  if (spec->classifier_name && *spec->classifier_name) {
    copy_name(info->classifier_new, sizeof info->classifier_new, spec->classifier_name);
  } else {
    const char *nm = cls->name ? cls->name : "fc";
    char digits[32];
    snprintf(digits, sizeof digits, "%d", info->old_outputs);
    size_t ln = strlen(nm), ld = strlen(digits);
    if (ln > ld && !strcmp(nm + ln - ld, digits))
      snprintf(info->classifier_new, sizeof info->classifier_new, "%.*s%d", (int)(ln - ld), nm,
               spec->n_classes);
    else
      snprintf(info->classifier_new, sizeof info->classifier_new, "%s_ft", nm);
    if (!strcmp(info->classifier_new, nm))
      snprintf(info->classifier_new, sizeof info->classifier_new, "%s_ft", nm);
  }
  for (size_t i = 0; i < np->n_layer; i++)
    if ((int)i != pl->classifier && np->layer[i]->name &&
        !strcmp(np->layer[i]->name, info->classifier_new))
      return moka_errorf("%s: the new classifier name '%s' is already a layer of the net (give "
                         "another with --classifier_name)",
                         path, info->classifier_new);
  if (!strcmp(info->classifier_new, info->classifier_old))
    return moka_errorf("--classifier_name=%s is the pretrained classifier's own name: it must "
                       "differ, or the old weights (%d outputs) would be copied into it",
                       info->classifier_new, info->old_outputs);
  copy_name(info->logits, sizeof info->logits, info->classifier_new);

  /* a new input size: the last pooling before the classifier becomes global */
  if (spec->input_size > 0 && (spec->input_size != info->height || spec->input_size != info->width)) {
    for (int i = pl->classifier - 1; i >= 0; i--)
      if (!strcmp(ltype(np->layer[i]), "Pooling")) {
        pl->pool = i;
        break;
      }
    if (pl->pool >= 0) {
      Caffe__LayerParameter *l = np->layer[pl->pool];
      if (!l->pooling_param) {
        l->pooling_param = moka_malloc(sizeof *l->pooling_param);
        if (!l->pooling_param) return -1;
        caffe__pooling_parameter__init(l->pooling_param);
      }
      Caffe__PoolingParameter *pp = l->pooling_param;
      pp->has_global_pooling = 1;
      pp->global_pooling = 1;
      pp->has_kernel_size = pp->has_kernel_h = pp->has_kernel_w = 0;
      pp->has_stride = pp->has_stride_h = pp->has_stride_w = 0;
      pp->has_pad = pp->has_pad_h = pp->has_pad_w = 0;
      copy_name(info->pool_made_global, sizeof info->pool_made_global, l->name);
    }
  }
  for (size_t i = 0; i < np->n_layer; i++) info->n_bn += !strcmp(ltype(np->layer[i]), "BatchNorm");
  return 0;
}

/* `layer { ... }` of a parsed layer, as prototxt_format writes it. */
static void emit_layer(StrBuf *b, const Caffe__LayerParameter *l) {
  char *t = prototxt_format(&l->base);
  if (!t) {
    b->failed = true;
    return;
  }
  sb_puts(b, "layer {\n");
  sb_indent(b, t, "  ");
  sb_puts(b, "}\n");
  free(t);
}

static void emit_transform(StrBuf *b, const FtNetSpec *s, const FtNetInfo *info, bool train) {
  sb_puts(b, "  transform_param {\n");
  if (train)
    sb_printf(b, "    mirror: %s  # random horizontal flips of the training images%s\n",
              s->mirror ? "true" : "false", s->mirror ? " (augmentation)" : ": off (--mirror=false)");
  sb_printf(b, "    crop_size: %d  # %s %dx%d crop of each %dx%d image: the network's input size\n",
            info->crop, train ? "a random" : "the centre", info->crop, info->crop, s->resize,
            s->resize);
  if (s->mean_file) {
    sb_printf(b, "    mean_file: \"%s\"  # subtracted from every pixel (%s)\n", s->mean_file,
              s->mean_why ? s->mean_why : "mean image");
  } else {
    for (int i = 0; i < s->n_mean_values; i++)
      sb_printf(b, "    mean_value: %g%s\n", (double)s->mean_values[i],
                i == 0 ? (s->n_mean_values == 3 ? "  # B, G, R means subtracted from every pixel"
                                                : "  # subtracted from every pixel")
                       : "");
    if (s->mean_why) sb_printf(b, "    # (%s)\n", s->mean_why);
  }
  sb_puts(b, "  }\n");
}

static void emit_classifier(StrBuf *b, const Plan *pl, const FtNetSpec *s, const FtNetInfo *info,
                            bool train) {
  const Caffe__LayerParameter *cls = pl->np->layer[pl->classifier];
  const Caffe__InnerProductParameter *ip = cls->inner_product_param;
  const bool bias = !ip->has_bias_term || ip->bias_term;
  sb_printf(b,
            "\n# ---- the classifier, renamed: %s (%d outputs) -> %s (%d classes) ----\n"
            "# Caffe copies pretrained weights by layer name, so the new name makes it start\n"
            "# from the fillers below instead of the old %d-class weights.\n",
            info->classifier_old, info->old_outputs, info->classifier_new, s->n_classes,
            info->old_outputs);
  if (train && !s->from_scratch && s->cls_lr_mult > 1)
    sb_printf(b,
              "# Its learning rate is %gx (weights) and %gx (bias) the base rate: it starts from\n"
              "# scratch, while the pretrained layers only need small adjustments.\n",
              (double)s->cls_lr_mult, (double)s->cls_bias_lr_mult);
  else if (train)
    sb_printf(b, "# Its learning rate is %gx (weights) and %gx (bias) the base rate "
                 "(--classifier_lr_mult).\n",
              (double)s->cls_lr_mult, (double)s->cls_bias_lr_mult);
  sb_printf(b, "layer {\n  name: \"%s\"\n  type: \"InnerProduct\"\n  bottom: \"%s\"\n  top: \"%s\"\n",
            info->classifier_new, cls->bottom[0], info->logits);
  if (train) {
    sb_printf(b, "  param { lr_mult: %g decay_mult: 1 }  # weights\n", (double)s->cls_lr_mult);
    if (bias)
      sb_printf(b, "  param { lr_mult: %g decay_mult: 0 }  # bias: no weight decay\n",
                (double)s->cls_bias_lr_mult);
  }
  sb_printf(b, "  inner_product_param {\n    num_output: %d  # one output per class (labels.txt)\n",
            s->n_classes);
  if (!bias) sb_puts(b, "    bias_term: false\n");
  if (ip->has_axis) sb_printf(b, "    axis: %d\n", ip->axis);
  if (train) {
    sb_puts(b, "    weight_filler { type: \"gaussian\" std: 0.01 }  # small random weights\n");
    if (bias) sb_puts(b, "    bias_filler { type: \"constant\" value: 0 }\n");
  }
  sb_puts(b, "  }\n}\n");
}

/* Change a BatchNorm layer for the TRAIN/TEST net. */
static int set_bn(Caffe__LayerParameter *l, const FtNetSpec *s) {
  if (!l->batch_norm_param) {
    l->batch_norm_param = moka_malloc(sizeof *l->batch_norm_param);
    if (!l->batch_norm_param) return -1;
    caffe__batch_norm_parameter__init(l->batch_norm_param);
  }
  Caffe__BatchNormParameter *bp = l->batch_norm_param;
  if (s->bn == FT_BN_FROZEN) {
    bp->has_use_global_stats = 1;
    bp->use_global_stats = 1;
  } else {
    bp->has_use_global_stats = 0; /* Caffe's default: batch statistics in TRAIN, stored in TEST */
    bp->use_global_stats = 0;
    if (s->bn_maf > 0) {
      bp->has_moving_average_fraction = 1;
      bp->moving_average_fraction = s->bn_maf;
    }
    if (!bp->has_moving_average_fraction && !bp->has_eps) { /* nothing left to say */
      caffe__batch_norm_parameter__free_unpacked(bp, NULL);
      l->batch_norm_param = NULL;
    }
  }
  return 0;
}

/* MSRA weight filler for a Convolution that has none (training from scratch). */
static int add_msra(Caffe__LayerParameter *l) {
  Caffe__ConvolutionParameter *cp = l->convolution_param;
  if (!cp || cp->weight_filler) return 0;
  cp->weight_filler = moka_malloc(sizeof *cp->weight_filler);
  if (!cp->weight_filler) return -1;
  caffe__filler_parameter__init(cp->weight_filler);
  cp->weight_filler->type = moka_strdup("msra");
  return cp->weight_filler->type ? 0 : -1;
}

/* Is layer i a Scale whose output is one input of an Eltwise sum whose other
 * input does not come from a Scale (a residual branch beside an identity
 * shortcut)? */
static bool residual_branch_end(const Caffe__NetParameter *np, int i) {
  const Caffe__LayerParameter *l = np->layer[i];
  if (l->n_top != 1) return false;
  for (size_t j = (size_t)i + 1; j < np->n_layer; j++) {
    const Caffe__LayerParameter *e = np->layer[j];
    if (strcmp(ltype(e), "Eltwise") || e->n_bottom != 2) continue;
    if (e->eltwise_param && e->eltwise_param->has_operation &&
        e->eltwise_param->operation != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM)
      continue;
    for (int b = 0; b < 2; b++) {
      if (strcmp(e->bottom[b], l->top[0])) continue;
      /* the other bottom's producer: the last layer before j with that top */
      const char *other = e->bottom[1 - b];
      for (int k = (int)j - 1; k >= 0; k--) {
        const Caffe__LayerParameter *q = np->layer[k];
        bool makes = false;
        for (size_t t = 0; t < q->n_top; t++) makes |= !strcmp(q->top[t], other);
        if (makes) return strcmp(ltype(q), "Scale") != 0;
      }
      return true;
    }
  }
  return false;
}

/* Scale's gamma filler: constant 0. */
static int zero_scale(Caffe__LayerParameter *l) {
  if (!l->scale_param) {
    l->scale_param = moka_malloc(sizeof *l->scale_param);
    if (!l->scale_param) return -1;
    caffe__scale_parameter__init(l->scale_param);
  }
  Caffe__ScaleParameter *sp = l->scale_param;
  if (sp->filler) return 0;
  sp->filler = moka_malloc(sizeof *sp->filler);
  if (!sp->filler) return -1;
  caffe__filler_parameter__init(sp->filler);
  sp->filler->type = moka_strdup("constant");
  sp->filler->has_value = 1;
  sp->filler->value = 0;
  return sp->filler->type ? 0 : -1;
}

static void emit_header(StrBuf *b, const char *what, const FtNetSpec *s) {
  sb_printf(b, "# %s — written by `moka finetune`; an ordinary Caffe file.\n", what);
  if (!strcmp(what, "train_val.prototxt"))
    sb_puts(b, "# Edit it and rerun with `moka train --solver=solver.prototxt` (or Caffe).\n");
  sb_puts(b, "# Every change from the original deploy net is commented where it is made.\n");
  if (s->command && *s->command) sb_printf(b, "# command: %s\n", s->command);
}

static char *write_train_val(Plan *pl, const FtNetSpec *s, const FtNetInfo *info) {
  StrBuf b = {0};
  Caffe__NetParameter *np = pl->np;
  emit_header(&b, "train_val.prototxt", s);
  sb_printf(&b, "name: \"%s\"\n", info->name);
  sb_printf(&b,
            "\n# ---- input: two Data layers instead of the deploy net's `%s` input ----\n"
            "# TRAIN reads the training LMDB (%d images, %d per batch), TEST the validation\n"
            "# LMDB (%d images). The images were resized to %dx%d by convert_imageset and\n"
            "# are stored in BGR order, as Caffe expects.\n",
            info->input_blob, s->n_train, s->batch, s->n_val, s->resize, s->resize);
  for (int phase = 0; phase < 2; phase++) {
    const bool train = phase == 0;
    sb_printf(&b, "layer {\n  name: \"%s\"\n  type: \"Data\"\n  top: \"%s\"\n  top: \"label\"\n",
              info->input_blob, info->input_blob);
    sb_printf(&b, "  include { phase: %s }\n", train ? "TRAIN" : "TEST");
    emit_transform(&b, s, info, train);
    sb_printf(&b,
              "  data_param {\n    source: \"%s\"\n    batch_size: %d  # %s\n    backend: LMDB\n  "
              "}\n}\n",
              train ? s->train_lmdb : s->val_lmdb, train ? s->batch : s->val_batch,
              train ? "--batch" : "validation batch");
  }
  if (info->pool_made_global[0])
    sb_printf(&b,
              "\n# The input is %dx%d instead of the deploy's %dx%d (--input_size), so `%s`\n"
              "# pools globally (global_pooling: true) to keep 1x1 features for the classifier.\n",
              info->crop, info->crop, info->height, info->width, info->pool_made_global);
  sb_puts(&b, "\n# ---- the deploy net's layers ----\n");
  bool bn_said = false, scratch_said = false, zero_said = false;
  for (size_t i = 0; i < np->n_layer; i++) {
    Caffe__LayerParameter *l = np->layer[i];
    if ((int)i == pl->input || (int)i == pl->softmax) continue;
    if ((int)i == pl->classifier) {
      emit_classifier(&b, pl, s, info, true);
      continue;
    }
    if (!strcmp(ltype(l), "BatchNorm")) {
      if (set_bn(l, s)) b.failed = true;
      if (!bn_said) {
        bn_said = true;
        if (s->bn == FT_BN_FROZEN)
          sb_printf(&b,
                    "# BatchNorm: use_global_stats: true in every BatchNorm layer, in both phases:\n"
                    "# the pretrained mean/variance are used and not updated (%s).\n"
                    "# To learn them per batch instead, delete use_global_stats (Caffe then uses\n"
                    "# batch statistics in TRAIN) or rerun with --bn=batch.\n",
                    s->bn_why ? s->bn_why : "--bn=frozen");
        else
          sb_printf(&b,
                    "# BatchNorm: no use_global_stats, so Caffe's default applies: statistics of\n"
                    "# each batch in TRAIN (and their running average updated), the stored ones\n"
                    "# in TEST (%s).%s\n",
                    s->bn_why ? s->bn_why : "--bn=batch",
                    s->bn_maf > 0 ? " moving_average_fraction is lowered so that the running\n"
                                    "# average follows a short run (--bn_maf)."
                                  : "");
      }
    }
    if (s->from_scratch && !strcmp(ltype(l), "Scale") && residual_branch_end(np, (int)i)) {
      if (!zero_said)
        sb_puts(&b, "# Training from scratch: the Scale layer that ends each residual branch\n"
                    "# starts at 0 (filler constant 0), so that every block starts as the identity\n"
                    "# and the deep net trains stably (Goyal et al. 2017, \"zero gamma\").\n");
      zero_said = true;
      if (zero_scale(l)) b.failed = true;
    }
    if (s->from_scratch && !strcmp(ltype(l), "Convolution")) {
      if (!scratch_said)
        sb_puts(&b, "# Training from scratch (no --weights): Convolutions without a filler get\n"
                    "# MSRA (He) initialisation; Caffe's default, constant 0, would not train.\n");
      scratch_said = true;
      if (add_msra(l)) b.failed = true;
    }
    emit_layer(&b, l);
  }
  sb_printf(&b,
            "\n# ---- loss and accuracy, instead of the deploy net's Softmax ----\n"
            "# SoftmaxWithLoss = Softmax + multinomial logistic loss, in both phases.\n"
            "layer {\n  name: \"loss\"\n  type: \"SoftmaxWithLoss\"\n  bottom: \"%s\"\n"
            "  bottom: \"label\"\n  top: \"loss\"\n}\n",
            info->logits);
  sb_printf(&b,
            "# Accuracy on the validation images (TEST only): the share whose top class is\n"
            "# the label.\nlayer {\n  name: \"accuracy\"\n  type: \"Accuracy\"\n  bottom: \"%s\"\n"
            "  bottom: \"label\"\n  top: \"accuracy\"\n  include { phase: TEST }\n}\n",
            info->logits);
  if (s->n_classes > 5)
    sb_printf(&b,
              "# Top-5 accuracy: the label is among the 5 highest scores.\nlayer {\n"
              "  name: \"accuracy_top5\"\n  type: \"Accuracy\"\n  bottom: \"%s\"\n  bottom: \"label\"\n"
              "  top: \"accuracy_top5\"\n  include { phase: TEST }\n  accuracy_param { top_k: 5 }\n}\n",
              info->logits);
  return sb_take(&b);
}

static char *write_deploy(Plan *pl, const FtNetSpec *s, const FtNetInfo *info) {
  StrBuf b = {0};
  Caffe__NetParameter *np = pl->np;
  emit_header(&b, "deploy.prototxt", s);
  sb_puts(&b, "# For `moka classify` (and Caffe's classification tools) with the fine-tuned\n"
              "# weights (best.caffemodel) and labels.txt.\n");
  sb_printf(&b, "name: \"%s\"\n", info->name);
  const Caffe__LayerParameter *in = np->layer[pl->input];
  const Caffe__BlobShape *sh = in->input_param->shape[0];
  sb_printf(&b,
            "# one %dx%dx%d image per forward pass (N = %d; raise it to classify in batches)\n"
            "layer {\n  name: \"%s\"\n  type: \"Input\"\n  top: \"%s\"\n"
            "  input_param { shape { dim: %d dim: %d dim: %d dim: %d } }\n}\n",
            info->channels, info->crop, info->crop, (int)sh->dim[0], info->input_blob,
            info->input_blob, (int)sh->dim[0], info->channels, info->crop, info->crop);
  if (info->pool_made_global[0])
    sb_printf(&b, "# `%s` pools globally: the input is %dx%d instead of %dx%d (--input_size).\n",
              info->pool_made_global, info->crop, info->crop, info->height, info->width);
  for (size_t i = 0; i < np->n_layer; i++) {
    Caffe__LayerParameter *l = np->layer[i];
    if ((int)i == pl->input || (int)i == pl->softmax) continue;
    if ((int)i == pl->classifier) {
      emit_classifier(&b, pl, s, info, false);
      continue;
    }
    emit_layer(&b, l);
  }
  sb_printf(&b,
            "# class probabilities, in the order of labels.txt\nlayer {\n  name: \"%s\"\n"
            "  type: \"Softmax\"\n  bottom: \"%s\"\n  top: \"%s\"\n}\n",
            pl->softmax >= 0 && pl->np->layer[pl->softmax]->name ? pl->np->layer[pl->softmax]->name
                                                                 : info->prob,
            info->logits, info->prob);
  return sb_take(&b);
}

int ft_net_write(const char *deploy_path, const FtNetSpec *spec, char **train_val, char **deploy,
                 FtNetInfo *info) {
  *train_val = *deploy = NULL;
  if (spec->n_classes < 2) return moka_errorf("fine-tuning needs at least 2 classes");
  Plan pl = {0};
  int rc = plan_net(deploy_path, spec, &pl, info);
  /* deploy first: write_train_val changes BatchNorm layers in place */
  if (!rc && !(*deploy = write_deploy(&pl, spec, info))) rc = -1;
  if (!rc && !(*train_val = write_train_val(&pl, spec, info))) rc = -1;
  if (pl.np) caffe__net_parameter__free_unpacked(pl.np, NULL);
  if (rc) {
    free(*train_val);
    free(*deploy);
    *train_val = *deploy = NULL;
    return moka_error_prefix("%s", deploy_path);
  }
  return 0;
}

/* ---- solver.prototxt ------------------------------------------------------------------ */

int ft_iters_per_epoch(int n_train, int batch) {
  return batch > 0 ? (n_train + batch - 1) / batch : 0;
}

int ft_stepvalues(const FtSolverSpec *s, int *out) {
  const int ipe = ft_iters_per_epoch(s->n_train, s->batch), max_iter = ipe * s->epochs;
  int n = 0;
  for (int i = 0; i < s->n_steps && n < 16; i++) {
    int e = (int)floor(s->steps[i] * s->epochs + 0.5);
    if (e < 1) e = 1;
    int it = e * ipe;
    if (it >= max_iter || (n && it <= out[n - 1])) continue;
    out[n++] = it;
  }
  return n;
}

char *ft_solver_text(const FtSolverSpec *s) {
  const int ipe = ft_iters_per_epoch(s->n_train, s->batch);
  const int max_iter = ipe * s->epochs;
  const int test_iter = (s->n_val + s->val_batch - 1) / s->val_batch;
  int steps[16];
  const int n_steps = ft_stepvalues(s, steps);
  StrBuf b = {0};
  sb_puts(&b, "# solver.prototxt — written by `moka finetune`; an ordinary Caffe solver file:\n"
              "# `moka train --solver=solver.prototxt --weights=...` (or Caffe) runs it.\n");
  if (s->command && *s->command) sb_printf(&b, "# command: %s\n", s->command);
  sb_printf(&b,
            "# One epoch = one pass over the %d training images = ceil(%d / %d) = %d iterations.\n",
            s->n_train, s->n_train, s->batch, ipe);
  sb_printf(&b, "net: \"%s\"\n", s->net);
  sb_printf(&b,
            "\n# validation: all %d images, ceil(%d / %d) batches, once per epoch\n"
            "test_iter: %d\ntest_interval: %d\n"
            "test_initialization: false  # no test before the first iteration\n",
            s->n_val, s->n_val, s->val_batch, test_iter, ipe);
  sb_printf(&b,
            "\n# SGD with momentum; weight decay (L2) fights overfitting\n"
            "type: \"SGD\"\nbase_lr: %g  # --lr%s\n"
            "momentum: %g\nweight_decay: %g\n",
            s->base_lr,
            s->from_scratch ? " (training from scratch)"
                            : ": small, the pretrained weights are already good",
            s->momentum, s->weight_decay);
  sb_printf(&b, "\n# the learning rate is multiplied by gamma at each stepvalue (iterations):\n");
  sb_printf(&b, "# drops after epochs");
  for (int i = 0; i < n_steps; i++) sb_printf(&b, "%s %d", i ? "," : "", steps[i] / ipe);
  sb_printf(&b, "%s of %d (--lr_steps: fractions of the run", n_steps ? "" : " (none)", s->epochs);
  for (int i = 0; i < s->n_steps; i++) sb_printf(&b, "%s%g", i ? "," : " ", s->steps[i]);
  sb_puts(&b, ";\n# the seed recipe: epochs 8, 25, 60, 85 of 90)\n");
  sb_printf(&b, "lr_policy: \"multistep\"\ngamma: %g\n", s->gamma);
  for (int i = 0; i < n_steps; i++) sb_printf(&b, "stepvalue: %d\n", steps[i]);
  sb_printf(&b, "max_iter: %d  # %d epochs x %d iterations (--epochs)\n", max_iter, s->epochs, ipe);
  int display = ipe / 5;
  if (display < 1) display = 1;
  if (display > 20) display = 20;
  sb_printf(&b, "display: %d  # log the training loss every %d iterations\n", display, display);
  sb_printf(&b,
            "\n# a snapshot (.caffemodel + .solverstate) after every epoch; resume with\n"
            "# `moka train --snapshot=PREFIX_iter_N.solverstate` (moka finetune resumes itself)\n"
            "snapshot: %d\nsnapshot_prefix: \"%s\"\n",
            ipe, s->snapshot_prefix);
  if (s->gpu)
    sb_printf(&b, "solver_mode: GPU\ndevice_id: %d\n", s->device_id);
  else
    sb_puts(&b, "solver_mode: CPU  # --gpu=N trains on a GPU\n");
  sb_printf(&b, "random_seed: %d  # --seed: the same run gives the same result\n", s->seed);
  return sb_take(&b);
}
