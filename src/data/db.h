/* db.h — LMDB environments as Caffe uses them (src/caffe/util/db_lmdb.cpp):
 * a reader that walks the records in key order and starts again at the
 * first one after the last (the Data layer's wrap-around), and a writer that
 * commits in batches of 1000 records and doubles the map size whenever LMDB
 * reports MDB_MAP_FULL.
 *
 * Readers open the environment with MDB_RDONLY | MDB_NOLOCK: nothing is
 * written next to data.mdb (so read-only folders such as ../shared work),
 * which is safe as long as nobody writes the database at the same time.
 * LevelDB is not supported.
 */
#ifndef MOKA_DB_H
#define MOKA_DB_H

#include <stddef.h>

typedef struct DbReader DbReader;
typedef struct DbWriter DbWriter;

/* Open `path` (a folder holding data.mdb) and position the cursor at the
 * first record. An empty database is an error. */
int db_reader_open(const char *path, DbReader **out);
void db_reader_close(DbReader *r);
/* Number of records. */
size_t db_reader_count(const DbReader *r);
/* The current record; the pointers stay valid until the reader moves or
 * closes. */
void db_reader_current(const DbReader *r, const void **key, size_t *key_len, const void **val,
                       size_t *val_len);
/* The current key as a printable string (for messages; static buffer per
 * thread). */
const char *db_reader_key_str(const DbReader *r);
/* Move to the next record; after the last one, back to the first
 * (*wrapped = 1 then; wrapped may be NULL). */
int db_reader_next(DbReader *r, int *wrapped);
int db_reader_seek_first(DbReader *r);
/* Position the cursor at record `index` (0-based, key order) modulo the
 * count: O(index) cursor steps. */
int db_reader_seek_index(DbReader *r, size_t index);
const char *db_reader_path(const DbReader *r);

/* Create a new database folder `path` (it must not exist yet: Caffe's
 * db::NEW refuses an existing one too). The map starts at LMDB's default
 * size (10 MiB) and doubles on MDB_MAP_FULL; the environment variable
 * MOKA_LMDB_MAP_SIZE (bytes) sets another start, which tests use to make the
 * growth path run on small data. */
int db_writer_open(const char *path, DbWriter **out);
/* Queue one record; every 1000 queued records are committed in one
 * transaction. Keys must be unique. */
int db_writer_put(DbWriter *w, const void *key, size_t key_len, const void *val, size_t val_len);
/* Commit what is queued. */
int db_writer_commit(DbWriter *w);
/* Commit what is queued and close; returns the commit's status. NULL is a
 * no-op. */
int db_writer_close(DbWriter *w);
/* Close without committing what is queued (after an error). */
void db_writer_abort(DbWriter *w);

#endif
