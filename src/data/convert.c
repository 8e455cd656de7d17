/* convert.c — Caffe's convert_imageset and compute_image_mean (see
 * convert.h). */
#include "data/convert.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/datum.h"
#include "data/db.h"
#include "data/listfile.h"
#include "data/prefetch.h"
#include "image.h"
#include "proto_io.h"
#include "rng.h"
#include "util.h"

static void lower(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

/* Caffe's matchExt: the file's extension (lowercased) equals the encoding,
 * or is "jpeg" for "jpg". */
static bool match_ext(const char *file, const char *enc) {
  const char *dot = strrchr(file, '.');
  char ext[32];
  snprintf(ext, sizeof ext, "%s", dot ? dot + 1 : file);
  lower(ext);
  return !strcmp(ext, enc) || (!strcmp(enc, "jpg") && !strcmp(ext, "jpeg"));
}

static bool supported_encoding(const char *enc) {
  return !strcmp(enc, "jpg") || !strcmp(enc, "jpeg") || !strcmp(enc, "png");
}

/* ---- one listed file -> one packed Datum (run by several threads) ---------- */

typedef struct Job {
  int status;       /* 0 ok, 1 skipped (why), -1 the conversion must stop (why) */
  char *why;        /* malloc'd */
  char *warning;    /* malloc'd: a decode warning (the record is kept) */
  uint8_t *val;     /* the packed Datum */
  size_t vlen;
  size_t data_len;  /* bytes of raw pixels (check_size) */
  size_t chw;       /* channels * height * width of a raw Datum */
} Job;

static void job_clear(Job *j) {
  free(j->why);
  free(j->warning);
  free(j->val);
  memset(j, 0, sizeof *j);
}

static void job_set(Job *j, int status, const char *msg) {
  j->status = status;
  free(j->why);
  j->why = strdup(msg ? msg : "?");
}

/* Fill d for one file. Returns 0, -1 on an error that stops the
 * conversion, or 1 when the file is to be skipped (the reason in
 * moka_error()). `enc` is the encoding (NULL: raw). */
static int make_datum(const ConvertOptions *o, const char *file, const char *path, int label,
                      const char *enc, Caffe__Datum *d, char **warning) {
  uint8_t *bytes = NULL;
  size_t len = 0;
  Image im = {0}, rs = {0};
  int rc = 1;
  if (moka_read_file(path, &bytes, &len) != 0) {
    /* (moka_read_file names the path; keep only the reason) */
    char reason[1024];
    const char *colon = strstr(moka_error(), "': ");
    snprintf(reason, sizeof reason, "%s", colon ? colon + 3 : moka_error());
    moka_errorf("cannot read the file: %s", reason);
    return 1;
  }
  const bool resize = o->resize_height > 0 && o->resize_width > 0;
  const int channels = o->gray ? 1 : 3;
  /* Caffe's ReadImageToDatum stores the file itself when it is not resized
   * and its extension matches the encoding — after cv::imread decoded it. */
  const bool store_file = enc && !resize && match_ext(file, enc);
  if (store_file && o->header_check_only) {
    if (image_probe(bytes, len, channels, NULL, NULL, NULL) != 0) goto done;
    rc = datum_from_encoded(bytes, len, label, d) == 0 ? 0 : -1;
    goto done;
  }
  int drc = resize && o->fast_resize
                ? image_decode_reduced(bytes, len, channels, o->resize_height, o->resize_width, &im)
                : image_decode(bytes, len, channels, &im);
  if (drc != 0) goto done;
  if (image_decode_warning()[0]) *warning = strdup(image_decode_warning());
  const Image *use = &im;
  if (resize) {
    if (image_resize_bilinear(&im, o->resize_height, o->resize_width, &rs) != 0) goto done;
    use = &rs;
  }
  if (store_file) {
    rc = datum_from_encoded(bytes, len, label, d) == 0 ? 0 : -1;
    goto done;
  }
  if (enc) {
    if (!supported_encoding(enc)) {
      moka_errorf("cannot encode as '%s' (jpg or png; use --encode_type)", enc);
      goto done;
    }
    uint8_t *enc_bytes = NULL;
    size_t enc_len = 0;
    int erc = enc[0] == 'p' ? image_encode_png(use, &enc_bytes, &enc_len)
                            : image_encode_jpeg(use, 95, &enc_bytes, &enc_len);
    if (erc != 0) {
      rc = -1;
      goto done;
    }
    rc = datum_from_encoded(enc_bytes, enc_len, label, d) == 0 ? 0 : -1;
    free(enc_bytes);
    goto done;
  }
  rc = datum_from_image(use, label, d) == 0 ? 0 : -1;
done:
  free(bytes);
  image_free(&im);
  image_free(&rs);
  return rc;
}

/* The whole job of one list entry, thread-safe: everything it says goes
 * into j (the main thread logs, in list order). */
static void run_job(const ConvertOptions *o, const ListEntry *e, Job *j) {
  memset(j, 0, sizeof *j);
  const char *file = e->path;
  char enc_buf[64];
  const char *enc = NULL;
  if (o->encoded || (o->encode_type && o->encode_type[0])) {
    if (o->encode_type && o->encode_type[0]) {
      snprintf(enc_buf, sizeof enc_buf, "%s", o->encode_type);
    } else {
      const char *dot = strrchr(file, '.');
      if (!dot || strchr(dot, '/')) {
        job_set(j, 1, "cannot guess the encoding from a name without an extension (use "
                      "--encode_type)");
        return;
      }
      snprintf(enc_buf, sizeof enc_buf, "%s", dot + 1);
    }
    lower(enc_buf);
    enc = enc_buf;
  }
  size_t plen = strlen(o->root) + strlen(file) + 1;
  char *path = malloc(plen);
  if (!path) {
    job_set(j, -1, "out of memory");
    return;
  }
  snprintf(path, plen, "%s%s", o->root, file);
  Caffe__Datum d;
  caffe__datum__init(&d);
  int mrc = make_datum(o, file, path, e->label, enc, &d, &j->warning);
  free(path);
  if (mrc != 0) {
    job_set(j, mrc, moka_error());
    return;
  }
  j->data_len = d.data.len;
  j->chw = (size_t)d.channels * d.height * d.width;
  if (datum_pack(&d, &j->val, &j->vlen) != 0) job_set(j, -1, moka_error());
  datum_clear(&d);
}

/* Jobs start..start+cnt-1 run by `threads` threads (plain pthreads, joined
 * per chunk: the join is the only synchronisation the results need). */
typedef struct ChunkRun {
  const ConvertOptions *o;
  const ListEntry *lines;
  Job *jobs;
  int start, cnt;
  int next; /* next job to claim (atomic) */
} ChunkRun;

static void *chunk_worker(void *arg) {
  ChunkRun *c = arg;
  for (;;) {
    int k = __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED);
    if (k >= c->cnt) break;
    const ListEntry *e = &c->lines[c->start + k];
    if (e->path) run_job(c->o, e, &c->jobs[k]);
  }
  return NULL;
}

