/* test_precision.c — the process-wide precision names (src/layers/fast.c):
 * fp32 / bf16 / tf32 are names, checked when set; whether a backend can run
 * one is fast_check_precision's answer: tf32 is CUDA only (one clear error
 * on the CPU, and the CPU GEMM refuses it rather than silently running fp32),
 * bf16 on the CPU needs AVX-512 BF16 but never on CUDA.
 */
#include <stdio.h>
#include <string.h>

#include "layers/fast.h"
#include "testlib.h"
#include "util.h"

static void test_names(void) {
  CHECK(fast_set_precision("fp32") == 0 && fast_precision() == FAST_FP32);
  CHECK(fast_set_precision("fp16") != 0 && strstr(moka_error(), "fp16") &&
        strstr(moka_error(), "tf32"));
  CHECK(fast_precision() == FAST_FP32);
  CHECK(fast_set_precision("tf32") == 0 && fast_precision() == FAST_TF32);
  CHECK(!strcmp(fast_precision_name(FAST_TF32), "tf32"));
  CHECK(fast_set_precision("bf16") == 0 && fast_precision() == FAST_BF16);
  CHECK(!strcmp(fast_precision_name(FAST_BF16), "bf16"));
  CHECK(fast_set_precision("fp32") == 0);
}

static void test_backend_checks(void) {
  REQUIRE(fast_set_precision("tf32") == 0);
  CHECK(fast_check_precision(true) == 0);
  CHECK(fast_check_precision(false) != 0 && strstr(moka_error(), "CUDA"));
  /* the CPU GEMM refuses tf32 instead of running fp32 */
  float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0};
  CHECK(fast_gemm(false, false, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2) != 0 &&
        strstr(moka_error(), "tf32"));
  REQUIRE(fast_set_precision("bf16") == 0);
  CHECK(fast_check_precision(true) == 0); /* CUDA: this CPU's AVX-512 does not matter */
  CHECK((fast_check_precision(false) == 0) == fast_bf16_supported());
  REQUIRE(fast_set_precision("fp32") == 0);
  CHECK(fast_check_precision(false) == 0 && fast_check_precision(true) == 0);
  CHECK(fast_gemm(false, false, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2) == 0 && c[0] == 1.0f &&
        c[1] == 2.0f && c[2] == 3.0f && c[3] == 4.0f);
}

int main(void) {
  RUN(test_names);
  RUN(test_backend_checks);
  return test_summary();
}
