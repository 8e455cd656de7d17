/* bn_nhwc_emulate.cpp — kernels/bn_nhwc.cu (the fused BatchNorm chain on channels-last bf16)
 * on the CPU: its partial-sum kernel in an emulated block of 256 threads (emu_cuda.h), the
 * per-channel and per-vector functions its other kernels loop over, in the launchers' order,
 * against a double reference of Caffe's BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU]
 * (`make test`). The bf16 loads and stores are emulated with the device's rounding (nearest
 * even).
 *
 * Cases: channel counts 8 (one 16-byte group), 24 (8 does not divide 256: one thread idle),
 * 64, 136, 2048 (one thread per channel group); pixel counts that leave a partial chunk and
 * give one or several chunks; batch and global statistics; ReLU with a slope, without; no
 * residual, the shortcut as the Eltwise's bottom 0 or 1; the gradient of a Split summed in
 * (dy + dy1); x, r, dy on the bf16 grid.
 * Bounds (the outputs are bf16: 2^-9 relative rounding, x_norm is rounded before the
 * backward uses it): x_norm, xz, y within 2^-8 |value| + 1e-6; dx within 2^-7 of
 * (|dz g| + |wa| + |wb x_norm|) / sd + 1e-6; mean, var within 1e-5 relative; the running
 * statistics likewise; dgamma, dbeta within 2^-8 of the sums of magnitudes + 1e-6.
 */
#include "emu_cuda.h"

#define MOKA_NHWC_EMULATE 1
typedef __nv_bfloat16 nh_bf16;
#define BNH_HD static inline
#define BNH_D static inline

static void bnh_ld8(const nh_bf16 *p, float f[8]) {
  for (int e = 0; e < 8; e++) f[e] = to_float(p[e]);
}
static void bnh_st8(nh_bf16 *p, const float f[8]) {
  for (int e = 0; e < 8; e++) p[e] = __float2bfloat16_rn(f[e]);
}

#include "../../kernels/bn_nhwc.cu"

static int g_passed, g_failed;
static unsigned long long g_lcg = 99;
static float rnd() { return emu_rnd_grid(&g_lcg); }

static std::vector<nh_bf16> bf(const std::vector<float> &v) {
  std::vector<nh_bf16> o(v.size());
  for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16_rn(v[i]);
  return o;
}

struct Case {
  size_t P;
  int C;
  bool global, relu, dy1;
  int residual;
  float slope;
};

static bool within(const char *what, double got, double want, double tol) {
  if (fabs(got - want) <= tol) return true;
  if (g_errors++ < 8)
    fprintf(stderr, "  FAIL %s: got %.9g want %.9g (tolerance %.3g)\n", what, got, want, tol);
  return false;
}

/* The partial sums through the emulated kernel: chunks blocks. */
static std::vector<double> partials(const nh_bf16 *x, const nh_bf16 *dy, const nh_bf16 *dy1,
                                    const nh_bf16 *y, bool masked, float slope, size_t P, int C) {
  size_t chunks, len;
  bnh_chunks(P, C, &chunks, &len);
  std::vector<double> part(2 * (size_t)C * chunks, NAN);
  for (size_t j = 0; j < chunks; j++) {
    blockIdx = dim3{(unsigned)j, 0, 0};
    run_block([&] { bnh_partial_kernel(x, dy, dy1, y, masked, slope, P, C, len, part.data()); });
  }
  return part;
}

