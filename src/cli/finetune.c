/* moka finetune — the whole fine-tuning workflow in one command (the work is
 * in src/finetune/; workflow.h describes the stages):
 *
 *   moka finetune --model=ResNet-50-deploy.prototxt --weights=ResNet-50-model.caffemodel
 *                 DATA [--val=DIR_OR_LIST | --val_fraction=0.1] [--epochs=N] [--batch=N]
 *                 [--gpu=N] --out=DIR
 *
 * DATA is a folder with one subfolder per class, or a Caffe list file. The
 * run's folder gets train_val/solver/deploy prototxts and labels.txt
 * (ordinary, commented Caffe files), the LMDBs, snapshots, best.caffemodel,
 * train.log and report.html. Rerunning the same command resumes.
 *
 *   moka finetune --demo_data=DIR   writes the generated demo images (make demo)
 */
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "prototxt.h"
#include "finetune/demodata.h"
#include "finetune/strbuf.h"
#include "finetune/workflow.h"
#include "util.h"

/* The command line, quoted for a shell (recorded in the files it writes). */
static char *command_line(int argc, char **argv) {
  StrBuf b = {0};
  sb_puts(&b, "moka");
  for (int i = 0; i < argc; i++) {
    sb_puts(&b, " ");
    const char *s = argv[i];
    if (*s && !strpbrk(s, " \t'\"$`\\*?;&|<>()")) {
      sb_puts(&b, s);
      continue;
    }
    sb_puts(&b, "'");
    for (; *s; s++) {
      if (*s == '\'')
        sb_puts(&b, "'\\''");
      else
        sb_append(&b, s, 1);
    }
    sb_puts(&b, "'");
  }
  return sb_take(&b);
}

