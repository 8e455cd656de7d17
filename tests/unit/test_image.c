/* test_image.c — image decoding, resize and encoding (src/image.c) against
 * OpenCV's results, pre-computed by the scripts in tests/data/:
 *   tests/data/image_expect.txt  (gen_image_expect.py): cv2.imread outcomes
 *     for odd fixtures (grey, CMYK, PNG named .jpg, truncated, zero-byte,
 *     EXIF-rotated, paletted/16-bit/alpha PNGs, GIF/BMP/text named .jpg) and
 *     real files from ../shared, plus cv2.imencode outputs;
 *   tests/data/resize_golden.bin (gen_resize_golden.py): cv2.resize outputs.
 * Also: every file of ../shared/datasets/hymenoptera decodes to the size its
 * MANIFEST.tsv gives (the GIF fails, naming the format), and resizing the
 * golden LMDB's images reproduces the bytes Caffe's convert_imageset stored.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "imagetest.h"
#include "testlib.h"
#include "util.h"

static uint64_t fnv1a64(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* "shared:rel" -> shared_path(rel); anything else is relative to the root. */
static const char *fixture_path(const char *p) {
  return strncmp(p, "shared:", 7) == 0 ? shared_path(p + 7) : p;
}

static void test_sniff(void) {
  const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xE0}, png[] = {0x89, 'P', 'N', 'G', 13, 10, 26, 10};
  CHECK(image_sniff(jpg, sizeof jpg) == IMG_JPEG);
  CHECK(image_sniff(jpg, 2) == IMG_UNKNOWN);
  CHECK(image_sniff(png, sizeof png) == IMG_PNG);
  CHECK(image_sniff((const uint8_t *)"GIF89a", 6) == IMG_GIF);
  CHECK(image_sniff((const uint8_t *)"BM\0\0", 4) == IMG_BMP);
  CHECK(image_sniff((const uint8_t *)"RIFF\1\0\0\0WEBPVP8 ", 16) == IMG_WEBP);
  CHECK(image_sniff((const uint8_t *)"RIFF\1\0\0\0WAVE", 12) == IMG_UNKNOWN);
  CHECK(image_sniff(NULL, 0) == IMG_UNKNOWN);
  CHECK(strcmp(image_format_name(IMG_GIF), "GIF") == 0);
}

/* One line of image_expect.txt. */
static void check_expect_line(const char *path, const char *mode, const char *outcome, int lineno) {
  const char *file = fixture_path(path);
  if (strncmp(mode, "imencode_", 9) == 0) {
    int is_jpg = strncmp(mode + 9, "jpg95_", 6) == 0;
    int channels = strstr(mode, "_gray") ? 1 : 3;
    Image im;
    if (image_read_file(file, channels, &im) != 0) {
      CHECK_MSG(0, "line %d: %s: %s", lineno, path, moka_error());
      return;
    }
    uint8_t *enc = NULL;
    size_t len = 0;
    int rc = is_jpg ? image_encode_jpeg(&im, 95, &enc, &len) : image_encode_png(&im, &enc, &len);
    CHECK_MSG(rc == 0, "line %d: %s", lineno, moka_error());
    size_t want_len = 0;
    unsigned long long want_h = 0;
    if (sscanf(outcome, "OK %zu %llx", &want_len, &want_h) != 2) {
      CHECK_MSG(0, "line %d: bad outcome '%s'", lineno, outcome);
    } else if (rc == 0) {
      CHECK_MSG(len == want_len && fnv1a64(enc, len) == want_h,
                "line %d: %s %s: encoded %zu bytes (hash %016llx), cv2.imencode gives %zu (%016llx)",
                lineno, path, mode, len, (unsigned long long)fnv1a64(enc, len), want_len, want_h);
    }
    free(enc);
    image_free(&im);
    return;
  }
  int channels = strcmp(mode, "color") == 0 ? 3 : strcmp(mode, "gray") == 0 ? 1 : 0;
  Image im;
  int rc = image_read_file(file, channels, &im);
  if (strncmp(outcome, "ERR ", 4) == 0) {
    CHECK_MSG(rc != 0, "line %d: %s (%s) decoded but OpenCV gives no image", lineno, path, mode);
    if (rc != 0)
      CHECK_MSG(strstr(moka_error(), outcome + 4) && strstr(moka_error(), path + (strncmp(path, "shared:", 7) ? 0 : 7)),
                "line %d: %s (%s): error '%s' should name the file and contain '%s'", lineno, path,
                mode, moka_error(), outcome + 4);
    image_free(&im);
    return;
  }
  int h, w, c;
  unsigned long long want;
  if (sscanf(outcome, "OK %d %d %d %llx", &h, &w, &c, &want) != 4) {
    CHECK_MSG(0, "line %d: bad outcome '%s'", lineno, outcome);
    return;
  }
  if (rc != 0) {
    CHECK_MSG(0, "line %d: %s (%s): %s", lineno, path, mode, moka_error());
    return;
  }
  uint64_t got = fnv1a64(im.px, (size_t)im.h * im.w * im.c);
  CHECK_MSG(im.h == h && im.w == w && im.c == c && got == want,
            "line %d: %s (%s): got %dx%dx%d hash %016llx, cv2 gives %dx%dx%d %016llx", lineno, path,
            mode, im.h, im.w, im.c, (unsigned long long)got, h, w, c, want);
  image_free(&im);
}

