/* moka forward — feed raw float32 arrays named in a manifest into the net's
 * input blobs, run one forward pass, and write the requested blobs (default:
 * every blob) as raw float32 plus DIR/manifest.txt in the same format. This
 * is how moka is compared with Caffe blob by blob. Output files are written
 * atomically, and the manifest last, so a partial run leaves no manifest. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/common.h"
#include "cli/flags.h"
#include "manifest.h"
#include "util.h"

static void file_name_for(const char *blob, char *out, size_t n) {
  snprintf(out, n, "%s.f32", blob);
  for (char *p = out; *p; p++)
    if (*p == '/' || *p == ' ') *p = '_';
}

int cmd_forward(int argc, char **argv) {
  const char *model = NULL, *weights = NULL, *input = NULL, *blobs = NULL, *outdir = NULL,
             *phase_s = "TEST", *gpu = NULL;
  Flag flags[] = {
      {"model", FLAG_STRING, &model, "net prototxt (required)"},
      {"weights", FLAG_STRING, &weights, ".caffemodel to copy by layer name (default: fillers)"},
      {"input", FLAG_STRING, &input, "manifest of input arrays: 'name shape file dtype' per line (required)"},
      {"blobs", FLAG_STRING, &blobs, "comma-separated blobs to write (default: every blob)"},
      {"out", FLAG_STRING, &outdir, "output folder (required; created if missing)"},
      {"phase", FLAG_STRING, &phase_s, "TEST (default) or TRAIN"},
      {"gpu", FLAG_STRING, &gpu, "GPU id (default: CPU)"},
  };
  const char *pos[1];
  int n_pos;
  int rc = flags_parse("forward", "", "Run one forward pass on raw float32 inputs and dump blobs.",
                       flags, MOKA_ARRAY_LEN(flags), argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  if (!input || !outdir) return moka_errorf("moka forward: --input and --out are required");
  Phase ph;
  if (!strcmp(phase_s, "TEST")) ph = MOKA_TEST;
  else if (!strcmp(phase_s, "TRAIN")) ph = MOKA_TRAIN;
  else return moka_errorf("moka forward: --phase must be TEST or TRAIN, not '%s'", phase_s);
  Backend be;
  if (cli_backend(gpu, &be)) return -1;
  ManifestEntry *in;
  int n_in;
  if (manifest_read(input, &in, &n_in)) return -1;
  Net *net = cli_load_net(model, weights, ph, be, gpu);
  if (!net) {
    manifest_free(in, n_in);
    return -1;
  }
  net_freeze_weights(net); /* one forward, no update: layers may prepare the weights once */
  rc = 0;
  for (int i = 0; i < n_in && !rc; i++) {
    Blob *b = net_blob(net, in[i].name);
    if (!b) {
      rc = moka_errorf("%s: the net has no blob named '%s'", input, in[i].name);
      break;
    }
    float *v = manifest_load(&in[i]);
    if (!v) {
      rc = -1;
      break;
    }
    if (b->num_axes != in[i].num_axes || memcmp(b->shape, in[i].shape, sizeof(int) * (size_t)b->num_axes)) {
      if (blob_reshape(b, in[i].num_axes, in[i].shape) || net_reshape(net)) rc = -1;
    }
    if (!rc) memcpy(b->data, v, b->count * sizeof(float));
    if (!rc) rc = cli_input_to_device(net, b); /* CUDA: explicit copy up */
    free(v);
  }
  float loss = 0;
  if (!rc) rc = net_forward(net, &loss);
  if (!rc && mkdir(outdir, 0777) != 0 && errno != EEXIST)
    rc = moka_errorf("cannot create folder '%s'", outdir);
  /* which blobs */
  char *list = NULL;
  size_t mlen = 0, mcap = 4096;
  char *man = rc ? NULL : moka_malloc(mcap);
  if (!rc && !man) rc = -1;
  if (!rc) {
    man[0] = 0;
    mlen = (size_t)snprintf(man, mcap, "# written by moka forward: name shape file dtype\n");
  }
  int n_sel = 0;
  char *sel[4096];
  if (!rc && blobs && *blobs) {
    list = moka_strdup(blobs);
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t && n_sel < 4096; t = strtok_r(NULL, ",", &save)) {
      if (!net_blob(net, t)) {
        rc = moka_errorf("--blobs: the net has no blob named '%s'", t);
        break;
      }
      sel[n_sel++] = t;
    }
  }
  int total = n_sel ? n_sel : net->n_blobs;
  for (int i = 0; i < total && !rc; i++) {
    Blob *b = n_sel ? net_blob(net, sel[i]) : net->blobs[i];
    if (cli_outputs_to_host(net, &b, 1)) { /* CUDA: the blob comes down from the device */
      rc = -1;
      break;
    }
    char fname[1024], path[4096 + 1024], line[2048];
    file_name_for(b->name, fname, sizeof fname);
    snprintf(path, sizeof path, "%s/%s", outdir, fname);
    /* bf16 channels-last (MOKA_BF16_ACT=1 on the CPU): written as fp32 NCHW like the rest */
    float *conv = b->host_bf16 ? moka_malloc((b->count ? b->count : 1) * sizeof(float)) : NULL;
    if (b->host_bf16 && !conv) {
      rc = -1;
      break;
    }
    if (conv) blob_host_f32(b, false, conv);
    const int wrc = moka_write_file_atomic(path, conv ? conv : b->data, b->count * sizeof(float));
    free(conv);
    if (wrc) {
      rc = -1;
      break;
    }
    int off = snprintf(line, sizeof line, "%s ", b->name);
    for (int a = 0; a < b->num_axes; a++)
      off += snprintf(line + off, sizeof line - (size_t)off, "%s%d", a ? "," : "", b->shape[a]);
    snprintf(line + off, sizeof line - (size_t)off, " %s float32\n", fname);
    size_t ll = strlen(line);
    if (mlen + ll + 1 > mcap) {
      mcap = (mlen + ll + 1) * 2;
      char *nm = moka_realloc(man, mcap);
      if (!nm) {
        rc = -1;
        break;
      }
      man = nm;
    }
    memcpy(man + mlen, line, ll + 1);
    mlen += ll;
  }
  if (!rc) {
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/manifest.txt", outdir);
    rc = moka_write_file_atomic(path, man, mlen);
    if (!rc) fprintf(stderr, "moka forward: wrote %d blob(s) to %s (loss %g)\n", total, outdir, loss);
  }
  free(man);
  free(list);
  manifest_free(in, n_in);
  net_free(net);
  return rc ? -1 : 0;
}