static void run_chunk(ChunkRun *c, int threads) {
  pthread_t tid[64];
  int started = 0;
  for (int t = 1; t < threads && t < 64; t++)
    if (pthread_create(&tid[started], NULL, chunk_worker, c) == 0) started++;
  chunk_worker(c); /* this thread works too (alone, if no thread could start) */
  for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
}

/* ---- the report beside the database ------------------------------------------ */

typedef struct Text {
  char *buf;
  size_t len, cap;
  int oom;
} Text;

static void text_add(Text *t, const char *a, const char *b, const char *c) {
  size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 4096;
    while (cap < t->len + n + 1) cap *= 2;
    char *p = realloc(t->buf, cap);
    if (!p) {
      t->oom = 1;
      return;
    }
    t->buf = p;
    t->cap = cap;
  }
  t->len += (size_t)snprintf(t->buf + t->len, t->cap - t->len, "%s\t%s%s\n", a, b, c);
}

/* Remove a database folder we created (its files, then the folder). */
static void remove_db_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char p[4600];
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) < (int)sizeof p) unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

/* rename(2) that refuses to replace an existing `to`. */
static int rename_noreplace(const char *from, const char *to) {
#ifdef RENAME_NOREPLACE
  if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != ENOSYS && errno != EINVAL) return -1;
#endif
  struct stat st;
  if (lstat(to, &st) == 0) {
    errno = EEXIST;
    return -1;
  }
  return rename(from, to);
}

/* ---- convert_imageset ----------------------------------------------------------- */