static void test_opencv_expectations(void) {
  FILE *f = fopen("tests/data/image_expect.txt", "r");
  REQUIRE(f != NULL);
  char line[512];
  int lineno = 0, n = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    if (line[0] == '#' || line[0] == '\n') continue;
    line[strcspn(line, "\n")] = 0;
    char *t1 = strchr(line, '\t');
    char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
    if (!t2) {
      CHECK_MSG(0, "image_expect.txt:%d: malformed", lineno);
      continue;
    }
    *t1 = *t2 = 0;
    check_expect_line(line, t1 + 1, t2 + 1, lineno);
    n++;
  }
  fclose(f);
  CHECK(n > 100);
}

static void test_truncated_jpeg_warns(void) {
  Image im;
  REQUIRE(image_read_file("tests/data/images/truncated.jpg", 3, &im) == 0);
  CHECK_MSG(strstr(image_decode_warning(), "Premature end of JPEG file") != NULL, "warning '%s'",
            image_decode_warning());
  /* libjpeg fills what is missing with mid-grey: the last row is 128 */
  int grey = 1;
  for (int x = 0; x < im.w * 3; x++) grey &= im.px[(size_t)(im.h - 1) * im.w * 3 + x] == 128;
  CHECK(grey);
  image_free(&im);
  /* a clean decode clears the warning */
  REQUIRE(image_read_file("tests/data/images/colour.jpg", 3, &im) == 0);
  CHECK(image_decode_warning()[0] == 0);
  image_free(&im);
}

static void test_size_limits(void) {
  size_t len;
  uint8_t *jpg = read_all("tests/data/images/colour.jpg", &len);
  REQUIRE(jpg != NULL);
  /* patch the SOF0 frame size: 40000 x 40000 (1.6e9 pixels) must be refused
   * from the header, before any allocation */
  const size_t sof = jpeg_sof0(jpg, len);
  REQUIRE(sof != 0);
  jpeg_set_size(jpg, sof, 40000, 40000);
  Image im;
  CHECK(image_decode(jpg, len, 3, &im) != 0);
  CHECK_MSG(strstr(moka_error(), "too large") != NULL, "%s", moka_error());
  CHECK(im.px == NULL);
  CHECK(image_probe(jpg, len, 3, NULL, NULL, NULL) != 0 && strstr(moka_error(), "too large"));
  CHECK(image_decode_reduced(jpg, len, 3, 64, 64, &im) != 0 && strstr(moka_error(), "too large"));
  jpeg_set_size(jpg, sof, 2, 65535); /* 65535 columns: over 65500 */
  CHECK(image_decode(jpg, len, 3, &im) != 0);
  CHECK_MSG(strstr(moka_error(), "65500") != NULL, "%s", moka_error());
  free(jpg);

  uint8_t *png = read_all("tests/data/images/rgba.png", &len);
  REQUIRE(png != NULL && len > 33);
  png_set_size(png, 100000, 100000);
  CHECK(image_decode(png, len, 3, &im) != 0);
  CHECK_MSG(strstr(moka_error(), "too large") != NULL, "%s", moka_error());
  free(png);
}