int cmd_finetune(int argc, char **argv) {
  FtOptions o;
  ft_options_default(&o);
  const char *demo_data = NULL, *gpu = NULL;
  int demo_per_class = 120, demo_size = 48;
  Flag flags[] = {
      {"model", FLAG_STRING, &o.model, "the deploy prototxt to fine-tune (required)"},
      {"weights", FLAG_STRING, &o.weights,
       "pretrained .caffemodel (e.g. ResNet-50-model.caffemodel); none = train from scratch"},
      {"out", FLAG_STRING, &o.out, "the folder for this run's files (required); rerun to resume"},
      {"val", FLAG_STRING, &o.val, "validation images: a folder of class folders or a list file "
                                   "(default: split off --val_fraction of DATA)"},
      {"val_fraction", FLAG_DOUBLE, &o.val_fraction,
       "share of each class held out for validation (default 0.1)"},
      {"labels", FLAG_STRING, &o.labels,
       "class names, one per line: the label order (default: sorted folder names)"},
      {"root", FLAG_STRING, &o.root, "folder a list file's paths are relative to (default: its folder)"},
      {"epochs", FLAG_INT, &o.epochs, "passes over the training images (default 30)"},
      {"batch", FLAG_INT, &o.batch, "training batch size (default 32)"},
      {"val_batch", FLAG_INT, &o.val_batch, "validation batch size (default: --batch)"},
      {"lr", FLAG_DOUBLE, &o.lr, "base learning rate (default 0.001)"},
      {"lr_steps", FLAG_STRING, &o.lr_steps,
       "when to multiply the rate by --lr_gamma, as fractions of the run (default "
       "0.089,0.278,0.667,0.944: epochs 8, 25, 60, 85 of 90)"},
      {"lr_gamma", FLAG_DOUBLE, &o.lr_gamma, "learning rate factor at each step (default 0.1)"},
      {"momentum", FLAG_DOUBLE, &o.momentum, "SGD momentum (default 0.9)"},
      {"weight_decay", FLAG_DOUBLE, &o.weight_decay, "L2 weight decay (default 0.0001)"},
      {"resize", FLAG_INT, &o.resize,
       "images are stored resized to this x this (default 256; input_size*256/224 with --input_size)"},
      {"input_size", FLAG_INT, &o.input_size,
       "train at this input size instead of the deploy's (the last pooling becomes global)"},
      {"encoded", FLAG_BOOL, &o.encoded, "store JPEG/PNG bytes in the LMDBs (default true)"},
      {"mean_file", FLAG_STRING, &o.mean_file,
       "the model's mean image (e.g. ResNet_mean.binaryproto; default: computed from the data)"},
      {"mean_value", FLAG_STRING, &o.mean_value, "per-channel mean, B,G,R (e.g. 104,117,123)"},
      {"bn", FLAG_STRING, &o.bn,
       "BatchNorm statistics: frozen, batch, or auto (default: frozen when fine-tuning with "
       "batches < 32, batch otherwise)"},
      {"bn_maf", FLAG_DOUBLE, &o.bn_maf,
       "BatchNorm moving_average_fraction with --bn=batch (default: Caffe's 0.999)"},
      {"mirror", FLAG_BOOL, &o.mirror, "random horizontal flips of training images (default true)"},
      {"classifier_name", FLAG_STRING, &o.classifier_name,
       "name of the new classifier layer (default: fc1000 -> fc<N>)"},
      {"classifier_lr_mult", FLAG_DOUBLE, &o.cls_lr_mult,
       "learning-rate multiplier of the new classifier's weights; its bias gets twice (default: 10 "
       "when fine-tuning, 1 from scratch)"},
      {"seed", FLAG_INT, &o.seed, "random seed: split, shuffling, solver (default 1)"},
      {"gpu", FLAG_STRING, &gpu, "GPU id to train on (default: CPU)"},
      {"keep_snapshots", FLAG_INT, &o.keep_snapshots,
       "epoch snapshots kept besides best.caffemodel (default 2)"},
      {"demo_data", FLAG_STRING, &demo_data,
       "write the demo's generated images to this folder (pretrain/ and finetune/) and exit"},
      {"demo_per_class", FLAG_INT, &demo_per_class,
       "with --demo_data: images per pretrain class (fine-tune classes get half; default 120)"},
      {"demo_size", FLAG_INT, &demo_size, "with --demo_data: image size in pixels (default 48)"},
  };
  const char *pos[1];
  int n_pos;
  const char *summary =
      "Fine-tune a model on a folder of images (one subfolder per class) or a list file: split, "
      "LMDBs, mean, commented train_val/solver/deploy prototxts, training with validation every "
      "epoch, the best weights, a report. Rerun the same command to resume.";
  int rc = flags_parse("finetune", " DATA", summary, flags, (int)MOKA_ARRAY_LEN(flags), argc, argv,
                       pos, 1, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (demo_data && *demo_data) {
    if (demo_per_class < 2) return moka_errorf("--demo_per_class must be at least 2");
    if (ft_demo_generate(demo_data, demo_size, demo_per_class, demo_per_class / 2, (uint32_t)o.seed))
      return -1;
    fprintf(stderr, "moka finetune: wrote %d pretrain and %d fine-tune images (%dx%d JPEG) to %s\n",
            FT_DEMO_PRETRAIN_CLASSES * demo_per_class, FT_DEMO_FINETUNE_CLASSES * (demo_per_class / 2),
            demo_size, demo_size, demo_data);
    return 0;
  }
  o.data = n_pos ? pos[0] : NULL;
  /* Pretrained weights want the model's own mean. With no mean given and
   * Kaiming He's ResNet (its deploy prototxt's name), use his mean image's
   * per-channel values; other models get the data's mean, with a warning. */
  if (o.weights && *o.weights && !(o.mean_file && *o.mean_file) &&
      !(o.mean_value && *o.mean_value) && o.model && *o.model) {
    ProtobufCMessage *m;
    if (prototxt_read_file(&caffe__net_parameter__descriptor, o.model, &m) == 0) {
      const char *name = ((Caffe__NetParameter *)m)->name;
      if (name && (!strcmp(name, "ResNet-50") || !strcmp(name, "ResNet-101") ||
                   !strcmp(name, "ResNet-152"))) {
        o.mean_value = "103.0626,115.9029,123.1516";
        LOG_INFO("%s with pretrained weights: using Kaiming He's mean (B,G,R %s, the per-channel "
                 "values of ResNet_mean.binaryproto); pass --mean_file or --mean_value to change it",
                 name, o.mean_value);
      } else {
        LOG_WARN("pretrained weights but no --mean_file/--mean_value: the mean is computed from "
                 "your images, which may not be the mean the weights were trained with");
      }
      protobuf_c_message_free_unpacked(m, NULL);
    }
  }
  if (gpu && *gpu) o.gpu = gpu;
  if (cli_backend(o.gpu, &o.backend)) return -1;
  char *cmd = command_line(argc, argv);
  o.command = cmd;
  FtOutcome out;
  rc = ft_run(&o, &out);
  free(cmd);
  if (rc) return -1;
  return out.interrupted ? 130 : 0;
}
