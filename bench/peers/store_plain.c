/*
 * store_plain.c: the peer of bench/store.sh. The same work as the oflua.store
 * bench (upserts of N key/value rows, then N lookups by key, then N upserts in
 * one transaction) on plain SQLite: same schema shape (a row id, namespace,
 * unique (namespace, key) index, key id, key and value blobs) and the same
 * pragmas (WAL, synchronous=NORMAL, busy timeout, secure_delete=FAST), but no
 * encryption and no blind index. Prints "put_per_s get_per_s txput_per_s".
 *
 *   store_plain PATH N VALUE_BYTES
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(sqlite3 *db, const char *what) {
  fprintf(stderr, "store_plain: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
  exit(1);
}

/* The same key sequence as the Lua side: conn:conn_<i * 7919 mod n, as hex>. */
static int key_of(char *buf, size_t cap, long i, long n) {
  return snprintf(buf, cap, "conn:conn_%08lx", (i * 7919) % n);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: store_plain PATH N VALUE_BYTES\n");
    return 2;
  }
  const char *path = argv[1];
  long n = atol(argv[2]), vbytes = atol(argv[3]);
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      NULL) != SQLITE_OK)
    die(db, "open");
  sqlite3_busy_timeout(db, 5000);
  if (sqlite3_exec(db,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=FAST;"
                   "CREATE TABLE IF NOT EXISTS kv (id INTEGER PRIMARY KEY, ns TEXT NOT NULL,"
                   " k BLOB NOT NULL, kid INTEGER NOT NULL, v BLOB NOT NULL, UNIQUE (ns, k));",
                   NULL, NULL, NULL) != SQLITE_OK)
    die(db, "schema");
  sqlite3_stmt *put = NULL, *get = NULL;
  if (sqlite3_prepare_v3(db,
                         "INSERT INTO kv (ns, k, kid, v) VALUES (?1, ?2, 1, ?3)"
                         " ON CONFLICT (ns, k) DO UPDATE SET kid = excluded.kid, v = excluded.v",
                         -1, SQLITE_PREPARE_PERSISTENT, &put, NULL) != SQLITE_OK ||
      sqlite3_prepare_v3(db, "SELECT id, kid, v FROM kv WHERE ns = ?1 AND k = ?2", -1,
                         SQLITE_PREPARE_PERSISTENT, &get, NULL) != SQLITE_OK)
    die(db, "prepare");
  char *value = malloc((size_t)vbytes + 1);
  if (value == NULL) return 1;
  memset(value, 'v', (size_t)vbytes);
  char key[64];
  double rates[3];
  for (int phase = 0; phase < 3; phase++) {
    if (phase == 2 && sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
      die(db, "begin");
    double t0 = now();
    long sink = 0;
    for (long i = 0; i < n; i++) {
      int klen = key_of(key, sizeof key, i, n);
      sqlite3_stmt *st = phase == 1 ? get : put;
      sqlite3_bind_text(st, 1, "default", 7, SQLITE_STATIC);
      sqlite3_bind_blob(st, 2, key, klen, SQLITE_STATIC);
      if (phase != 1) sqlite3_bind_blob(st, 3, value, (int)vbytes, SQLITE_STATIC);
      int rc = sqlite3_step(st);
      if (phase == 1) {
        if (rc != SQLITE_ROW) die(db, "get");
        /* copy the value out, as the Lua side gets a string */
        char *copy = malloc((size_t)sqlite3_column_bytes(st, 2) + 1);
        if (copy == NULL) return 1;
        memcpy(copy, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2));
        sink += copy[0];
        free(copy);
      } else if (rc != SQLITE_DONE) {
        die(db, "put");
      }
      sqlite3_reset(st);
    }
    if (phase == 2 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) die(db, "commit");
    rates[phase] = (double)n / (now() - t0);
    if (sink == -1) puts("");
  }
  printf("%.0f %.0f %.0f\n", rates[0], rates[1], rates[2]);
  sqlite3_finalize(put);
  sqlite3_finalize(get);
  sqlite3_close(db);
  free(value);
  return 0;
}
