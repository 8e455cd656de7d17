/* test_data_convert.c — convert_imageset on bad input (src/data/convert.c):
 * broken files the test makes itself (zero bytes, truncated, text, PNG and
 * GIF named .jpg, CMYK, grey, a folder, a missing file, JPEG/PNG headers
 * declaring 60000x60000), malformed list lines, the report beside the
 * database, the summary line, the temporary folder, map growth, thread
 * independence, --check_decodable=false and --fast_resize; then
 * ../shared/datasets/hymenoptera end to end (list -> convert_imageset ->
 * compute_image_mean -> Data layer).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/convert.h"
#include "data/data_layer.h"
#include "data/datum.h"
#include "data/db.h"
#include "image.h"
#include "imagetest.h"
#include "layer.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

/* ---- helpers -------------------------------------------------------------------- */

static int write_bytes(const char *path, const void *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = n ? fwrite(d, 1, n, f) : 0;
  fclose(f);
  return w == n ? 0 : -1;
}

static int copy_file(const char *from, const char *to) {
  size_t n;
  uint8_t *d = read_all(from, &n);
  if (!d) return -1;
  int rc = write_bytes(to, d, n);
  free(d);
  return rc;
}

/* rm -r of the small trees these tests make (two levels). */
static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    unlink(dir);
    return;
  }
  struct dirent *e;
  char p[2048];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rm_tree(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static int exists(const char *p) {
  struct stat st;
  return lstat(p, &st) == 0;
}

/* Names in `dir` starting with `prefix`. */
static int count_prefixed(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return n;
}

/* Run convert_imageset with the log captured into *log (malloc'd). */
static int convert_logged(const ConvertOptions *o, ConvertStats *st, char **log) {
  FILE *f = tmpfile();
  FILE *old = moka_set_log_stream(f);
  moka_set_log_level(0);
  int rc = convert_imageset(o, st);
  moka_set_log_level(2);
  moka_set_log_stream(old);
  long n = ftell(f);
  *log = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
  rewind(f);
  if (n > 0 && fread(*log, 1, (size_t)n, f) != (size_t)n) (*log)[0] = 0;
  fclose(f);
  return rc;
}

static int count_str(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

/* ---- the bad-input folder ----------------------------------------------------------- */

typedef struct Case {
  const char *name;   /* file in the folder */
  const char *reason; /* NULL: stored; else a word of the skip reason */
} Case;

/* The files, in list order (line k+1 = Case k, except the malformed lines
 * appended after them). */
static const Case CASES[] = {
    {"colour.jpg", NULL},
    {"zero.jpg", "empty file"},
    {"cut_header.jpg", "header"},
    {"cut_data.jpg", NULL}, /* accepted with a warning, as OpenCV does */
    {"text.jpg", "not a JPEG or PNG"},
    {"png named.jpg", NULL},
    {"gif.jpg", "GIF"},
    {"huge.jpg", "too large"},
    {"huge.png", "too large"},
    {"cmyk.jpg", NULL},
    {"grey.jpg", NULL},
    {"a_folder.jpg", "directory"},
    {"missing.jpg", "No such file"},
};
enum { N_CASES = sizeof CASES / sizeof CASES[0] };
static const char *BAD_LINES[] = {"nolabel.jpg", "colour.jpg abc", " 5", "",
                                  "colour.jpg 99999999999"};
static const char *BAD_WHY[] = {"missing label", "not an integer", "empty path", NULL,
                                "out of range"};

static int make_bad_folder(const char *dir, char *list, size_t list_len) {
  char p[1200];
  const char *src = "tests/data/images/";
  struct {
    const char *from, *to;
  } copies[] = {{"colour.jpg", "colour.jpg"},     {"truncated.jpg", "cut_data.jpg"},
                {"png_named.jpg", "png named.jpg"}, {"gif_named.jpg", "gif.jpg"},
                {"cmyk_ycck.jpg", "cmyk.jpg"},     {"grey.jpg", "grey.jpg"}};
  for (size_t i = 0; i < MOKA_ARRAY_LEN(copies); i++) {
    char from[512];
    snprintf(from, sizeof from, "%s%s", src, copies[i].from);
    snprintf(p, sizeof p, "%s/%s", dir, copies[i].to);
    if (copy_file(from, p) != 0) return -1;
  }
  snprintf(p, sizeof p, "%s/zero.jpg", dir);
  if (write_bytes(p, "", 0) != 0) return -1;
  snprintf(p, sizeof p, "%s/text.jpg", dir);
  if (write_bytes(p, "hello, not an image\n", 20) != 0) return -1;
  size_t len;
  uint8_t *jpg = read_all("tests/data/images/colour.jpg", &len);
  if (!jpg) return -1;
  snprintf(p, sizeof p, "%s/cut_header.jpg", dir);
  if (write_bytes(p, jpg, 100) != 0) return -1; /* inside the quantisation tables */
  const size_t sof = jpeg_sof0(jpg, len);
  if (!sof) return -1;
  jpeg_set_size(jpg, sof, 60000, 60000);
  snprintf(p, sizeof p, "%s/huge.jpg", dir);
  if (write_bytes(p, jpg, len) != 0) return -1;
  free(jpg);
  uint8_t *png = read_all("tests/data/images/rgba.png", &len);
  if (!png) return -1;
  png_set_size(png, 60000, 60000);
  snprintf(p, sizeof p, "%s/huge.png", dir);
  if (write_bytes(p, png, len) != 0) return -1;
  free(png);
  snprintf(p, sizeof p, "%s/a_folder.jpg", dir);
  if (mkdir(p, 0755) != 0) return -1;
  snprintf(list, list_len, "%s/list.txt", dir);
  FILE *f = fopen(list, "w");
  if (!f) return -1;
  for (int i = 0; i < N_CASES; i++) fprintf(f, "%s %d\n", CASES[i].name, i);
  for (size_t i = 0; i < MOKA_ARRAY_LEN(BAD_LINES); i++) fprintf(f, "%s\n", BAD_LINES[i]);
  fclose(f);
  return 0;
}

static void test_bad_inputs(void) {
  char dir[] = "/tmp/moka_test_bad_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char root[1100], list[1100], db[1100], report[1200];
  snprintf(root, sizeof root, "%s/", dir);
  REQUIRE(make_bad_folder(dir, list, sizeof list) == 0);
  snprintf(db, sizeof db, "%s/db", dir);
  snprintf(report, sizeof report, "%s.skipped.txt", db);
  /* a tiny map: the writer has to grow it (24 records of 12 KB > 16 KB) */
  setenv("MOKA_LMDB_MAP_SIZE", "16384", 1);
  ConvertOptions o = {0};
  o.root = root, o.list = list, o.db = db;
  o.resize_height = o.resize_width = 64;
  ConvertStats st;
  char *log;
  int rc = convert_logged(&o, &st, &log);
  unsetenv("MOKA_LMDB_MAP_SIZE");
  REQUIRE(rc == 0);
  int want_written = 0, want_skipped = 0;
  for (int i = 0; i < N_CASES; i++) {
    if (CASES[i].reason) want_skipped++;
    else want_written++;
  }
  want_skipped += 4; /* the malformed lines (the blank one is ignored) */
  CHECK_MSG(st.lines == N_CASES + 5 && st.written == want_written &&
                st.skipped == want_skipped && st.warnings == 1 && st.blank == 1,
            "lines %d written %d skipped %d warnings %d blank %d", st.lines, st.written,
            st.skipped, st.warnings, st.blank);
  /* one log line per skipped file / malformed line, then the summary */
  for (int i = 0; i < N_CASES; i++) {
    char needle[1300];
    snprintf(needle, sizeof needle, "skipping %s%s: ", root, CASES[i].name);
    int n = count_str(log, needle);
    CHECK_MSG(n == (CASES[i].reason ? 1 : 0), "%s: %d log lines", CASES[i].name, n);
  }
  for (size_t i = 0; i < MOKA_ARRAY_LEN(BAD_LINES); i++) {
    if (!BAD_WHY[i]) continue;
    char needle[1300];
    snprintf(needle, sizeof needle, "skipping line %d of %s: malformed: ", N_CASES + 1 + (int)i,
             list);
    CHECK_MSG(count_str(log, needle) == 1, "malformed line %d not reported once",
              N_CASES + 1 + (int)i);
  }
  char summary[1400];
  snprintf(summary, sizeof summary, "converted %d, skipped %d, 1 with warnings (see %s)",
           want_written, want_skipped, report);
  CHECK_MSG(count_str(log, summary) == 1, "no summary line '%s' in:\n%s", summary, log);
  free(log);
  /* the report: one "path<TAB>reason" line per skipped item, one warning line */
  size_t rlen;
  char *rep = (char *)read_all(report, &rlen);
  REQUIRE(rep != NULL);
  int lines = 0;
  for (size_t k = 0; k < rlen; k++) lines += rep[k] == '\n';
  CHECK_MSG(lines == want_skipped + 1, "%d report lines:\n%s", lines, rep);
  for (int i = 0; i < N_CASES; i++) {
    char needle[1300];
    snprintf(needle, sizeof needle, "%s%s\t", root, CASES[i].name);
    const char *hit = strstr(rep, needle);
    if (!strcmp(CASES[i].name, "cut_data.jpg")) {
      CHECK_MSG(hit && !strncmp(hit + strlen(needle), "warning: JPEG: Premature end of JPEG file\n",
                                42),
                "no warning line for cut_data.jpg:\n%s", rep);
    } else if (CASES[i].reason) {
      const char *eol = hit ? strchr(hit, '\n') : NULL;
      char reason[600] = "";
      if (hit && eol) snprintf(reason, sizeof reason, "%.*s", (int)(eol - hit), hit);
      CHECK_MSG(hit && strstr(reason, CASES[i].reason), "%s: report line '%s' (want '%s')",
                CASES[i].name, reason, CASES[i].reason);
    } else {
      CHECK_MSG(!hit, "%s is in the report", CASES[i].name);
    }
  }
  for (size_t i = 0; i < MOKA_ARRAY_LEN(BAD_LINES); i++) {
    char needle[1300];
    snprintf(needle, sizeof needle, "%s:%d\tmalformed list line: ", list, N_CASES + 1 + (int)i);
    const char *hit = strstr(rep, needle);
    if (BAD_WHY[i]) CHECK_MSG(hit && strstr(hit, BAD_WHY[i]), "line %d: %s", N_CASES + 1 + (int)i, rep);
    else CHECK(!hit);
  }
  free(rep);
  /* the records: keys numbered by line, the right labels, 3x64x64 BGR */
  DbReader *r;
  REQUIRE(db_reader_open(db, &r) == 0);
  CHECK(db_reader_count(r) == (size_t)want_written);
  for (int i = 0; i < N_CASES; i++) {
    if (CASES[i].reason) continue;
    char key[300];
    snprintf(key, sizeof key, "%08d_%s", i, CASES[i].name);
    const void *k, *v;
    size_t kl, vl;
    db_reader_current(r, &k, &kl, &v, &vl);
    CHECK_MSG(kl == strlen(key) && !memcmp(k, key, kl), "key %s, want %s", db_reader_key_str(r),
              key);
    Caffe__Datum *d;
    REQUIRE(datum_unpack(v, vl, key, &d) == 0);
    CHECK(d->label == i && d->channels == 3 && d->height == 64 && d->width == 64 &&
          d->data.len == 3 * 64 * 64 && !d->encoded);
    caffe__datum__free_unpacked(d, NULL);
    db_reader_next(r, NULL);
  }
  db_reader_close(r);
  /* the map had to grow past 16 KB; no temporary folder is left */
  char datafile[1200];
  snprintf(datafile, sizeof datafile, "%s/data.mdb", db);
  struct stat sb;
  CHECK(stat(datafile, &sb) == 0 && sb.st_size > 16384 * 4);
  CHECK(count_prefixed(dir, "db.tmp-") == 0);

  /* the database exists: a clear error, nothing touched */
  rc = convert_imageset(&o, &st);
  CHECK_MSG(rc != 0 && strstr(moka_error(), "already exists") && strstr(moka_error(), db), "%s",
            moka_error());
  CHECK(stat(datafile, &sb) == 0);

  /* a conversion that fails midway leaves no database and no temporary */
  char db2[1100];
  snprintf(db2, sizeof db2, "%s/db2", dir);
  ConvertOptions o2 = o;
  o2.db = db2;
  o2.resize_height = o2.resize_width = 0;
  o2.check_size = true; /* colour.jpg 16x12, then png named.jpg of another size */
  rc = convert_imageset(&o2, &st);
  CHECK_MSG(rc != 0 && strstr(moka_error(), "check_size"), "%s", moka_error());
  CHECK(!exists(db2) && count_prefixed(dir, "db2") == 0);

  /* any thread count gives the same database */
  char db3[1100];
  snprintf(db3, sizeof db3, "%s/db3", dir);
  o2 = o;
  o2.db = db3;
  o2.threads = 1;
  REQUIRE(convert_imageset(&o2, &st) == 0);
  DbReader *a, *b;
  REQUIRE(db_reader_open(db, &a) == 0);
  REQUIRE(db_reader_open(db3, &b) == 0);
  int same = db_reader_count(a) == db_reader_count(b);
  for (size_t k = 0; same && k < db_reader_count(a); k++) {
    const void *ka, *va, *kb, *vb;
    size_t kal, val, kbl, vbl;
    db_reader_current(a, &ka, &kal, &va, &val);
    db_reader_current(b, &kb, &kbl, &vb, &vbl);
    same &= kal == kbl && val == vbl && !memcmp(ka, kb, kal) && !memcmp(va, vb, val);
    db_reader_next(a, NULL);
    db_reader_next(b, NULL);
  }
  CHECK(same);
  db_reader_close(a);
  db_reader_close(b);

  /* --encoded, no resize, --check_decodable=false: only sniff + header; the
   * files are stored as they are (the one cut after its header too, without
   * a warning), the rest is still refused */
  char db4[1100];
  snprintf(db4, sizeof db4, "%s/db4", dir);
  o2 = o;
  o2.db = db4;
  o2.resize_height = o2.resize_width = 0;
  o2.encoded = true;
  o2.header_check_only = true;
  REQUIRE(convert_imageset(&o2, &st) == 0);
  CHECK_MSG(st.written == want_written && st.skipped == want_skipped && st.warnings == 0,
            "written %d skipped %d warnings %d", st.written, st.skipped, st.warnings);
  /* the same with the full check (the default): a warning for cut_data.jpg */
  char db5[1100];
  snprintf(db5, sizeof db5, "%s/db5", dir);
  o2.db = db5;
  o2.header_check_only = false;
  REQUIRE(convert_imageset(&o2, &st) == 0);
  CHECK(st.written == want_written && st.skipped == want_skipped && st.warnings == 1);
  rm_tree(dir);
}

/* --fast_resize: a large JPEG shrunk in the DCT domain, then resized: the
 * right size, close to the exact result on a smooth picture, but not equal
 * to it (that is why it is opt-in; on fine detail the two filters differ
 * much more: bilinear from full size aliases, the scaled IDCT does not). */
static void test_fast_resize(void) {
  char dir[] = "/tmp/moka_test_fast_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  enum { W = 640, H = 480 };
  Image big = {H, W, 3, malloc((size_t)W * H * 3)};
  REQUIRE(big.px != NULL);
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int c = 0; c < 3; c++)
        big.px[(y * W + x) * 3 + c] =
            (uint8_t)lrint(128 + 100 * sin(x / 37.0 + c) * cos(y / 29.0 - c));
  uint8_t *jpg;
  size_t len;
  REQUIRE(image_encode_jpeg(&big, 92, &jpg, &len) == 0);
  char p[1200], list[1200];
  snprintf(p, sizeof p, "%s/big.jpg", dir);
  REQUIRE(write_bytes(p, jpg, len) == 0);
  free(jpg);
  free(big.px);
  snprintf(list, sizeof list, "%s/list.txt", dir);
  REQUIRE(write_bytes(list, "big.jpg 1\n", 10) == 0);
  char root[1100], dbs[2][1100];
  snprintf(root, sizeof root, "%s/", dir);
  DatumPixels px[2] = {{0}, {0}};
  for (int fast = 0; fast < 2; fast++) {
    snprintf(dbs[fast], sizeof dbs[fast], "%s/db%d", dir, fast);
    ConvertOptions o = {0};
    o.root = root, o.list = list, o.db = dbs[fast];
    o.resize_height = 100, o.resize_width = 110;
    o.fast_resize = fast;
    ConvertStats st;
    REQUIRE(convert_imageset(&o, &st) == 0 && st.written == 1);
    DbReader *r;
    REQUIRE(db_reader_open(dbs[fast], &r) == 0);
    const void *v;
    size_t vl;
    db_reader_current(r, NULL, NULL, &v, &vl);
    Caffe__Datum *d;
    REQUIRE(datum_unpack(v, vl, "rec", &d) == 0);
    REQUIRE(datum_decode(d, 0, "rec", &px[fast]) == 0);
    caffe__datum__free_unpacked(d, NULL);
    db_reader_close(r);
  }
  CHECK(px[1].c == 3 && px[1].h == 100 && px[1].w == 110);
  double sad = 0;
  float maxd = 0;
  size_t n = (size_t)3 * 100 * 110;
  for (size_t i = 0; i < n; i++) {
    float d = fabsf(px[0].data[i] - px[1].data[i]);
    sad += d;
    maxd = fmaxf(maxd, d);
  }
  fprintf(stderr, "  fast_resize vs exact: mean |diff| %.2f, max %.0f\n", sad / n, (double)maxd);
  CHECK(maxd > 1);       /* not Caffe's pixels */
  CHECK(sad / n < 2.0);  /* but the same picture */
  datum_pixels_free(&px[0]);
  datum_pixels_free(&px[1]);
  rm_tree(dir);
}

/* ---- hymenoptera end to end ------------------------------------------------------------ */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "ants/<file> 0" and "bees/<file> 1" for every file, sorted. Returns the
 * number of lines. */
static int write_hymenoptera_list(const char *list) {
  FILE *f = fopen(list, "w");
  if (!f) return -1;
  const char *cls[2] = {"ants", "bees"};
  int total = 0;
  for (int c = 0; c < 2; c++) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", shared_path("datasets/hymenoptera"));
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", cls[c]);
    DIR *d = opendir(dir);
    if (!d) {
      fclose(f);
      return -1;
    }
    char *names[512];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 512)
      if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
      fprintf(f, "%s/%s %d\n", cls[c], names[i], c);
      free(names[i]);
    }
    total += n;
  }
  fclose(f);
  return total;
}

