/* db.c — LMDB reader and writer (see db.h). */
#include "data/db.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "util.h"

struct DbReader {
  char *path;
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_cursor *cur;
  MDB_val key, val; /* current record */
  size_t count;
};

static int lmdb_error(const char *what, const char *path, int rc) {
  return moka_errorf("LMDB '%s': %s: %s", path, what, mdb_strerror(rc));
}

int db_reader_open(const char *path, DbReader **out) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0)
    return moka_errorf("LMDB '%s': %s", path, strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return moka_errorf("LMDB '%s': not a folder (an LMDB database is a folder holding data.mdb)",
                       path);
  DbReader *r = moka_calloc(1, sizeof *r);
  if (!r) return -1;
  r->path = moka_strdup(path);
  int rc;
  if (!r->path) goto fail;
  if ((rc = mdb_env_create(&r->env)) != 0) {
    lmdb_error("cannot create the environment", path, rc);
    goto fail;
  }
  if ((rc = mdb_env_open(r->env, path, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0664)) != 0) {
    lmdb_error("cannot open", path, rc);
    goto fail;
  }
  if ((rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, &r->txn)) != 0) {
    lmdb_error("cannot begin a read transaction", path, rc);
    goto fail;
  }
  if ((rc = mdb_dbi_open(r->txn, NULL, 0, &r->dbi)) != 0) {
    lmdb_error("cannot open the database", path, rc);
    goto fail;
  }
  MDB_stat ms;
  if ((rc = mdb_stat(r->txn, r->dbi, &ms)) != 0) {
    lmdb_error("cannot read its statistics", path, rc);
    goto fail;
  }
  r->count = ms.ms_entries;
  if ((rc = mdb_cursor_open(r->txn, r->dbi, &r->cur)) != 0) {
    lmdb_error("cannot open a cursor", path, rc);
    goto fail;
  }
  if (r->count == 0) {
    moka_errorf("LMDB '%s': the database is empty", path);
    goto fail;
  }
  if (db_reader_seek_first(r) != 0) goto fail;
  *out = r;
  return 0;
fail:
  db_reader_close(r);
  return -1;
}

void db_reader_close(DbReader *r) {
  if (!r) return;
  if (r->cur) mdb_cursor_close(r->cur);
  if (r->txn) mdb_txn_abort(r->txn);
  if (r->env) mdb_env_close(r->env);
  free(r->path);
  free(r);
}

size_t db_reader_count(const DbReader *r) { return r->count; }
const char *db_reader_path(const DbReader *r) { return r->path; }

void db_reader_current(const DbReader *r, const void **key, size_t *key_len, const void **val,
                       size_t *val_len) {
  if (key) *key = r->key.mv_data;
  if (key_len) *key_len = r->key.mv_size;
  if (val) *val = r->val.mv_data;
  if (val_len) *val_len = r->val.mv_size;
}

const char *db_reader_key_str(const DbReader *r) {
  static _Thread_local char buf[256];
  size_t n = r->key.mv_size < sizeof buf - 1 ? r->key.mv_size : sizeof buf - 1;
  const unsigned char *k = r->key.mv_data;
  for (size_t i = 0; i < n; i++) buf[i] = (k[i] >= 32 && k[i] < 127) ? (char)k[i] : '?';
  buf[n] = 0;
  return buf;
}

int db_reader_seek_first(DbReader *r) {
  int rc = mdb_cursor_get(r->cur, &r->key, &r->val, MDB_FIRST);
  if (rc != 0) return lmdb_error("cannot read the first record", r->path, rc);
  return 0;
}

int db_reader_seek_index(DbReader *r, size_t index) {
  if (db_reader_seek_first(r) != 0) return -1;
  index %= r->count;
  for (size_t i = 0; i < index; i++)
    if (db_reader_next(r, NULL) != 0) return -1;
  return 0;
}

int db_reader_next(DbReader *r, int *wrapped) {
  if (wrapped) *wrapped = 0;
  int rc = mdb_cursor_get(r->cur, &r->key, &r->val, MDB_NEXT);
  if (rc == MDB_NOTFOUND) {
    if (wrapped) *wrapped = 1;
    return db_reader_seek_first(r);
  }
  if (rc != 0) return lmdb_error("cannot read the next record", r->path, rc);
  return 0;
}

/* ---- writer ---------------------------------------------------------------- */

enum { DB_COMMIT_EVERY = 1000 };