static void test_bad_arguments(void) {
  Image im;
  const uint8_t jpg[] = {0xFF, 0xD8, 0xFF};
  CHECK(image_decode(jpg, sizeof jpg, 2, &im) != 0);
  CHECK(image_decode(jpg, sizeof jpg, 3, &im) != 0); /* header only */
  CHECK(strstr(moka_error(), "JPEG") != NULL);
  CHECK(image_read_file("tests/data/images/no_such_file.jpg", 3, &im) != 0);
  CHECK(strstr(moka_error(), "no_such_file.jpg") != NULL);
  uint8_t px[12] = {0};
  Image src = {2, 2, 3, px}, out;
  CHECK(image_resize_bilinear(&src, 0, 5, &out) != 0);
  CHECK(image_resize_bilinear(&src, 5, -1, &out) != 0);
  Image bad = {2, 2, 2, px};
  CHECK(image_resize_bilinear(&bad, 4, 4, &out) != 0);
  uint8_t *buf;
  size_t len;
  CHECK(image_encode_jpeg(&src, 0, &buf, &len) != 0);
  CHECK(image_encode_jpeg(&src, 101, &buf, &len) != 0);
}

/* resize_golden.bin: cv2.resize outputs; exact match expected. */
static void test_resize_golden(void) {
  size_t len;
  uint8_t *d = read_all("tests/data/resize_golden.bin", &len);
  REQUIRE(d != NULL && len >= 8 && memcmp(d, "MKRZ", 4) == 0);
  int32_t ncase;
  memcpy(&ncase, d + 4, 4);
  size_t pos = 8;
  int exact_cases = 0;
  for (int k = 0; k < ncase; k++) {
    int32_t hdr[5];
    REQUIRE(pos + sizeof hdr <= len);
    memcpy(hdr, d + pos, sizeof hdr);
    pos += sizeof hdr;
    int sh = hdr[0], sw = hdr[1], c = hdr[2], dh = hdr[3], dw = hdr[4];
    size_t ns = (size_t)sh * sw * c, nd = (size_t)dh * dw * c;
    REQUIRE(pos + ns + nd <= len);
    Image src = {sh, sw, c, d + pos}, out;
    const uint8_t *want = d + pos + ns;
    pos += ns + nd;
    REQUIRE(image_resize_bilinear(&src, dh, dw, &out) == 0);
    CHECK(out.h == dh && out.w == dw && out.c == c);
    int maxdiff = 0;
    size_t ndiff = 0;
    for (size_t i = 0; i < nd; i++) {
      int df = abs((int)out.px[i] - (int)want[i]);
      if (df) ndiff++;
      if (df > maxdiff) maxdiff = df;
    }
    CHECK_MSG(maxdiff <= 1, "case %d (%dx%dx%d -> %dx%d): max diff %d", k, sh, sw, c, dh, dw, maxdiff);
    CHECK_MSG(ndiff == 0, "case %d (%dx%dx%d -> %dx%d): %zu of %zu values differ by 1 from OpenCV",
              k, sh, sw, c, dh, dw, ndiff, nd);
    exact_cases += ndiff == 0;
    image_free(&out);
  }
  CHECK(ncase >= 8 && exact_cases == ncase);
  free(d);
}

/* Resizing the golden images to 32x32 must reproduce what Caffe's
 * convert_imageset (OpenCV 4.5) stored in lmdb_raw32 (CHW bytes). */
static void test_resize_matches_caffe_lmdb(void) {
  for (int k = 0; k < 8; k++) {
    char rel[128];
    snprintf(rel, sizeof rel, "golden/lmdb/images/img%d.jpg", k);
    Image im, r;
    REQUIRE(image_read_file(shared_path(rel), 3, &im) == 0);
    REQUIRE(image_resize_bilinear(&im, 32, 32, &r) == 0);
    snprintf(rel, sizeof rel, "golden/lmdb/datum_raw32_%d.u8", k);
    size_t len;
    uint8_t *want = read_all(shared_path(rel), &len); /* (3,32,32) */
    REQUIRE(want != NULL && len == 3 * 32 * 32);
    int ndiff = 0, maxdiff = 0;
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < 32 * 32; i++) {
        int df = abs((int)r.px[i * 3 + c] - (int)want[c * 1024 + i]);
        ndiff += df != 0;
        if (df > maxdiff) maxdiff = df;
      }
    CHECK_MSG(ndiff == 0, "img%d: %d of 3072 bytes differ from Caffe's (max %d)", k, ndiff, maxdiff);
    free(want);
    image_free(&im);
    image_free(&r);
  }
}