static bool run(const Case &k) {
  const size_t P = k.P, C = k.C, n = P * C;
  const float eps = 1e-5f, maf = 0.999f, bc = P > 1 ? (float)P / (float)(P - 1) : 1.0f;
  std::vector<float> x(n), r(n), dy(n), dy1(n), gamma(C), beta(C), b0(C), b1(C);
  for (auto &v : x) v = rnd() * 3.0f + 0.5f; /* a mean away from 0 */
  for (auto &v : r) v = rnd();
  for (auto &v : dy) v = rnd();
  for (auto &v : dy1) v = rnd();
  for (size_t c = 0; c < C; c++) {
    gamma[c] = 0.5f + 0.25f * rnd();
    beta[c] = 0.1f * rnd();
    b0[c] = 0.3f * rnd();
    b1[c] = 1.0f + 0.2f * rnd();
  }
  float b2 = 0.75f;
  for (auto &v : x) v = to_float(__float2bfloat16_rn(v));
  const auto hx = bf(x), hr = bf(r), hdy = bf(dy), hdy1 = bf(dy1);
  bool ok = true;
  char what[160];

  /* ---- reference (double) ---- */
  std::vector<double> mean(C), var(C), sd(C), xn(n), yv(n), xz(n);
  std::vector<double> rb0(C), rb1(C);
  double rb2 = b2;
  for (size_t c = 0; c < C; c++) {
    if (k.global) {
      const double f = b2 == 0 ? 0 : 1.0 / b2;
      mean[c] = f * b0[c];
      var[c] = f * b1[c];
      rb0[c] = b0[c], rb1[c] = b1[c];
    } else {
      double s = 0, q = 0;
      for (size_t p = 0; p < P; p++) s += x[p * C + c];
      mean[c] = s / P;
      for (size_t p = 0; p < P; p++) q += (x[p * C + c] - mean[c]) * (x[p * C + c] - mean[c]);
      var[c] = q / P;
      rb0[c] = maf * b0[c] + mean[c];
      rb1[c] = maf * b1[c] + bc * var[c];
    }
    sd[c] = sqrt(var[c] + eps);
  }
  if (!k.global) rb2 = b2 * maf + 1.0;
  auto relu = [&](double v) { return v > 0 ? v : k.slope * v; };
  for (size_t i = 0; i < n; i++) {
    const size_t c = i % C;
    xn[i] = (x[i] - mean[c]) / sd[c];
    const double z = xn[i] * gamma[c] + beta[c];
    if (k.residual < 0) {
      xz[i] = k.relu ? relu(z) : z;
      yv[i] = xz[i];
    } else {
      xz[i] = z;
      yv[i] = k.relu ? relu(z + r[i]) : z + r[i];
    }
  }

  /* ---- forward, as moka_cuda_bn_nhwc_forward ---- */
  std::vector<float> stats(3 * C), gb0(b0), gb1(b1);
  float gb2 = b2;
  if (k.global) {
    for (size_t c = 0; c < C; c++) { /* bnf_global_stats_kernel's formulas */
      const float f = b2 == 0.0f ? 0.0f : 1.0f / b2;
      stats[c] = f * b0[c];
      stats[C + c] = f * b1[c];
      stats[2 * C + c] = sqrtf(stats[C + c] + eps);
    }
  } else {
    const auto part = partials(hx.data(), nullptr, nullptr, nullptr, false, 0.0f, P, k.C);
    size_t chunks, len;
    bnh_chunks(P, C, &chunks, &len);
    for (size_t c = 0; c < C; c++)
      bnh_stats_channel(part.data(), c, C, chunks, P, eps, maf, bc, stats.data(), gb0.data(),
                        gb1.data(), &gb2);
    for (size_t c = 0; c < C; c++) {
      snprintf(what, sizeof what, "mean[%zu]", c);
      ok &= within(what, stats[c], mean[c], 1e-5 * (fabs(mean[c]) + 1));
      snprintf(what, sizeof what, "var[%zu]", c);
      ok &= within(what, stats[C + c], var[c], 1e-5 * var[c] + 1e-7);
      snprintf(what, sizeof what, "running mean[%zu]", c);
      ok &= within(what, gb0[c], rb0[c], 1e-5 * (fabs(rb0[c]) + 1));
      snprintf(what, sizeof what, "running var[%zu]", c);
      ok &= within(what, gb1[c], rb1[c], 1e-5 * (fabs(rb1[c]) + 1));
    }
    ok &= within("running count", gb2, rb2, 1e-6);
  }
  std::vector<nh_bf16> gxn(n), gxz(n), gy(n);
  for (size_t i = 0; i < n / 8; i++)
    bnh_apply8(i, hx.data(), gxz.data(), gy.data(), hr.data(), gxn.data(), stats.data(),
               gamma.data(), beta.data(), k.C, k.relu, k.slope, k.residual);
  for (size_t i = 0; i < n && ok; i++) {
    snprintf(what, sizeof what, "x_norm[%zu]", i);
    ok &= within(what, to_float(gxn[i]), xn[i], ldexp(1.0, -8) * fabs(xn[i]) + 1e-5);
    snprintf(what, sizeof what, "xz[%zu]", i);
    ok &= within(what, to_float(gxz[i]), xz[i],
                 ldexp(1.0, -8) * (fabs(xn[i] * gamma[i % C]) + fabs(beta[i % C])) + 1e-5);
    if (k.residual >= 0) {
      snprintf(what, sizeof what, "y[%zu]", i);
      ok &= within(what, to_float(gy[i]), yv[i],
                   ldexp(1.0, -8) * (fabs(xn[i] * gamma[i % C]) + fabs(beta[i % C]) + fabs(r[i])) +
                       1e-5);
    }
  }
  const std::vector<nh_bf16> &gout = k.residual >= 0 ? gy : gxz; /* the chain's output */

  /* ---- backward, as moka_cuda_bn_nhwc_backward (the mask from the kernel's own y) ---- */
  const bool masked = k.relu;
  std::vector<double> dz(n), sdz(C, 0), sdzx(C, 0), adz(C, 0), adzx(C, 0);
  for (size_t i = 0; i < n; i++) {
    const double g = k.dy1 ? (double)to_float(hdy[i]) + to_float(hdy1[i]) : to_float(hdy[i]);
    const double yo = to_float(gout[i]);
    dz[i] = masked ? g * ((yo > 0) + k.slope * (yo <= 0)) : g;
    const size_t c = i % C;
    const double xq = to_float(gxn[i]); /* the kept (bf16) x_norm */
    sdz[c] += dz[i], sdzx[c] += dz[i] * xq;
    adz[c] += fabs(dz[i]), adzx[c] += fabs(dz[i] * xq);
  }
  std::vector<float> dgamma(C, 0.25f), dbeta(C, -0.5f), work(2 * C);
  const auto part = partials(gxn.data(), hdy.data(), k.dy1 ? hdy1.data() : nullptr,
                             gout.data(), masked, k.slope, P, k.C);
  size_t chunks, len;
  bnh_chunks(P, C, &chunks, &len);
  for (size_t c = 0; c < C; c++)
    bnh_grad_channel(part.data(), c, C, chunks, P, gamma.data(), dgamma.data(), dbeta.data(),
                     work.data());
  for (size_t c = 0; c < C; c++) {
    snprintf(what, sizeof what, "dgamma[%zu]", c);
    ok &= within(what, dgamma[c], 0.25 + sdzx[c], 1e-6 * adzx[c] + 1e-6);
    snprintf(what, sizeof what, "dbeta[%zu]", c);
    ok &= within(what, dbeta[c], -0.5 + sdz[c], 1e-6 * adz[c] + 1e-6);
  }
  std::vector<nh_bf16> gdx(n), gdr(n);
  for (size_t i = 0; i < n / 8; i++)
    bnh_grad_apply8(i, hdy.data(), k.dy1 ? hdy1.data() : nullptr, gout.data(), gxn.data(),
                    stats.data(), gamma.data(), work.data(), gdx.data(),
                    k.residual >= 0 ? gdr.data() : nullptr, k.C, masked, k.slope, k.global);
  for (size_t i = 0; i < n && ok; i++) {
    const size_t c = i % C;
    const double g = gamma[c], s = stats[2 * C + c];
    const double wa = g * sdz[c] / P, wb = g * sdzx[c] / P, xq = to_float(gxn[i]);
    const double want = k.global ? dz[i] * g / s : (dz[i] * g - wa - wb * xq) / s;
    const double mag = k.global ? fabs(dz[i] * g) / s
                                : (fabs(dz[i] * g) + fabs(wa) + fabs(wb * xq)) / s;
    snprintf(what, sizeof what, "dx[%zu]", i);
    ok &= within(what, to_float(gdx[i]), want, ldexp(1.0, -7) * mag + 1e-6);
    if (k.residual >= 0) {
      snprintf(what, sizeof what, "dr[%zu]", i);
      ok &= within(what, to_float(gdr[i]), dz[i], ldexp(1.0, -8) * fabs(dz[i]) + 1e-6);
    }
  }
  return ok;
}

int main() {
  static const Case cases[] = {
      /* P C global relu dy1 residual slope */
      {37, 8, false, true, false, -1, 0.0f},
      {300, 24, false, true, true, 0, 0.0f},
      {1000, 64, false, false, false, 1, 0.0f},
      {200, 136, true, true, false, -1, 0.1f},
      {70, 2048, false, true, true, 1, 0.0f},
      {5000, 128, false, true, false, 0, 0.0f}, /* several chunks */
      {49, 512, true, false, true, 0, 0.0f},
  };
  for (const Case &k : cases) {
    const int e0 = g_errors;
    if (run(k) && g_errors == e0) {
      g_passed++;
    } else {
      g_failed++;
      fprintf(stderr, "[FAIL] P %zu C %d %s relu %d dy1 %d residual %d\n", k.P, k.C,
              k.global ? "global" : "batch", k.relu, k.dy1, k.residual);
    }
  }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
