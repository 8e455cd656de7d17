/* main.c — the `moka` command: a table of subcommands, as Caffe's tools.
 * Each subcommand lives in src/cli/<name>.c and parses its own flags from a
 * table (src/cli/flags.h) that also generates its --help. */
#include <stdio.h>
#include <string.h>

#include "cli/flags.h"
#include "util.h"

/* Declared weak: a subcommand whose file is not in this build is simply not
 * listed (never a crash). */
#define COMMANDS(X)                                                                          \
  X(train, "train or fine-tune a model (Caffe's `caffe train`)")                           \
  X(test, "score a model on its TEST phase (Caffe's `caffe test`)")                        \
  X(time, "per-layer forward/backward timings (Caffe's `caffe time`)")                     \
  X(classify, "label images with a deploy prototxt and a caffemodel")                      \
  X(forward, "run a net on raw float32 inputs and dump blobs (for blob-by-blob checks)")   \
  X(finetune, "the whole fine-tuning workflow from a folder of images, in one command")    \
  X(convert_imageset, "images + list file -> LMDB of Datum records (Caffe's tool)")        \
  X(compute_image_mean, "LMDB -> mean.binaryproto (Caffe's tool)")                         \
  X(import, "check a caffemodel against a prototxt and re-save it in moka's layout")        \
  X(device_query, "describe the CPU and any CUDA devices")                                 \
  X(version, "print moka's version")

#define DECLARE(n, s) extern int cmd_##n(int argc, char **argv) __attribute__((weak));
COMMANDS(DECLARE)
#undef DECLARE

static const Command kCommands[] = {
#define ENTRY(n, s) {#n, s, cmd_##n},
    COMMANDS(ENTRY)
#undef ENTRY
};

static void usage(FILE *out) {
  fprintf(out,
          "moka — fine-tunes ResNet-50 exactly as Caffe does, from Caffe's own files.\n\n"
          "usage: moka <command> [flags] [args]   (moka <command> --help for its flags)\n\n"
          "commands:\n");
  for (size_t i = 0; i < MOKA_ARRAY_LEN(kCommands); i++)
    if (kCommands[i].run) fprintf(out, "  %-20s %s\n", kCommands[i].name, kCommands[i].summary);
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
      !strcmp(argv[1], "help")) {
    usage(stdout);
    return argc < 2 ? 1 : 0;
  }
  for (size_t i = 0; i < MOKA_ARRAY_LEN(kCommands); i++) {
    if (strcmp(kCommands[i].name, argv[1]) != 0 || !kCommands[i].run) continue;
    int rc = kCommands[i].run(argc - 1, argv + 1);
    if (rc < 0) {
      fprintf(stderr, "moka: error: %s\n", moka_error());
      return 1;
    }
    return rc;
  }
  fprintf(stderr, "moka: error: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
