/* demodata.c — the procedurally generated image dataset behind `make demo`
 * (see demodata.h): coloured shapes on textured backgrounds, JPEG files in
 * one folder per class, so that the whole fine-tuning workflow runs on a
 * fresh machine with no downloads. */
#include "finetune/demodata.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"
#include "rng.h"
#include "util.h"

const char *const ft_demo_pretrain_classes[FT_DEMO_PRETRAIN_CLASSES] = {
    "circle", "cross", "ring", "square", "stripes", "triangle"};
const char *const ft_demo_finetune_classes[FT_DEMO_FINETUNE_CLASSES] = {"crescent", "diamond",
                                                                         "hexagon", "star"};

/* A shape in its own frame: the unit disc is roughly its extent. */
typedef struct Shape {
  const char *name;
  double cx, cy, r, angle; /* centre and radius in pixels, rotation */
} Shape;

static bool in_polygon(double x, double y, const double *px, const double *py, int n) {
  bool in = false;
  for (int i = 0, j = n - 1; i < n; j = i++)
    if ((py[i] > y) != (py[j] > y) && x < (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i])
      in = !in;
  return in;
}

static bool regular(double u, double v, int sides, double inner, double phase) {
  double px[16], py[16];
  int n = 0;
  for (int i = 0; i < sides; i++) {
    const double a = phase + 2 * M_PI * i / sides;
    px[n] = cos(a), py[n] = sin(a), n++;
    if (inner > 0) {
      const double b = a + M_PI / sides;
      px[n] = inner * cos(b), py[n] = inner * sin(b), n++;
    }
  }
  return in_polygon(u, v, px, py, n);
}

/* Is (u, v), in the shape's unit frame, inside it? */
static bool inside(const char *name, double u, double v) {
  const double d = hypot(u, v);
  if (!strcmp(name, "circle")) return d <= 0.9;
  if (!strcmp(name, "ring")) return d <= 0.95 && d >= 0.55;
  if (!strcmp(name, "square")) return fabs(u) <= 0.75 && fabs(v) <= 0.75;
  if (!strcmp(name, "cross")) return (fabs(u) <= 0.25 && fabs(v) <= 0.9) || (fabs(v) <= 0.25 && fabs(u) <= 0.9);
  if (!strcmp(name, "triangle")) return regular(u, v, 3, 0, -M_PI / 2);
  if (!strcmp(name, "stripes")) return fabs(u) <= 0.9 && fabs(v) <= 0.9 && fmod(v + 0.9, 0.6) < 0.3;
  if (!strcmp(name, "diamond")) return fabs(u) / 0.6 + fabs(v) / 0.95 <= 1;
  if (!strcmp(name, "hexagon")) return regular(u, v, 6, 0, 0);
  if (!strcmp(name, "star")) return regular(u, v, 5, 0.42, -M_PI / 2);
  if (!strcmp(name, "crescent")) return d <= 0.9 && hypot(u - 0.45, v) > 0.7;
  return false;
}

static void random_colour(Rng *r, double rgb[3]) {
  for (int k = 0; k < 3; k++) rgb[k] = rng_uniform(r, 0, 255);
}

static double luma(const double c[3]) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]; }

/* One image of class `name`, size x size, BGR. */
static void draw(const char *name, int size, Rng *r, Image *im) {
  double bg0[3], bg1[3], fg[3];
  random_colour(r, bg0);
  random_colour(r, bg1);
  do random_colour(r, fg);
  while (fabs(luma(fg) - 0.5 * (luma(bg0) + luma(bg1))) < 60);
  const double ga = rng_uniform(r, 0, 2 * (float)M_PI); /* background gradient direction */
  const double noise = rng_uniform(r, 4, 18);
  Shape s = {name, 0, 0, 0, 0};
  s.r = size * rng_uniform(r, 0.24f, 0.4f);
  s.cx = size / 2.0 + rng_uniform(r, -1, 1) * (size / 2.0 - s.r) * 0.8;
  s.cy = size / 2.0 + rng_uniform(r, -1, 1) * (size / 2.0 - s.r) * 0.8;
  s.angle = rng_uniform(r, 0, 2 * (float)M_PI);
  const double ca = cos(s.angle), sa = sin(s.angle);
  for (int y = 0; y < size; y++)
    for (int x = 0; x < size; x++) {
      /* 3x3 supersampling for smooth edges */
      int hits = 0;
      for (int sy = 0; sy < 3; sy++)
        for (int sx = 0; sx < 3; sx++) {
          const double X = x + (sx + 0.5) / 3 - s.cx, Y = y + (sy + 0.5) / 3 - s.cy;
          const double u = (ca * X + sa * Y) / s.r, v = (-sa * X + ca * Y) / s.r;
          hits += inside(name, u, v);
        }
      const double t = 0.5 + 0.5 * (cos(ga) * (x - size / 2.0) + sin(ga) * (y - size / 2.0)) / size;
      const double a = hits / 9.0;
      uint8_t *p = im->px + ((size_t)y * size + x) * 3;
      for (int k = 0; k < 3; k++) {
        double bg = bg0[k] * (1 - t) + bg1[k] * t;
        double v = bg * (1 - a) + fg[k] * a + rng_gaussian(r, 0, (float)noise);
        p[2 - k] = (uint8_t)fmin(255, fmax(0, v + 0.5)); /* RGB -> BGR */
      }
    }
}

static int make_dir(const char *path) {
  if (mkdir(path, 0777) == 0 || errno == EEXIST) return 0;
  return moka_errorf("cannot create folder '%s': %s", path, strerror(errno));
}

static int write_set(const char *dir, const char *set, const char *const *classes, int n_classes,
                     int per_class, int size, Rng *r) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, set);
  if (make_dir(path)) return -1;
  Image im = {size, size, 3, moka_malloc((size_t)size * size * 3)};
  if (!im.px) return -1;
  int rc = 0;
  for (int k = 0; k < n_classes && !rc; k++) {
    snprintf(path, sizeof path, "%s/%s/%s", dir, set, classes[k]);
    if ((rc = make_dir(path))) break;
    for (int i = 0; i < per_class && !rc; i++) {
      draw(classes[k], size, r, &im);
      uint8_t *buf;
      size_t len;
      if ((rc = image_encode_jpeg(&im, 92, &buf, &len))) break;
      snprintf(path, sizeof path, "%s/%s/%s/%04d.jpg", dir, set, classes[k], i);
      rc = moka_write_file_atomic(path, buf, len);
      free(buf);
    }
  }
  free(im.px);
  return rc;
}

int ft_demo_generate(const char *dir, int size, int per_class_pretrain, int per_class_finetune,
                     uint32_t seed) {
  if (size < 8 || size > 1024) return moka_errorf("demo image size %d (8..1024)", size);
  char path[4200];
  snprintf(path, sizeof path, "%s", dir);
  for (char *q = path + 1; *q; q++) /* mkdir -p */
    if (*q == '/') {
      *q = 0;
      mkdir(path, 0777);
      *q = '/';
    }
  if (make_dir(dir)) return -1;
  Rng r;
  rng_seed(&r, seed);
  if (write_set(dir, "pretrain", ft_demo_pretrain_classes, FT_DEMO_PRETRAIN_CLASSES,
                per_class_pretrain, size, &r) ||
      write_set(dir, "finetune", ft_demo_finetune_classes, FT_DEMO_FINETUNE_CLASSES,
                per_class_finetune, size, &r))
    return moka_error_prefix("generating the demo images in '%s'", dir);
  return 0;
}