static void test_hymenoptera_end_to_end(void) {
  double t0 = moka_now();
  char dir[] = "/tmp/moka_test_hym_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char list[1100], db[1100], report[1200], mean[1100], root[1100];
  snprintf(list, sizeof list, "%s/list.txt", dir);
  snprintf(db, sizeof db, "%s/hym_lmdb", dir);
  snprintf(report, sizeof report, "%s.skipped.txt", db);
  snprintf(mean, sizeof mean, "%s/mean.binaryproto", dir);
  snprintf(root, sizeof root, "%s/", shared_path("datasets/hymenoptera"));
  REQUIRE(write_hymenoptera_list(list) == 398); /* the README: 194 ants + 204 bees */
  setenv("MOKA_LMDB_MAP_SIZE", "65536", 1);     /* and let the map grow on real data */
  ConvertOptions o = {0};
  o.root = root, o.list = list, o.db = db;
  o.resize_height = o.resize_width = 64;
  o.shuffle = false;
  ConvertStats st;
  int rc = convert_imageset(&o, &st);
  unsetenv("MOKA_LMDB_MAP_SIZE");
  REQUIRE(rc == 0);
  /* the README: 397 JPEGs (progressive, 4:4:0, 4:2:2, spaces and odd names
   * included) and one GIF named .gif, which must be skipped; nothing is
   * truncated, so no warnings */
  CHECK_MSG(st.lines == 398 && st.written == 397 && st.skipped == 1 && st.warnings == 0,
            "lines %d written %d skipped %d warnings %d", st.lines, st.written, st.skipped,
            st.warnings);
  size_t rlen;
  char *rep = (char *)read_all(report, &rlen);
  REQUIRE(rep != NULL);
  char want[1400];
  snprintf(want, sizeof want, "%sants/imageNotFound.gif\tGIF image: not supported", root);
  CHECK_MSG(!strncmp(rep, want, strlen(want)) && count_str(rep, "\n") == 1, "report:\n%s", rep);
  free(rep);
  /* every record: label from its folder, 3x64x64; the odd files are there */
  const char *odd[] = {"ants/ant photos.jpg", "ants/formica.jpeg", "ants/F.pergan.28(f).jpg",
                       "ants/Nepenthes_rafflesiana_ant.jpg",
                       "ants/ants-devouring-remains-of-large-dead-insect-on-red-tile-in-"
                       "Stellenbosch-South-Africa-closeup-1-DHD.jpg",
                       "bees/6a00d8341c630a53ef00e553d0beb18834-800wi.jpg"};
  int odd_seen[6] = {0};
  DbReader *r;
  REQUIRE(db_reader_open(db, &r) == 0);
  CHECK(db_reader_count(r) == 397);
  int labels_ok = 1, n_ants = 0;
  float *exp_labels = calloc(397, sizeof(float));
  double *sum = calloc(3 * 64 * 64, sizeof(double)); /* (3,64,64) */
  REQUIRE(exp_labels && sum);
  for (int k = 0; k < 397; k++) {
    const void *key, *v;
    size_t kl, vl;
    db_reader_current(r, &key, &kl, &v, &vl);
    const char *ks = db_reader_key_str(r);
    Caffe__Datum *d;
    REQUIRE(datum_unpack(v, vl, ks, &d) == 0);
    int is_bee = strncmp(ks + 9, "bees/", 5) == 0;
    labels_ok &= d->label == is_bee && d->channels == 3 && d->height == 64 && d->width == 64 &&
                 d->data.len == 12288;
    n_ants += !is_bee;
    exp_labels[k] = (float)is_bee;
    for (int i = 0; i < 6; i++) odd_seen[i] += !strcmp(ks + 9, odd[i]);
    for (int i = 0; i < 12288; i++) sum[i] += d->data.data[i];
    caffe__datum__free_unpacked(d, NULL);
    db_reader_next(r, NULL);
  }
  db_reader_close(r);
  CHECK(labels_ok && n_ants == 193);
  for (int i = 0; i < 6; i++) CHECK_MSG(odd_seen[i] == 1, "%s: %d records", odd[i], odd_seen[i]);
  /* compute_image_mean: 1x3x64x64, the per-pixel mean */
  float cm[3];
  int ch = 0;
  REQUIRE(compute_image_mean(db, mean, cm, 3, &ch) == 0);
  CHECK(ch == 3);
  Caffe__BlobProto *bp = NULL;
  size_t mlen;
  uint8_t *mb = read_all(mean, &mlen);
  REQUIRE(mb != NULL);
  bp = caffe__blob_proto__unpack(NULL, mlen, mb);
  free(mb);
  REQUIRE(bp != NULL);
  CHECK(bp->num == 1 && bp->channels == 3 && bp->height == 64 && bp->width == 64 &&
        bp->n_data == 12288);
  double maxrel = 0;
  for (int i = 0; i < 12288 && bp->n_data == 12288; i++)
    maxrel = fmax(maxrel, fabs(bp->data[i] - sum[i] / 397) / (sum[i] / 397 + 1));
  CHECK_MSG(maxrel < 1e-4, "mean differs from the records' mean by %g", maxrel);
  for (int c = 0; c < 3; c++) CHECK(cm[c] > 60 && cm[c] < 200);
  caffe__blob_proto__free_unpacked(bp, NULL);
  /* read it back through the Data layer: TEST, centre crop 56, the mean file */
  char text[3000];
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 32 backend: LMDB } "
           "transform_param { crop_size: 56 mean_file: '%s' scale: 0.0078125 }",
           db, mean);
  Caffe__LayerParameter *lp = NULL;
  REQUIRE(prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "t",
                         (ProtobufCMessage **)&lp) == 0);
  Blob *top[2] = {blob_new("data"), blob_new("label")};
  Rng rng;
  rng_seed(&rng, 1);
  Layer *l = layer_create(lp, MOKA_TEST, &rng, NULL, 0, top, 2);
  REQUIRE(l != NULL);
  int ok = 1;
  for (int f = 0; f < 2; f++) {
    REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    ok &= top[0]->shape[0] == 32 && top[0]->shape[1] == 3 && top[0]->shape[2] == 56 &&
          top[0]->shape[3] == 56 && !memcmp(top[1]->data, exp_labels + 32 * f, 32 * sizeof(float));
  }
  CHECK(ok);
  /* a batch across the ants/bees boundary, and the last one wrapping around */
  const int starts[2] = {180, 380};
  for (int s = 0; s < 2; s++) {
    REQUIRE(data_layer_seek(l, (uint64_t)starts[s]) == 0);
    REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    int lab_ok = 1;
    for (int i = 0; i < 32; i++) lab_ok &= top[1]->data[i] == exp_labels[(starts[s] + i) % 397];
    CHECK_MSG(lab_ok, "labels of the batch at record %d", starts[s]);
  }
  /* the values: (pixel - mean) / 128 stays within [-2, 2] */
  float lo = 0, hi = 0;
  for (size_t i = 0; i < top[0]->count; i++) {
    lo = fminf(lo, top[0]->data[i]);
    hi = fmaxf(hi, top[0]->data[i]);
  }
  CHECK(lo >= -2.0f && hi <= 2.0f && lo < -0.3f && hi > 0.3f);
  layer_free(l);
  blob_free(top[0]);
  blob_free(top[1]);
  protobuf_c_message_free_unpacked(&lp->base, NULL);
  free(exp_labels);
  free(sum);
  rm_tree(db);
  unlink(report);
  unlink(mean);
  unlink(list);
  rmdir(dir);
  fprintf(stderr, "  hymenoptera: 398 listed, %d converted, %d skipped; %.2f s end to end\n",
          st.written, st.skipped, moka_now() - t0);
}

int main(void) {
  moka_set_log_level(2);
  RUN(test_bad_inputs);
  RUN(test_fast_resize);
  RUN(test_hymenoptera_end_to_end);
  return test_summary();
}