struct DbWriter {
  char *path;
  MDB_env *env;
  /* queued records (Caffe's LMDBTransaction keeps them in memory too, so
   * that a commit can be replayed after growing the map) */
  int n;
  char *keys[DB_COMMIT_EVERY];
  size_t key_len[DB_COMMIT_EVERY];
  char *vals[DB_COMMIT_EVERY];
  size_t val_len[DB_COMMIT_EVERY];
};

int db_writer_open(const char *path, DbWriter **out) {
  *out = NULL;
  if (mkdir(path, 0744) != 0) {
    if (errno == EEXIST)
      return moka_errorf("LMDB '%s' already exists: remove it or choose another name", path);
    return moka_errorf("LMDB '%s': cannot create the folder: %s", path, strerror(errno));
  }
  DbWriter *w = moka_calloc(1, sizeof *w);
  if (!w) return -1;
  w->path = moka_strdup(path);
  int rc;
  if (!w->path) goto fail;
  if ((rc = mdb_env_create(&w->env)) != 0) {
    lmdb_error("cannot create the environment", path, rc);
    goto fail;
  }
  const char *ms = getenv("MOKA_LMDB_MAP_SIZE");
  if (ms && *ms) {
    char *end;
    unsigned long long v = strtoull(ms, &end, 10);
    if (*end || v < 4096) {
      moka_errorf("MOKA_LMDB_MAP_SIZE='%s': expected a number of bytes (at least 4096)", ms);
      goto fail;
    }
    if ((rc = mdb_env_set_mapsize(w->env, (size_t)v)) != 0) {
      lmdb_error("cannot set the map size", path, rc);
      goto fail;
    }
  }
  if ((rc = mdb_env_open(w->env, path, 0, 0664)) != 0) {
    lmdb_error("cannot open", path, rc);
    goto fail;
  }
  *out = w;
  return 0;
fail:
  if (w->env) mdb_env_close(w->env);
  free(w->path);
  free(w);
  return -1;
}

static void writer_drop_queue(DbWriter *w) {
  for (int i = 0; i < w->n; i++) {
    free(w->keys[i]);
    free(w->vals[i]);
  }
  w->n = 0;
}

/* Caffe's LMDB::DoubleMapSize. */
static int writer_grow_map(DbWriter *w) {
  MDB_envinfo info;
  int rc = mdb_env_info(w->env, &info);
  if (rc == 0) rc = mdb_env_set_mapsize(w->env, info.me_mapsize * 2);
  if (rc != 0) return lmdb_error("cannot grow the map", w->path, rc);
  return 0;
}

int db_writer_commit(DbWriter *w) {
  for (;;) {
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
    if (rc != 0) return lmdb_error("cannot begin a write transaction", w->path, rc);
    rc = mdb_dbi_open(txn, NULL, 0, &dbi);
    for (int i = 0; rc == 0 && i < w->n; i++) {
      MDB_val k = {w->key_len[i], w->keys[i]}, v = {w->val_len[i], w->vals[i]};
      rc = mdb_put(txn, dbi, &k, &v, 0);
    }
    if (rc == 0) rc = mdb_txn_commit(txn);
    else mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL) {
      if (writer_grow_map(w) != 0) return -1;
      continue; /* replay the whole batch */
    }
    if (rc != 0) return lmdb_error("cannot write", w->path, rc);
    writer_drop_queue(w);
    return 0;
  }
}

int db_writer_put(DbWriter *w, const void *key, size_t key_len, const void *val, size_t val_len) {
  if (w->n == DB_COMMIT_EVERY) /* an earlier commit failed */
    return moka_errorf("LMDB '%s': cannot queue more records after a failed commit", w->path);
  char *k = moka_malloc(key_len), *v = moka_malloc(val_len);
  if (!k || !v) {
    free(k);
    free(v);
    return -1;
  }
  memcpy(k, key, key_len);
  if (val_len) memcpy(v, val, val_len);
  w->keys[w->n] = k;
  w->key_len[w->n] = key_len;
  w->vals[w->n] = v;
  w->val_len[w->n] = val_len;
  w->n++;
  if (w->n == DB_COMMIT_EVERY) return db_writer_commit(w);
  return 0;
}

int db_writer_close(DbWriter *w) {
  if (!w) return 0;
  int rc = w->n ? db_writer_commit(w) : 0;
  db_writer_abort(w);
  return rc;
}

void db_writer_abort(DbWriter *w) {
  if (!w) return;
  writer_drop_queue(w);
  mdb_env_close(w->env);
  free(w->path);
  free(w);
}