/* Every file of the hymenoptera set gives the outcome its README states:
 * 397 JPEGs decode to the size MANIFEST.tsv lists, imageNotFound.gif fails
 * naming the format. */
static void test_hymenoptera_all(void) {
  FILE *f = fopen(shared_path("datasets/hymenoptera/MANIFEST.tsv"), "r");
  REQUIRE(f != NULL);
  char line[512];
  int n = 0, ok = 0, gif = 0;
  double t0 = moka_now();
  REQUIRE(fgets(line, sizeof line, f) != NULL); /* header */
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    /* class file source_path split format mode width height bytes sha256 */
    char *col[10];
    int nc = 0;
    for (char *p = line; nc < 10;) {
      col[nc++] = p;
      char *t = strchr(p, '\t');
      if (!t) break;
      *t = 0;
      p = t + 1;
    }
    if (nc < 8) {
      CHECK_MSG(0, "MANIFEST.tsv: malformed line %d", n + 2);
      continue;
    }
    char rel[400];
    snprintf(rel, sizeof rel, "datasets/hymenoptera/%.16s/%.300s", col[0], col[1]);
    int w = atoi(col[6]), h = atoi(col[7]);
    Image im;
    int rc = image_read_file(shared_path(rel), 3, &im);
    n++;
    if (strcmp(col[4], "GIF") == 0) {
      gif++;
      CHECK_MSG(rc != 0 && strstr(moka_error(), "GIF image: not supported") &&
                    strstr(moka_error(), col[1]),
                "%s: expected a GIF error, got rc %d '%s'", rel, rc, moka_error());
    } else {
      CHECK_MSG(rc == 0, "%s: %s", rel, moka_error());
      if (rc == 0) {
        CHECK_MSG(im.w == w && im.h == h && im.c == 3, "%s: %dx%d, manifest says %dx%d", rel,
                  im.w, im.h, w, h);
        CHECK_MSG(image_decode_warning()[0] == 0, "%s: warning %s", rel, image_decode_warning());
        ok += im.w == w && im.h == h;
      }
    }
    image_free(&im);
  }
  fclose(f);
  CHECK(n == 398 && ok == 397 && gif == 1);
  fprintf(stderr, "  hymenoptera: %d files, %d decoded, %d GIF refused, %.2f s\n", n, ok, gif,
          moka_now() - t0);
}

/* image_probe: the size decode would give (EXIF orientation included),
 * from the header only. image_decode_reduced: TurboJPEG's factors of at
 * most 1/2, the smallest that keeps the (oriented) minimum; else full size. */
