/* filler.c — Caffe's weight fillers (include/caffe/filler.hpp), drawing from
 * the net's random stream in Caffe's order.
 *
 *   constant           every value = `value`
 *   uniform            U[min, max]                       (one draw per value)
 *   gaussian           N(mean, std); with `sparse` >= 0, each value is then
 *                      kept with probability sparse / shape[0] (a second
 *                      pass of one Bernoulli draw per value, as Caffe)
 *   positive_unitball  U[0, 1], then each of the shape[0] rows divided by
 *                      its sum
 *   xavier             U[-sqrt(3/n), sqrt(3/n)]
 *   msra               N(0, sqrt(2/n))
 *                      n = fan_in = count/shape[0], fan_out = count/shape[1]
 *                      or their mean (variance_norm); a missing axis is 1
 *   bilinear           the bilinear upsampling kernel (4-D, square)
 *
 * Caffe's caffe_rng_uniform(a, b) draws from [a, nextafter(b)), i.e. the
 * closed interval [a, b]; rng_uniform() is boost's half-open one, so the
 * upper bound is bumped by one ulp here. Uniform-based fillers therefore
 * give Caffe's exact values for the same stream; gaussian ones use the same
 * number of draws but not boost's algorithm (see rng.h).
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "layer.h"
#include "util.h"

/* caffe_rng_uniform(n, a, b, r). */
static int fill_uniform(float *r, size_t n, float a, float b, Rng *rng, const char *what) {
  if (!(a <= b))
    return moka_errorf("%s filler: min %g must not exceed max %g", what, (double)a, (double)b);
  float hi = nextafterf(b, FLT_MAX);
  for (size_t i = 0; i < n; i++) r[i] = rng_uniform(rng, a, hi);
  return 0;
}

/* caffe_rng_gaussian(n, mu, sigma, r). */
static int fill_gaussian(float *r, size_t n, float mu, float sigma, Rng *rng, const char *what) {
  if (!(sigma > 0))
    return moka_errorf("%s filler: std must be > 0, got %g", what, (double)sigma);
  for (size_t i = 0; i < n; i++) r[i] = rng_gaussian(rng, mu, sigma);
  return 0;
}

static int no_sparse(const Caffe__FillerParameter *f, const char *type) {
  if (f->sparse != -1)
    return moka_errorf("%s filler: 'sparse' (%d) is only supported by the gaussian filler", type,
                       (int)f->sparse);
  return 0;
}

/* n for xavier/msra from variance_norm. */
static float fan_n(const Blob *b, const Caffe__FillerParameter *f) {
  int fan_in = (int)(b->count / (size_t)blob_legacy_dim(b, 0));
  int fan_out = (int)(b->count / (size_t)blob_legacy_dim(b, 1));
  float n = (float)fan_in;
  if (f->variance_norm == CAFFE__FILLER_PARAMETER__VARIANCE_NORM__AVERAGE)
    n = (float)(fan_in + fan_out) / 2.0f;
  else if (f->variance_norm == CAFFE__FILLER_PARAMETER__VARIANCE_NORM__FAN_OUT)
    n = (float)fan_out;
  return n;
}

int filler_fill(Blob *b, const Caffe__FillerParameter *f, Rng *rng) {
  const char *type = f->type ? f->type : "constant";
  float *data = b->data; /* (shape...) */
  size_t n = b->count;
  bool is_constant = strcmp(type, "constant") == 0;
  if (!is_constant && !rng)
    return moka_errorf("%s filler: no random stream given", type);
  if (n == 0 || !data) return moka_errorf("%s filler: the blob is empty", type);
  if (b->num_axes > 4 && (!strcmp(type, "positive_unitball") || !strcmp(type, "xavier") ||
                          !strcmp(type, "msra")))
    return moka_errorf("%s filler: the blob has %d axes; this filler takes at most 4", type,
                       b->num_axes);

  if (is_constant) {
    for (size_t i = 0; i < n; i++) data[i] = f->value;
    return no_sparse(f, type);
  }
  if (strcmp(type, "uniform") == 0) {
    if (fill_uniform(data, n, f->min, f->max, rng, type)) return -1;
    return no_sparse(f, type);
  }
  if (strcmp(type, "gaussian") == 0) {
    if (fill_gaussian(data, n, f->mean, f->std, rng, type)) return -1;
    if (f->sparse < -1)
      return moka_errorf("gaussian filler: sparse must be >= -1, got %d", f->sparse);
    if (f->sparse >= 0) {
      /* Sparse "weight" matrices: shape[0] outputs, each keeping on average
       * `sparse` inputs. boost::bernoulli_distribution<float>: u <= p*max
       * computed in float. */
      if (b->num_axes < 1) return moka_errorf("gaussian filler: sparse needs a blob with axes");
      float p = (float)f->sparse / (float)b->shape[0];
      if (!(p >= 0.0f && p <= 1.0f))
        return moka_errorf("gaussian filler: sparse %d exceeds the %d outputs (shape[0])",
                           f->sparse, b->shape[0]);
      for (size_t i = 0; i < n; i++) {
        int keep = p == 0.0f ? 0 : (float)rng_u32(rng) <= p * (float)4294967295u;
        data[i] *= (float)keep;
      }
    }
    return 0;
  }
  if (strcmp(type, "positive_unitball") == 0) {
    if (fill_uniform(data, n, 0.0f, 1.0f, rng, type)) return -1;
    int num = blob_legacy_dim(b, 0);
    size_t dim = n / (size_t)num; /* (num, dim) */
    for (int i = 0; i < num; i++) {
      float sum = 0; /* float, as Caffe (bit-identical values) */
      for (size_t j = 0; j < dim; j++) sum += data[(size_t)i * dim + j];
      for (size_t j = 0; j < dim; j++) data[(size_t)i * dim + j] /= sum;
    }
    return no_sparse(f, type);
  }
  if (strcmp(type, "xavier") == 0) {
    float scale = sqrtf(3.0f / fan_n(b, f));
    if (fill_uniform(data, n, -scale, scale, rng, type)) return -1;
    return no_sparse(f, type);
  }
  if (strcmp(type, "msra") == 0) {
    float std = sqrtf(2.0f / fan_n(b, f));
    if (fill_gaussian(data, n, 0.0f, std, rng, type)) return -1;
    return no_sparse(f, type);
  }
  if (strcmp(type, "bilinear") == 0) {
    if (b->num_axes != 4)
      return moka_errorf("bilinear filler: the blob must have 4 axes, it has %d", b->num_axes);
    int w = b->shape[3], h = b->shape[2];
    if (w != h)
      return moka_errorf("bilinear filler: the kernel must be square, got %dx%d", h, w);
    /* (OC, IC, K, K): the kernel of a factor-f upsampling, centred. */
    int fct = (int)ceil(w / 2.0);
    float c = (float)((w - 1) / (2.0 * fct));
    for (size_t i = 0; i < n; i++) {
      float x = (float)(i % (size_t)w);
      float y = (float)((i / (size_t)w) % (size_t)h);
      data[i] = (1 - fabsf(x / (float)fct - c)) * (1 - fabsf(y / (float)fct - c));
    }
    return no_sparse(f, type);
  }
  return moka_errorf("unknown filler type '%s' (supported: constant, uniform, gaussian, "
                     "positive_unitball, xavier, msra, bilinear)",
                     type);
}