int convert_imageset(const ConvertOptions *o, ConvertStats *stats) {
  ConvertStats st = {0};
  if (stats) *stats = st;
  const bool encoded = o->encoded || (o->encode_type && o->encode_type[0]);
  if (o->encode_type && o->encode_type[0]) {
    char enc[32];
    snprintf(enc, sizeof enc, "%s", o->encode_type);
    lower(enc);
    if (!supported_encoding(enc))
      return moka_errorf("convert_imageset: --encode_type=%s is not supported (jpg or png)",
                         o->encode_type);
  }
  if (o->check_size && encoded)
    return moka_errorf("convert_imageset: --check_size compares raw pixel sizes; it cannot be "
                       "used with --encoded");
  if (o->resize_height < 0 || o->resize_width < 0)
    LOG_WARN("negative resize sizes are treated as 0 (no resize), as Caffe does");
  /* the database's name without trailing slashes; it must not exist (Caffe's
   * db::NEW mkdir()s it and aborts when that fails) */
  char db[4096];
  if (snprintf(db, sizeof db, "%s", o->db) >= (int)sizeof db - 40)
    return moka_errorf("convert_imageset: database name too long");
  for (size_t k = strlen(db); k > 1 && db[k - 1] == '/'; k--) db[k - 1] = 0;
  struct stat sb;
  if (lstat(db, &sb) == 0)
    return moka_errorf("convert_imageset: the database '%s' already exists (Caffe refuses an "
                       "existing database too): remove it or choose another name",
                       db);
  ListEntry *lines;
  int n;
  if (list_file_read(o->list, &lines, &n) != 0) return moka_error_prefix("convert_imageset");
  list_file_check_paths(lines, n, o->root);
  st.lines = n;
  if (o->shuffle) {
    LOG_INFO("Shuffling data");
    Rng r;
    rng_seed(&r, o->shuffle_seed);
    list_shuffle(lines, n, &r);
  }
  LOG_INFO("A total of %d images.", n);
  if (o->encode_type && o->encode_type[0] && !o->encoded)
    LOG_INFO("encode_type specified, assuming encoded=true.");
  char tmp[4200], report[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp-%d", db, (int)getpid());
  snprintf(report, sizeof report, "%s.skipped.txt", db);
  const int threads = MOKA_MIN(64, o->threads > 0 ? o->threads : MOKA_MAX(1, prefetch_default_threads()));
  const int chunk = 32 * threads;
  Job *jobs = moka_calloc((size_t)chunk, sizeof *jobs);
  Text rep = {0};
  DbWriter *w = NULL;
  int rc = -1, tmp_made = 0;
  size_t want_size = 0;
  if (!jobs) goto done;
  if (db_writer_open(tmp, &w) != 0) goto done;
  tmp_made = 1;
  for (int start = 0; start < n; start += chunk) {
    const int cnt = MOKA_MIN(chunk, n - start);
    /* decode, resize and encode in parallel; write in list order */
    ChunkRun run = {o, lines, jobs, start, cnt, 0};
    run_chunk(&run, threads);
    for (int k = 0; k < cnt; k++) {
      const int i = start + k;
      const ListEntry *e = &lines[i];
      Job *j = &jobs[k];
      char where[600];
      if (!e->path && !e->error) { /* blank line: nothing, as no record */
        st.blank++;
        continue;
      }
      if (e->error) {
        snprintf(where, sizeof where, "%s:%d", o->list, e->line);
        LOG_WARN("skipping line %d of %s: malformed: %s: '%s'", e->line, o->list, e->error,
                 e->text);
        char why[700];
        snprintf(why, sizeof why, "malformed list line: %s: '%.500s'", e->error, e->text);
        text_add(&rep, where, why, "");
        st.skipped++;
        continue;
      }
      snprintf(where, sizeof where, "%s%s", o->root, e->path);
      if (j->status < 0) {
        moka_errorf("convert_imageset: %s: %s", where, j->why);
        goto done;
      }
      if (j->status > 0) {
        LOG_WARN("skipping %s: %s", where, j->why);
        text_add(&rep, where, j->why, "");
        st.skipped++;
        job_clear(j);
        continue;
      }
      if (j->warning) {
        LOG_WARN("%s: %s (accepted, as OpenCV does)", where, j->warning);
        text_add(&rep, where, "warning: ", j->warning);
        st.warnings++;
      }
      if (o->check_size) {
        if (st.written == 0) {
          want_size = j->chw;
        } else if (j->data_len != want_size) {
          moka_errorf("convert_imageset: --check_size: %s has %zu bytes of pixels, the first "
                      "record %zu (use --resize_height/--resize_width)",
                      where, j->data_len, want_size);
          goto done;
        }
      }
      char key[4200];
      int kn = snprintf(key, sizeof key, "%08d_%s", i, e->path);
      if (kn >= (int)sizeof key) {
        moka_errorf("convert_imageset: %s: the path is too long for a key", where);
        goto done;
      }
      if (db_writer_put(w, key, (size_t)kn, j->val, j->vlen) != 0) goto done;
      job_clear(j);
      if (++st.written % 1000 == 0) LOG_INFO("Processed %d files.", st.written);
    }
    for (int k = 0; k < cnt; k++) job_clear(&jobs[k]);
  }
  if (rep.oom) {
    moka_errorf("convert_imageset: out of memory for the list of skipped files");
    goto done;
  }
  {
    int crc = db_writer_close(w);
    w = NULL;
    if (crc != 0) goto done;
  }
  if (st.written % 1000 != 0) LOG_INFO("Processed %d files.", st.written);
  if (rename_noreplace(tmp, db) != 0) {
    moka_errorf("convert_imageset: cannot rename '%s' to '%s': %s", tmp, db, strerror(errno));
    goto done;
  }
  tmp_made = 0;
  if (moka_write_file_atomic(report, rep.buf ? rep.buf : "", rep.len) != 0) {
    moka_error_prefix("convert_imageset: the database '%s' is complete, but the list of skipped "
                      "files could not be written",
                      db);
    goto done;
  }
  char warn[64] = "";
  if (st.warnings) snprintf(warn, sizeof warn, ", %d with warnings", st.warnings);
  if (st.skipped || st.warnings)
    LOG_WARN("converted %d, skipped %d%s (see %s)", st.written, st.skipped, warn, report);
  else
    LOG_INFO("converted %d, skipped 0", st.written);
  rc = 0;
done:
  if (w) db_writer_abort(w);
  if (tmp_made) remove_db_dir(tmp); /* nothing that looks like a finished database stays */
  if (jobs)
    for (int k = 0; k < chunk; k++) job_clear(&jobs[k]);
  free(jobs);
  free(rep.buf);
  list_file_free(lines, n);
  if (stats) *stats = st;
  return rc;
}

int compute_image_mean(const char *db, const char *out_file, float *channel_means,
                       int max_channels, int *channels) {
  DbReader *r;
  if (channels) *channels = 0;
  if (db_reader_open(db, &r) != 0) return -1;
  DatumPixels px = {0};
  float *sum = NULL; /* (C,H,W), accumulated in float like Caffe's BlobProto */
  int C = 0, H = 0, W = 0, rc = -1;
  size_t count = 0, dim = 0;
  const size_t total = db_reader_count(r);
  for (size_t k = 0; k < total; k++) {
    const void *v;
    size_t vlen;
    db_reader_current(r, NULL, NULL, &v, &vlen);
    char what[320];
    snprintf(what, sizeof what, "LMDB '%s', record '%s'", db, db_reader_key_str(r));
    Caffe__Datum *d;
    if (datum_unpack(v, vlen, what, &d) != 0) goto done;
    int drc = datum_decode(d, 0, what, &px);
    if (k == 0 && drc == 0 && d->encoded) LOG_INFO("Decoding Datum");
    caffe__datum__free_unpacked(d, NULL);
    if (drc != 0) goto done;
    if (k == 0) {
      C = px.c, H = px.h, W = px.w;
      dim = (size_t)C * H * W;
      sum = moka_calloc(dim, sizeof(float));
      if (!sum) goto done;
      LOG_INFO("Starting iteration");
    } else if (px.c != C || px.h != H || px.w != W) {
      moka_errorf("%s: %dx%dx%d (CxHxW), but the first record is %dx%dx%d: all images must have "
                  "the same size (convert with --resize_height/--resize_width)",
                  what, px.c, px.h, px.w, C, H, W);
      goto done;
    }
    for (size_t i = 0; i < dim; i++) sum[i] = sum[i] + px.data[i];
    if (++count % 10000 == 0) LOG_INFO("Processed %zu files.", count);
    if (db_reader_next(r, NULL) != 0) goto done;
  }
  if (count % 10000 != 0) LOG_INFO("Processed %zu files.", count);
  for (size_t i = 0; i < dim; i++) sum[i] = sum[i] / (float)count;
  if (out_file) {
    LOG_INFO("Write to %s", out_file);
    Caffe__BlobProto bp;
    caffe__blob_proto__init(&bp);
    bp.has_num = bp.has_channels = bp.has_height = bp.has_width = 1;
    bp.num = 1;
    bp.channels = C;
    bp.height = H;
    bp.width = W;
    bp.n_data = dim;
    bp.data = sum;
    if (proto_write_binary(&bp.base, out_file) != 0) goto done;
  }
  LOG_INFO("Number of channels: %d", C);
  const size_t hw = (size_t)H * W;
  for (int c = 0; c < C; c++) {
    float m = 0.0f;
    for (size_t i = 0; i < hw; i++) m += sum[c * hw + i];
    LOG_INFO("mean_value channel [%d]: %g", c, (double)(m / (float)hw));
    if (channel_means && c < max_channels) channel_means[c] = m / (float)hw;
  }
  if (channels) *channels = C;
  rc = 0;
done:
  free(sum);
  datum_pixels_free(&px);
  db_reader_close(r);
  return rc;
}