static void test_probe_and_reduced_decode(void) {
  size_t len;
  uint8_t *jpg = read_all("tests/data/images/exif_rot6.jpg", &len); /* stored 16x12 */
  REQUIRE(jpg != NULL);
  int h, w, c;
  REQUIRE(image_probe(jpg, len, 3, &h, &w, &c) == 0);
  CHECK(h == 16 && w == 12 && c == 3); /* rotated, as image_decode(…, 3) returns it */
  REQUIRE(image_probe(jpg, len, 0, &h, &w, &c) == 0);
  CHECK(h == 12 && w == 16 && c == 3); /* native: not rotated */
  Image im;
  /* oriented minimum 8 (h) x 5 (w): the stored image must keep w >= 8 and
   * h >= 5: 1/2 (8x6); read the wrong way round it would not shrink */
  REQUIRE(image_decode_reduced(jpg, len, 3, 8, 5, &im) == 0);
  CHECK_MSG(im.h == 8 && im.w == 6, "%dx%d", im.w, im.h);
  image_free(&im);
  free(jpg);
  /* a 640x480 JPEG */
  Image big = {480, 640, 3, calloc(640 * 480, 3)};
  REQUIRE(big.px != NULL);
  for (int i = 0; i < 640 * 480 * 3; i++) big.px[i] = (uint8_t)(i * 7 / 640);
  uint8_t *buf;
  REQUIRE(image_encode_jpeg(&big, 90, &buf, &len) == 0);
  free(big.px);
  const struct {
    int min_h, min_w, h, w;
  } cases[] = {
      {100, 100, 120, 160}, /* 1/4 (1/8 would give 60x80) */
      {120, 160, 120, 160}, /* exactly 1/4 */
      {121, 100, 180, 240}, /* 3/8 */
      {240, 320, 240, 320}, /* 1/2 */
      {241, 100, 480, 640}, /* more than half: full size */
      {0, 0, 480, 640},     /* no minimum: full size */
      {1, 1, 60, 80},       /* 1/8, the smallest */
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    REQUIRE(image_decode_reduced(buf, len, 3, cases[k].min_h, cases[k].min_w, &im) == 0);
    CHECK_MSG(im.h == cases[k].h && im.w == cases[k].w, "min %dx%d: got %dx%d, want %dx%d",
              cases[k].min_h, cases[k].min_w, im.h, im.w, cases[k].h, cases[k].w);
    image_free(&im);
  }
  REQUIRE(image_probe(buf, len, 1, &h, &w, &c) == 0);
  CHECK(h == 480 && w == 640 && c == 1);
  /* a header-only probe accepts a file cut after its header; decode warns */
  REQUIRE(image_probe(buf, len / 2, 3, &h, &w, NULL) == 0);
  REQUIRE(image_decode(buf, len / 2, 3, &im) == 0);
  CHECK(strstr(image_decode_warning(), "Premature end") != NULL);
  image_free(&im);
  free(buf);
  /* PNGs are never reduced; what decode refuses, probe refuses */
  uint8_t *png = read_all("tests/data/images/grey1.png", &len);
  REQUIRE(png != NULL);
  Image full;
  REQUIRE(image_decode(png, len, 3, &full) == 0);
  REQUIRE(image_decode_reduced(png, len, 3, 1, 1, &im) == 0);
  CHECK(im.h == full.h && im.w == full.w && !memcmp(im.px, full.px, (size_t)im.h * im.w * 3));
  REQUIRE(image_probe(png, len, 0, &h, &w, &c) == 0);
  CHECK(h == full.h && w == full.w && c == 1);
  image_free(&im);
  image_free(&full);
  free(png);
  uint8_t *gif = read_all("tests/data/images/gif_named.jpg", &len);
  REQUIRE(gif != NULL);
  CHECK(image_probe(gif, len, 3, &h, &w, &c) != 0 && strstr(moka_error(), "GIF"));
  free(gif);
  CHECK(image_probe((const uint8_t *)"", 0, 3, &h, &w, &c) != 0 && strstr(moka_error(), "empty"));
}

static void test_encode_roundtrip(void) {
  Image im, back;
  REQUIRE(image_read_file(shared_path("golden/lmdb/images/img5.jpg"), 3, &im) == 0);
  uint8_t *buf;
  size_t len;
  REQUIRE(image_encode_png(&im, &buf, &len) == 0);
  CHECK(image_sniff(buf, len) == IMG_PNG);
  REQUIRE(image_decode(buf, len, 3, &back) == 0);
  CHECK(back.h == im.h && back.w == im.w && memcmp(back.px, im.px, (size_t)im.h * im.w * 3) == 0);
  free(buf);
  image_free(&back);
  image_free(&im);
  /* JPEG q95 of a real photo: small error (OpenCV's own round trip of this
   * file gives 0.505; the byte-exact match with cv2.imencode is checked in
   * test_opencv_expectations). */
  REQUIRE(image_read_file(shared_path("datasets/hymenoptera/ants/0013035.jpg"), 3, &im) == 0);
  REQUIRE(image_encode_jpeg(&im, 95, &buf, &len) == 0);
  CHECK(image_sniff(buf, len) == IMG_JPEG);
  REQUIRE(image_decode(buf, len, 3, &back) == 0);
  CHECK(back.h == im.h && back.w == im.w);
  double err = 0;
  for (size_t i = 0; i < (size_t)im.h * im.w * 3; i++) err += abs((int)back.px[i] - (int)im.px[i]);
  err /= (double)im.h * im.w * 3;
  CHECK_MSG(err < 0.6, "mean abs error after JPEG q95 round trip: %g", err);
  free(buf);
  image_free(&back);
  image_free(&im);
}

int main(void) {
  RUN(test_sniff);
  RUN(test_opencv_expectations);
  RUN(test_truncated_jpeg_warns);
  RUN(test_size_limits);
  RUN(test_bad_arguments);
  RUN(test_resize_golden);
  RUN(test_resize_matches_caffe_lmdb);
  RUN(test_encode_roundtrip);
  RUN(test_probe_and_reduced_decode);
  RUN(test_hymenoptera_all);
  return test_summary();
}
