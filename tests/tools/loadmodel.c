/* loadmodel — load a caffemodel the way moka does (map + unpack), report its
 * size, the peak resident memory of the load, and the ratio; optionally also
 * build a net and copy the weights into it (what `moka classify` does).
 *   loadmodel MODEL.caffemodel [NET.prototxt]
 * Prints "size_mb=… peak_load_mb=… ratio=…" (and "peak_net_mb=…"). */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "net.h"
#include "proto_io.h"
#include "util.h"

static double peak_mb(void) {
  /* VmHWM of this process, in MiB */
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb / 1024.0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: loadmodel MODEL.caffemodel [NET.prototxt]\n");
    return 2;
  }
  struct stat st;
  if (stat(argv[1], &st)) {
    perror(argv[1]);
    return 2;
  }
  double base = peak_mb();
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__net_parameter__descriptor, argv[1], &m)) {
    fprintf(stderr, "loadmodel: %s\n", moka_error());
    return 1;
  }
  double load = peak_mb() - base, size = st.st_size / 1048576.0;
  protobuf_c_message_free_unpacked(m, NULL);
  printf("size_mb=%.1f peak_load_mb=%.1f ratio=%.2f\n", size, load, load / size);
  if (argc > 2) {
    NetOptions o;
    net_options_default(&o);
    o.quiet = true;
    moka_set_log_level(1);
    Net *net = net_create_from_file(argv[2], &o);
    if (!net || net_copy_from_file(net, argv[1])) {
      fprintf(stderr, "loadmodel: %s\n", moka_error());
      return 1;
    }
    printf("peak_net_mb=%.1f (net with its activations and gradients, plus the load)\n",
           peak_mb() - base);
    net_free(net);
  }
  return 0;
}
