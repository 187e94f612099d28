/*
 * store_sqlite.c: the SQLite backend of oflua.store (store_backend.h). One
 * handle is one SQLite connection (SQLITE_OPEN_NOMUTEX: a lua_State, and so a
 * handle, is used by one thread at a time), in WAL mode with a busy handler,
 * so several threads and processes share a file. The outermost transaction
 * is BEGIN IMMEDIATE (the write lock is taken up front, so two claimers never
 * deadlock on an upgrade); inner levels are savepoints. Writes carry a guard
 * on oflua_meta.kid so a handle opened before another process rekeyed the
 * store writes nothing instead of writing rows under a retired key.
 */
#include "store_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define SQ_CACHE_KIB 32768            /* page cache per connection, at most */
#define SQ_WAL_CHECKPOINT_PAGES 1000 /* WAL pages before an automatic checkpoint */
/* bg_checkpoint (the group committer's connection): WAL pages before the
 * checkpointer thread runs. Larger than SQLite's default: a pass copies each
 * page once however many commits rewrote it, so fewer, longer passes copy
 * the hot pages (the table's and the indexes' last leaves) fewer times
 * (8000 against 1000: the checkpointer's CPU per webhook delivery 11.7 ->
 * ~8 µs; the WAL file grows to ~32 MiB). */
#define SQ_WAL_BG_CHECKPOINT_PAGES 8000
#define SQ_WAL_INLINE_PAGES 20000    /* bg_checkpoint: the commit checkpoints itself */

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS oflua_meta ("
    "  one INTEGER PRIMARY KEY CHECK (one = 1),"
    "  format INTEGER NOT NULL,"
    "  kid INTEGER NOT NULL,"
    "  salt BLOB NOT NULL,"
    "  check_box BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS oflua_kv ("
    "  id INTEGER PRIMARY KEY,"
    "  ns TEXT NOT NULL,"
    "  kidx BLOB NOT NULL,"
    "  kid INTEGER NOT NULL,"
    "  kbox BLOB NOT NULL,"
    "  vbox BLOB NOT NULL,"
    "  UNIQUE (ns, kidx));"
    "CREATE TABLE IF NOT EXISTS oflua_inbox ("
    "  id INTEGER PRIMARY KEY,"
    "  ns TEXT NOT NULL,"
    "  eidx BLOB NOT NULL,"
    "  kid INTEGER NOT NULL,"
    "  ebox BLOB NOT NULL,"
    "  pbox BLOB NOT NULL,"
    "  rbox BLOB,"
    "  state TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  next_at REAL NOT NULL,"
    "  created_at REAL NOT NULL,"
    "  updated_at REAL NOT NULL,"
    "  UNIQUE (ns, eidx));"
    "CREATE INDEX IF NOT EXISTS oflua_inbox_due ON oflua_inbox (ns, state, next_at);";

/* Version 1 -> 2: the version row, and an index that lets list() walk a
 * namespace in id order (without it SQLite sorted the whole namespace in a
 * temporary B-tree for every row: 38 s for 10,000 keys). */
static const char MIGRATE_2[] =
    "CREATE TABLE IF NOT EXISTS oflua_schema ("
    "  one INTEGER PRIMARY KEY CHECK (one = 1),"
    "  version INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS oflua_kv_ns_id ON oflua_kv (ns, id);"
    "CREATE INDEX IF NOT EXISTS oflua_inbox_ns_id ON oflua_inbox (ns, state, id);"
    "INSERT INTO oflua_schema (one, version) VALUES (1, 2)"
    "  ON CONFLICT (one) DO UPDATE SET version = 2 WHERE version < 2;";

enum {
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_META,
  ST_META_KID,
  ST_META_SET,
  ST_KV_GET,
  ST_KV_PUT,
  ST_KV_DEL,
  ST_KV_SCAN,
  ST_KV_SCAN_ALL,
  ST_KV_RESEAL,
  ST_IN_ADD,
  ST_IN_DUE,
  ST_IN_FIND,
  ST_IN_SET,
  ST_IN_MARK,
  ST_IN_LIST,
  ST_IN_LIST_ANY,
  ST_IN_STATS,
  ST_IN_PRUNE,
  ST_IN_SCAN,
  ST_IN_RESEAL,
  ST_COUNT
};

#define KID_GUARD "(SELECT kid FROM oflua_meta WHERE one = 1)"

static const char *const SQL[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_META] = "SELECT m.format, m.kid, m.salt, m.check_box, s.version FROM oflua_meta AS m"
                " LEFT JOIN oflua_schema AS s ON s.one = 1 WHERE m.one = 1",
    [ST_META_KID] = "SELECT kid FROM oflua_meta WHERE one = 1",
    [ST_META_SET] = "UPDATE oflua_meta SET kid = ?1, check_box = ?2 WHERE one = 1",
    [ST_KV_GET] = "SELECT id, kid, vbox FROM oflua_kv WHERE ns = ?1 AND kidx = ?2",
    [ST_KV_PUT] = "INSERT INTO oflua_kv (ns, kidx, kid, kbox, vbox)"
                  " SELECT ?1, ?2, ?3, ?4, ?5 WHERE " KID_GUARD " = ?3"
                  " ON CONFLICT (ns, kidx) DO UPDATE SET"
                  " kid = excluded.kid, kbox = excluded.kbox, vbox = excluded.vbox",
    [ST_KV_DEL] = "DELETE FROM oflua_kv WHERE ns = ?1 AND kidx = ?2 AND " KID_GUARD " = ?3",
    [ST_KV_SCAN] = "SELECT id, kid, kbox, vbox, ns FROM oflua_kv INDEXED BY oflua_kv_ns_id"
                   " WHERE ns = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [ST_KV_SCAN_ALL] = "SELECT id, kid, kbox, vbox, ns FROM oflua_kv WHERE id > ?2"
                       " ORDER BY id LIMIT ?3",
    [ST_KV_RESEAL] = "UPDATE oflua_kv SET kidx = ?2, kid = ?3, kbox = ?4, vbox = ?5 WHERE id = ?1",
    [ST_IN_ADD] = "INSERT INTO oflua_inbox (ns, eidx, kid, ebox, pbox, state, attempts, next_at,"
                  " created_at, updated_at)"
                  " SELECT ?1, ?2, ?3, ?4, ?5, ?7, 0, ?8, ?6, ?6 WHERE " KID_GUARD " = ?3"
                  " ON CONFLICT (ns, eidx) DO NOTHING",
    [ST_IN_DUE] = "SELECT id, kid, ebox, pbox, attempts, state FROM oflua_inbox"
                  " WHERE ns = ?1 AND state IN ('pending', 'claimed')"
                  " AND next_at <= ?2 ORDER BY next_at, id LIMIT ?3",
    [ST_IN_FIND] = "SELECT m.kid, i.id, i.kid, i.pbox, i.rbox, i.state, i.attempts, i.next_at,"
                   " i.created_at, i.updated_at, i.ebox FROM oflua_meta AS m"
                   " LEFT JOIN oflua_inbox AS i ON i.ns = ?1 AND i.eidx = ?2 WHERE m.one = 1",
    [ST_IN_SET] = "UPDATE oflua_inbox SET state = ?2, attempts = ?3, next_at = ?4,"
                  " rbox = coalesce(?5, rbox), updated_at = ?6 WHERE id = ?1",
    [ST_IN_MARK] = "UPDATE oflua_inbox SET state = ?4,"
                   " attempts = CASE WHEN ?5 = 1 THEN 0 ELSE attempts END,"
                   " next_at = CASE WHEN ?5 <> 0 THEN ?6 ELSE next_at END, updated_at = ?6"
                   " WHERE ns = ?1 AND eidx = ?2 AND kid = ?3 AND " KID_GUARD " = ?3"
                   " AND (?7 = 0 OR (state = 'claimed' AND attempts = ?8 AND next_at = ?9))"
                   " AND (?5 <> 2 OR state = 'claimed')", /* a release: claimed only */
    [ST_IN_LIST] = "SELECT id, kid, ebox, pbox, attempts, state, rbox, next_at, created_at,"
                   " updated_at, ns FROM oflua_inbox"
                   " WHERE ns = ?1 AND state = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
    [ST_IN_LIST_ANY] = "SELECT id, kid, ebox, pbox, attempts, state, rbox, next_at, created_at,"
                       " updated_at, ns FROM oflua_inbox"
                       " WHERE ns = ?1 AND id > ?3 ORDER BY id LIMIT ?4",
    [ST_IN_STATS] = "SELECT state, count(*) FROM oflua_inbox WHERE ns = ?1 GROUP BY state",
    [ST_IN_PRUNE] = "DELETE FROM oflua_inbox WHERE ns = ?1 AND state = 'done' AND updated_at < ?2",
    [ST_IN_SCAN] = "SELECT id, kid, ebox, pbox, attempts, state, rbox, next_at, created_at,"
                   " updated_at, ns FROM oflua_inbox WHERE id > ?1 ORDER BY id LIMIT ?2",
    [ST_IN_RESEAL] = "UPDATE oflua_inbox SET eidx = ?2, kid = ?3, ebox = ?4, pbox = ?5, rbox = ?6"
                     " WHERE id = ?1",
};

/* The background checkpointer of a connection opened with bg_checkpoint
 * (the group committer's): SQLite's automatic checkpoint runs inside the
 * commit that crosses the WAL threshold, so one batch in every few waited
 * for a copy of the WAL's pages into the database file and its fsync (the p99
 * of the durable webhook path). Here the commit only signals this thread,
 * which runs a PASSIVE checkpoint on a connection of its own while commits
 * go on. Those commits append more meanwhile, so the WAL would never be
 * wholly copied when a commit begins (the moment SQLite restarts it from
 * its start) and would only grow: after each pass the committer, between
 * two batches (its answers sent), copies the few frames added since
 * (sq_after_batch), and its next commit restarts the WAL. Should the WAL
 * still grow past SQ_WAL_INLINE_PAGES (the thread falls behind, or a
 * reader pins the WAL), the commit checkpoints itself, as SQLite would. */
typedef struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int want, stop;
  atomic_int passed; /* a pass ended: the committer copies the rest (sq_after_batch) */
  atomic_long passes; /* passes that checkpointed (in WAL mode): group_stats().checkpoints */
  char *path;
} sq_ckpt;

typedef struct {
  store_conn base;
  sqlite3 *db;
  sq_ckpt *ckpt;     /* bg_checkpoint, or NULL */
  sqlite3_stmt *st[ST_COUNT];
  int depth;         /* transaction nesting: 0 none, 1 BEGIN, >1 savepoints */
  long busy_ms;      /* how long a writer waits for the write lock */
  double busy_since; /* when the current wait began (monotonic seconds) */
} sq_conn;

#define SQ(c) ((sq_conn *)(c))

static int fail(sq_conn *q) {
  snprintf(q->base.err, sizeof q->base.err, "%s", q->db ? sqlite3_errmsg(q->db) : "store closed");
  return STORE_EDB;
}

/* Busy handler: short waits. SQLite's own (sqlite3_busy_timeout) sleeps 1 ms
 * and more between tries, while a write transaction here takes ~0.1 ms, so
 * with two workers on one file most of their time went to sleeping (p99 of
 * the durable webhook path ~100 ms). Waits grow from 20 us to 1 ms, for at
 * most busy_ms in all. */
static int sq_busy(void *arg, int count) {
  sq_conn *q = arg;
  double t = oflua__mono_now();
  if (count == 0) q->busy_since = t;
  else if ((t - q->busy_since) * 1000.0 >= (double)q->busy_ms) return 0;
  long us = 20L << (count < 6 ? count : 6);
  if (us > 1000) us = 1000;
  struct timespec d = {0, us * 1000L};
  nanosleep(&d, NULL);
  return 1;
}

static sqlite3_stmt *stmt(sq_conn *q, int id) {
  sqlite3_stmt *st = q->st[id];
  if (st == NULL) {
    if (sqlite3_prepare_v3(q->db, SQL[id], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
        SQLITE_OK) {
      fail(q);
      sqlite3_finalize(st);
      return NULL;
    }
    q->st[id] = st;
  } else {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  return st;
}

/* Steps; on an error records the message and resets. */
static int step(sq_conn *q, sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    fail(q);
    sqlite3_reset(st);
  }
  return rc;
}

/* Runs a statement to completion: 0 or STORE_EDB. */
static int run(sq_conn *q, sqlite3_stmt *st) {
  if (st == NULL) return STORE_EDB;
  int rc = step(q, st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : STORE_EDB;
}

static int simple_exec(sq_conn *q, const char *sql) {
  if (sqlite3_exec(q->db, sql, NULL, NULL, NULL) != SQLITE_OK) return fail(q);
  return 0;
}

static void bind_ns(sqlite3_stmt *st, int i, const char *ns) {
  sqlite3_bind_text(st, i, ns, -1, SQLITE_STATIC);
}

static void bind_bytes(sqlite3_stmt *st, int i, store_cbytes b) {
  if (b.p == NULL) sqlite3_bind_null(st, i);
  else sqlite3_bind_blob64(st, i, b.n > 0 ? b.p : "", (sqlite3_uint64)b.n, SQLITE_STATIC);
}

static int col_bytes(sqlite3_stmt *st, int i, store_bytes *out) {
  const void *p = sqlite3_column_blob(st, i);
  size_t n = (size_t)sqlite3_column_bytes(st, i);
  return store_bytes_set(out, p, n);
}

static void col_ns(sqlite3_stmt *st, int i, char *ns) {
  size_t n = (size_t)sqlite3_column_bytes(st, i);
  const unsigned char *t = sqlite3_column_text(st, i);
  if (n > STORE_MAX_NS) n = STORE_MAX_NS;
  if (t != NULL && n > 0) memcpy(ns, t, n);
  ns[n] = '\0';
}

/* ---- open and close -------------------------------------------------------- */

static void *ckpt_main(void *arg) {
  oflua__thread_name("oflua-ckpt");
  sq_ckpt *k = arg;
  sqlite3 *db = NULL;
  pthread_mutex_lock(&k->mu);
  for (;;) {
    while (!k->want && !k->stop) pthread_cond_wait(&k->cv, &k->mu);
    if (k->stop) break;
    k->want = 0;
    pthread_mutex_unlock(&k->mu);
    /* A new connection is in WAL mode only once it has read the database
     * (the mode is in the file's header): until then a checkpoint through
     * it does nothing (and reports -1 frames), which left all the copying
     * to the committer's pass between batches (sq_after_batch), 5-6 ms with
     * every batch waiting. Reading the schema version opens the WAL. */
    if (db == NULL &&
        (sqlite3_open_v2(k->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
             SQLITE_OK ||
         sqlite3_busy_timeout(db, 100) != SQLITE_OK ||
         sqlite3_exec(db, "PRAGMA schema_version", NULL, NULL, NULL) != SQLITE_OK)) {
      sqlite3_close(db); /* (NULL or a failed handle) retried at the next signal */
      db = NULL;
    }
    if (db != NULL) {
      int log_frames = -1; /* -1: the connection is not in WAL mode (nothing done) */
      if (sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames, NULL) ==
              SQLITE_OK &&
          log_frames >= 0)
        atomic_fetch_add(&k->passes, 1);
      atomic_store(&k->passed, 1);
    }
    pthread_mutex_lock(&k->mu);
  }
  pthread_mutex_unlock(&k->mu);
  sqlite3_close(db);
  return NULL;
}

static int ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages) {
  sq_ckpt *k = arg;
  if (pages >= SQ_WAL_INLINE_PAGES) {
    sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
  } else if (pages >= SQ_WAL_BG_CHECKPOINT_PAGES) {
    pthread_mutex_lock(&k->mu);
    if (!k->want) {
      k->want = 1;
      pthread_cond_signal(&k->cv);
    }
    pthread_mutex_unlock(&k->mu);
  }
  return SQLITE_OK;
}

static long sq_bg_checkpoints(store_conn *c) {
  sq_conn *q = SQ(c);
  return q->ckpt != NULL ? atomic_load(&q->ckpt->passes) : 0;
}

static void sq_after_batch(store_conn *c) {
  sq_conn *q = SQ(c);
  if (q->ckpt != NULL && q->depth == 0 && atomic_exchange(&q->ckpt->passed, 0))
    sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

static void ckpt_stop(sq_ckpt *k) {
  pthread_mutex_lock(&k->mu);
  k->stop = 1;
  pthread_cond_signal(&k->cv);
  pthread_mutex_unlock(&k->mu);
  pthread_join(k->thread, NULL);
  pthread_mutex_destroy(&k->mu);
  pthread_cond_destroy(&k->cv);
  free(k->path);
  free(k);
}

/* 0, or -1 (no thread: the connection keeps SQLite's own checkpoints). */
static int ckpt_start(sq_conn *q, const char *path) {
  sq_ckpt *k = calloc(1, sizeof *k);
  if (k == NULL) return -1;
  size_t n = strlen(path) + 1;
  k->path = malloc(n);
  if (k->path == NULL) {
    free(k);
    return -1;
  }
  memcpy(k->path, path, n);
  if (pthread_mutex_init(&k->mu, NULL) != 0) {
    free(k->path);
    free(k);
    return -1;
  }
  if (pthread_cond_init(&k->cv, NULL) != 0) {
    pthread_mutex_destroy(&k->mu);
    free(k->path);
    free(k);
    return -1;
  }
  if (oflua__thread_start(&k->thread, ckpt_main, k) != 0) { /* (takes no signals) */
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    free(k->path);
    free(k);
    return -1;
  }
  q->ckpt = k;
  sqlite3_wal_hook(q->db, ckpt_hook, k); /* replaces the automatic checkpoint */
  return 0;
}

static void sq_close(store_conn *c) {
  sq_conn *q = SQ(c);
  if (q == NULL) return;
  if (q->ckpt != NULL) {
    if (q->db != NULL) sqlite3_wal_hook(q->db, NULL, NULL);
    ckpt_stop(q->ckpt);
  }
  if (q->db != NULL) {
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(q->st[i]);
    /* Every statement is finalized, so this closes (and, as the last
     * connection, checkpoints the WAL into the database file). */
    if (sqlite3_close(q->db) != SQLITE_OK) sqlite3_close_v2(q->db);
  }
  free(q);
}

static store_conn *sq_open(const store_open_opts *o, char *err, size_t errlen) {
  int memory = strcmp(o->path, ":memory:") == 0;
  struct stat fst;
  if (!memory && stat(o->path, &fst) != 0) {
    if (errno != ENOENT || !o->create) {
      snprintf(err, errlen, "no store at %s (%s)", o->path, STORE_STRERROR(errno));
      return NULL;
    }
    /* Create the file ourselves so it (and its -wal/-shm, which SQLite gives
     * the same mode) is 0600 from the first byte. */
    int fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
      snprintf(err, errlen, "cannot create %s: %s", o->path, STORE_STRERROR(errno));
      return NULL;
    }
    if (fd >= 0) close(fd);
  }
  sq_conn *q = calloc(1, sizeof *q);
  if (q == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  q->base.be = &store_sqlite_backend;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (o->create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(o->path, &q->db, flags, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "cannot open %s: %s", o->path,
             q->db ? sqlite3_errmsg(q->db) : "out of memory");
    sq_close(&q->base);
    return NULL;
  }
  sqlite3_extended_result_codes(q->db, 1);
  q->busy_ms = o->busy_ms;
  sqlite3_busy_handler(q->db, sq_busy, q);
  /* A store file is data, not code: no triggers or views from it run with
   * privileges, and no SQL can corrupt it on purpose. */
  sqlite3_db_config(q->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
  sqlite3_db_config(q->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);

  /* cache_size: the inbox's unique index is keyed by a keyed hash, so each
   * insert lands on a random leaf page; with SQLite's default 2 MiB cache a
   * busy inbox re-reads most of them from the OS for every insert. The cache
   * only grows as pages are used (at most 32 MiB per connection; measured
   * on the durable webhook path, docs/performance.md). wal_autocheckpoint:
   * SQLite's default, stated; the group committer's connection checkpoints
   * in a thread instead (sq_ckpt). */
  char pragmas[192];
  snprintf(pragmas, sizeof pragmas,
           "PRAGMA synchronous=%s; PRAGMA secure_delete=FAST; PRAGMA cache_size=-%d;"
           " PRAGMA wal_autocheckpoint=%d;",
           o->sync != NULL && strcasecmp(o->sync, "FULL") == 0 ? "FULL" : "NORMAL",
           SQ_CACHE_KIB, SQ_WAL_CHECKPOINT_PAGES);
  if (simple_exec(q, pragmas) != 0) goto fail;
  if (!memory) {
    /* Switching a new file to WAL needs an exclusive lock, and SQLite answers
     * SQLITE_BUSY here without calling the busy handler when another
     * connection is opening the same new file: retry for busy_timeout_ms. */
    int ok = 0;
    for (long waited = 0;; waited += 5) {
      sqlite3_stmt *st = NULL;
      int rc = sqlite3_prepare_v2(q->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
      if (rc == SQLITE_OK) rc = sqlite3_step(st);
      const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
      ok = mode != NULL && strcmp(mode, "wal") == 0;
      int busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
      if (!ok) fail(q);
      sqlite3_finalize(st);
      if (ok || !busy || waited >= o->busy_ms) break;
      sqlite3_sleep(5);
    }
    if (!ok) goto fail;
    if (o->bg_checkpoint) (void)ckpt_start(q, o->path); /* else SQLite's own */
  }
  return &q->base;
fail:
  snprintf(err, errlen, "cannot open %s: %s", o->path, q->base.err);
  sq_close(&q->base);
  return NULL;
}

static void sq_version(store_conn *c, char *buf, size_t len) {
  (void)c;
  snprintf(buf, len, "%s", sqlite3_libversion());
}

/* ---- transactions ---------------------------------------------------------- */

static int sp_exec(sq_conn *q, const char *verb) {
  char sql[64];
  snprintf(sql, sizeof sql, "%s oflua_%d", verb, q->depth);
  return simple_exec(q, sql);
}

static int sq_tx_begin(store_conn *c, int flags) {
  (void)flags; /* BEGIN IMMEDIATE: every transaction holds the write lock */
  sq_conn *q = SQ(c);
  if (q->depth == 0) {
    if (!sqlite3_get_autocommit(q->db)) return STORE_EDB;
    if (run(q, stmt(q, ST_BEGIN)) != 0) return STORE_EDB;
  } else if (sp_exec(q, "SAVEPOINT") != 0) {
    return STORE_EDB;
  }
  q->depth++;
  return 0;
}

static void rollback_quiet(sq_conn *q) {
  char keep[sizeof q->base.err];
  memcpy(keep, q->base.err, sizeof keep); /* the caller's error, not the rollback's */
  if (q->depth == 1) {
    if (!sqlite3_get_autocommit(q->db)) run(q, stmt(q, ST_ROLLBACK));
  } else if (q->depth > 1) {
    q->depth--;
    sp_exec(q, "ROLLBACK TO");
    sp_exec(q, "RELEASE");
    q->depth++;
  }
  q->depth--;
  memcpy(q->base.err, keep, sizeof keep);
}

static int sq_tx_rollback(store_conn *c) {
  sq_conn *q = SQ(c);
  if (q->depth > 0) rollback_quiet(q);
  return 0;
}

static int sq_tx_commit(store_conn *c) {
  sq_conn *q = SQ(c);
  int rc;
  if (q->depth == 1) rc = run(q, stmt(q, ST_COMMIT));
  else {
    q->depth--;
    rc = sp_exec(q, "RELEASE");
    q->depth++;
  }
  if (rc != 0) {
    rollback_quiet(q);
    return STORE_EDB;
  }
  q->depth--;
  return 0;
}

static int sq_tx_depth(store_conn *c) {
  return SQ(c)->depth;
}

/* ---- meta ------------------------------------------------------------------ */

static int meta_read(sq_conn *q, store_meta *out) {
  sqlite3_stmt *st = stmt(q, ST_META);
  if (st == NULL) return STORE_EDB;
  int rc = step(q, st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(st);
    return 0;
  }
  if (rc != SQLITE_ROW) return STORE_EDB;
  out->format = sqlite3_column_int64(st, 0);
  out->kid = sqlite3_column_int64(st, 1);
  int ok = sqlite3_column_bytes(st, 2) == STORE_SALT_LEN;
  if (ok) memcpy(out->salt, sqlite3_column_blob(st, 2), STORE_SALT_LEN);
  ok = ok && col_bytes(st, 3, &out->check) == 0;
  out->schema_version =
      sqlite3_column_type(st, 4) == SQLITE_NULL ? 1 : sqlite3_column_int64(st, 4);
  sqlite3_reset(st);
  if (!ok) {
    snprintf(q->base.err, sizeof q->base.err, "oflua_meta is damaged");
    return STORE_EDB;
  }
  return 1;
}

static int table_exists(sq_conn *q, const char *name, int *exists) {
  sqlite3_stmt *t = NULL;
  if (sqlite3_prepare_v2(q->db, "SELECT count(*) FROM sqlite_master WHERE name = ?1", -1, &t,
                         NULL) != SQLITE_OK) {
    sqlite3_finalize(t);
    return fail(q);
  }
  sqlite3_bind_text(t, 1, name, -1, SQLITE_STATIC);
  if (sqlite3_step(t) != SQLITE_ROW) {
    fail(q);
    sqlite3_finalize(t);
    return STORE_EDB;
  }
  *exists = sqlite3_column_int(t, 0) > 0;
  sqlite3_finalize(t);
  return 0;
}

/* Creates or migrates the schema in one IMMEDIATE transaction (two processes
 * may race here: IF NOT EXISTS and ON CONFLICT make the loser a no-op). */
static int create_or_migrate(sq_conn *q, const store_meta *init) {
  if (simple_exec(q, "BEGIN IMMEDIATE") != 0) return STORE_EDB;
  sqlite3_stmt *st = NULL;
  if (simple_exec(q, SCHEMA) != 0 || simple_exec(q, MIGRATE_2) != 0) goto fail;
  if (init != NULL) {
    if (sqlite3_prepare_v2(q->db,
                           "INSERT INTO oflua_meta (one, format, kid, salt, check_box)"
                           " VALUES (1, ?1, 1, ?2, ?3) ON CONFLICT (one) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK)
      goto fail;
    sqlite3_bind_int64(st, 1, init->format);
    sqlite3_bind_blob(st, 2, init->salt, STORE_SALT_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, init->check.p, (int)init->check.n, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) goto fail;
    sqlite3_finalize(st);
    st = NULL;
  }
  if (simple_exec(q, "COMMIT") != 0) goto fail;
  return 0;
fail:
  fail(q);
  sqlite3_finalize(st);
  sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
  return STORE_EDB;
}

static int sq_meta_load(store_conn *c, int create, const store_meta *init, store_meta *out) {
  sq_conn *q = SQ(c);
  int exists = 0, has_schema = 0;
  if (table_exists(q, "oflua_meta", &exists) != 0) return STORE_EDB;
  if (!exists && !create) return 0;
  if (table_exists(q, "oflua_schema", &has_schema) != 0) return STORE_EDB;
  if (!exists || !has_schema) {
    if (create_or_migrate(q, exists ? NULL : init) != 0) return STORE_EDB;
  }
  int rc = meta_read(q, out);
  if (rc == 0 && create) {
    if (create_or_migrate(q, init) != 0) return STORE_EDB;
    rc = meta_read(q, out);
  }
  if (rc == 1 && out->schema_version > STORE_SCHEMA_VERSION) {
    snprintf(q->base.err, sizeof q->base.err,
             "the store has schema version %lld, newer than this oflua's (%d): upgrade oflua",
             (long long)out->schema_version, STORE_SCHEMA_VERSION);
    store_bytes_free(&out->check);
    return STORE_EDB;
  }
  return rc;
}

static int sq_meta_kid(store_conn *c, int64_t *kid) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_META_KID);
  if (st == NULL) return STORE_EDB;
  int rc = step(q, st);
  if (rc == SQLITE_ROW) *kid = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) {
    snprintf(q->base.err, sizeof q->base.err, "oflua_meta is empty");
    return STORE_EDB;
  }
  return rc == SQLITE_ROW ? 0 : STORE_EDB;
}

static int sq_meta_set(store_conn *c, int64_t kid, store_cbytes check) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_META_SET);
  if (st == NULL) return STORE_EDB;
  sqlite3_bind_int64(st, 1, kid);
  bind_bytes(st, 2, check);
  return run(q, st);
}

/* ---- key/value ------------------------------------------------------------- */

static int sq_kv_get(store_conn *c, const char *ns, const unsigned char *idx, store_kv_row *row) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_KV_GET);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  int rc = step(q, st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(st);
    return 0;
  }
  if (rc != SQLITE_ROW) return STORE_EDB;
  row->id = sqlite3_column_int64(st, 0);
  row->kid = sqlite3_column_int64(st, 1);
  int ok = col_bytes(st, 2, &row->vbox) == 0;
  sqlite3_reset(st);
  if (!ok) {
    snprintf(q->base.err, sizeof q->base.err, "out of memory");
    return STORE_EDB;
  }
  return 1;
}

static int sq_kv_put(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                     store_cbytes kbox, store_cbytes vbox) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_KV_PUT);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, kid);
  bind_bytes(st, 4, kbox);
  bind_bytes(st, 5, vbox);
  if (run(q, st) != 0) return STORE_EDB;
  return sqlite3_changes(q->db) > 0;
}

static int sq_kv_delete(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_KV_DEL);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, kid);
  if (run(q, st) != 0) return STORE_EDB;
  return sqlite3_changes(q->db) > 0;
}

static int sq_kv_scan(store_conn *c, const char *ns, int64_t after, int max, store_kv_row *rows,
                      int *n) {
  sq_conn *q = SQ(c);
  *n = 0;
  sqlite3_stmt *st = stmt(q, ns ? ST_KV_SCAN : ST_KV_SCAN_ALL);
  if (st == NULL) return STORE_EDB;
  if (ns) bind_ns(st, 1, ns);
  sqlite3_bind_int64(st, 2, after);
  sqlite3_bind_int(st, 3, max);
  int rc;
  while ((rc = step(q, st)) == SQLITE_ROW) {
    store_kv_row *r = &rows[*n];
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    r->kid = sqlite3_column_int64(st, 1);
    if (col_bytes(st, 2, &r->kbox) != 0 || col_bytes(st, 3, &r->vbox) != 0) {
      store_kv_row_clear(r);
      sqlite3_reset(st);
      snprintf(q->base.err, sizeof q->base.err, "out of memory");
      return STORE_EDB;
    }
    col_ns(st, 4, r->ns);
    (*n)++;
  }
  if (rc != SQLITE_DONE) return STORE_EDB;
  sqlite3_reset(st);
  return 0;
}

static int sq_kv_reseal(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                        store_cbytes kbox, store_cbytes vbox) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_KV_RESEAL);
  if (st == NULL) return STORE_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, kid);
  bind_bytes(st, 4, kbox);
  bind_bytes(st, 5, vbox);
  return run(q, st);
}

/* ---- inbox ----------------------------------------------------------------- */

static int sq_inbox_add(store_conn *c, const char *ns, int64_t kid, const store_new_event *ev,
                        int n, int *inserted) {
  sq_conn *q = SQ(c);
  int tx = n > 1;
  if (tx && sq_tx_begin(c, 0) != 0) return STORE_EDB;
  for (int i = 0; i < n; i++) {
    sqlite3_stmt *st = stmt(q, ST_IN_ADD);
    if (st == NULL) goto fail;
    bind_ns(st, 1, ns);
    sqlite3_bind_blob(st, 2, ev[i].idx, STORE_IDX_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, kid);
    bind_bytes(st, 4, ev[i].ebox);
    bind_bytes(st, 5, ev[i].pbox);
    sqlite3_bind_double(st, 6, ev[i].now);
    sqlite3_bind_text(st, 7, ev[i].state, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 8, ev[i].next_at);
    if (run(q, st) != 0) goto fail;
    inserted[i] = sqlite3_changes(q->db) > 0;
  }
  if (tx && sq_tx_commit(c) != 0) return STORE_EDB;
  return 0;
fail:
  if (tx) sq_tx_rollback(c);
  return STORE_EDB;
}

/* Columns: id, kid, ebox, pbox, attempts, state[, rbox, next_at, created_at,
 * updated_at, ns]. */
static int event_row(sq_conn *q, sqlite3_stmt *st, store_event *e, int full) {
  memset(e, 0, sizeof *e);
  e->id = sqlite3_column_int64(st, 0);
  e->kid = sqlite3_column_int64(st, 1);
  e->attempts = sqlite3_column_int64(st, 4);
  const unsigned char *state = sqlite3_column_text(st, 5);
  snprintf(e->state, sizeof e->state, "%s", state ? (const char *)state : "?");
  int ok = col_bytes(st, 2, &e->ebox) == 0 && col_bytes(st, 3, &e->pbox) == 0;
  if (ok && full) {
    e->has_reason = sqlite3_column_type(st, 6) != SQLITE_NULL;
    if (e->has_reason) ok = col_bytes(st, 6, &e->rbox) == 0;
    e->next_at = sqlite3_column_double(st, 7);
    e->created_at = sqlite3_column_double(st, 8);
    e->updated_at = sqlite3_column_double(st, 9);
    col_ns(st, 10, e->ns);
  }
  if (!ok) {
    store_event_clear(e);
    snprintf(q->base.err, sizeof q->base.err, "out of memory");
    return STORE_EDB;
  }
  return 0;
}

static int collect(sq_conn *q, sqlite3_stmt *st, store_event *rows, int *n, int full) {
  int rc;
  *n = 0;
  while ((rc = step(q, st)) == SQLITE_ROW) {
    if (event_row(q, st, &rows[*n], full) != 0) {
      sqlite3_reset(st);
      for (int i = 0; i < *n; i++) store_event_clear(&rows[i]);
      *n = 0;
      return STORE_EDB;
    }
    (*n)++;
  }
  if (rc != SQLITE_DONE) {
    for (int i = 0; i < *n; i++) store_event_clear(&rows[i]);
    *n = 0;
    return STORE_EDB;
  }
  sqlite3_reset(st);
  return 0;
}

static int sq_inbox_due(store_conn *c, const char *ns, double now, int max, store_event *rows,
                        int *n) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_DUE);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_double(st, 2, now);
  sqlite3_bind_int(st, 3, max);
  return collect(q, st, rows, n, 0);
}

static int sq_inbox_find(store_conn *c, const char *ns, const unsigned char *idx,
                         int64_t *meta_kid, store_event *e) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_FIND);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  int rc = step(q, st);
  if (rc != SQLITE_ROW) {
    if (rc == SQLITE_DONE) {
      snprintf(q->base.err, sizeof q->base.err, "oflua_meta is empty");
      sqlite3_reset(st);
    }
    return STORE_EDB;
  }
  *meta_kid = sqlite3_column_int64(st, 0);
  memset(e, 0, sizeof *e);
  if (sqlite3_column_type(st, 1) == SQLITE_NULL) {
    sqlite3_reset(st);
    return 0;
  }
  e->id = sqlite3_column_int64(st, 1);
  e->kid = sqlite3_column_int64(st, 2);
  const unsigned char *state = sqlite3_column_text(st, 5);
  snprintf(e->state, sizeof e->state, "%s", state ? (const char *)state : "?");
  e->attempts = sqlite3_column_int64(st, 6);
  e->next_at = sqlite3_column_double(st, 7);
  e->created_at = sqlite3_column_double(st, 8);
  e->updated_at = sqlite3_column_double(st, 9);
  e->has_reason = sqlite3_column_type(st, 4) != SQLITE_NULL;
  int ok = col_bytes(st, 3, &e->pbox) == 0 && col_bytes(st, 10, &e->ebox) == 0 &&
           (!e->has_reason || col_bytes(st, 4, &e->rbox) == 0);
  sqlite3_reset(st);
  if (!ok) {
    store_event_clear(e);
    snprintf(q->base.err, sizeof q->base.err, "out of memory");
    return STORE_EDB;
  }
  return 1;
}

static int sq_inbox_set(store_conn *c, int64_t id, const char *state, int64_t attempts,
                        double next_at, store_cbytes rbox, double now) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_SET);
  if (st == NULL) return STORE_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, attempts);
  sqlite3_bind_double(st, 4, next_at);
  bind_bytes(st, 5, rbox);
  sqlite3_bind_double(st, 6, now);
  return run(q, st);
}

static int sq_inbox_mark(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                         const char *state, int reset, double now, const store_fence *fence) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_MARK);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, kid);
  sqlite3_bind_text(st, 4, state, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 5, reset); /* STORE_MARK_* */
  sqlite3_bind_double(st, 6, now);
  sqlite3_bind_int(st, 7, fence != NULL);
  sqlite3_bind_int64(st, 8, fence ? fence->attempts : 0);
  sqlite3_bind_double(st, 9, fence ? fence->lease_end : 0);
  if (run(q, st) != 0) return STORE_EDB;
  return sqlite3_changes(q->db) > 0;
}

static int sq_inbox_list(store_conn *c, const char *ns, const char *state, int64_t after, int max,
                         store_event *rows, int *n) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, state ? ST_IN_LIST : ST_IN_LIST_ANY);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  if (state) sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, after);
  sqlite3_bind_int(st, 4, max);
  return collect(q, st, rows, n, 1);
}

static int sq_inbox_stats(store_conn *c, const char *ns, int64_t counts[4]) {
  sq_conn *q = SQ(c);
  static const char *const states[] = {"pending", "claimed", "done", "dead"};
  sqlite3_stmt *st = stmt(q, ST_IN_STATS);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  memset(counts, 0, 4 * sizeof *counts);
  int rc;
  while ((rc = step(q, st)) == SQLITE_ROW) {
    const char *state = (const char *)sqlite3_column_text(st, 0);
    for (int i = 0; i < 4; i++)
      if (state != NULL && strcmp(state, states[i]) == 0) counts[i] = sqlite3_column_int64(st, 1);
  }
  if (rc != SQLITE_DONE) return STORE_EDB;
  sqlite3_reset(st);
  return 0;
}

static int sq_inbox_prune(store_conn *c, const char *ns, double before, int64_t *n) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_PRUNE);
  if (st == NULL) return STORE_EDB;
  bind_ns(st, 1, ns);
  sqlite3_bind_double(st, 2, before);
  if (run(q, st) != 0) return STORE_EDB;
  *n = sqlite3_changes(q->db);
  return 0;
}

static int sq_inbox_scan(store_conn *c, int64_t after, int max, store_event *rows, int *n) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_SCAN);
  if (st == NULL) return STORE_EDB;
  sqlite3_bind_int64(st, 1, after);
  sqlite3_bind_int(st, 2, max);
  return collect(q, st, rows, n, 1);
}

static int sq_inbox_reseal(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                           store_cbytes ebox, store_cbytes pbox, store_cbytes rbox) {
  sq_conn *q = SQ(c);
  sqlite3_stmt *st = stmt(q, ST_IN_RESEAL);
  if (st == NULL) return STORE_EDB;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_blob(st, 2, idx, STORE_IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, kid);
  bind_bytes(st, 4, ebox);
  bind_bytes(st, 5, pbox);
  bind_bytes(st, 6, rbox);
  return run(q, st);
}

/* Rekey overwrites the old ciphertexts in place, then truncates the WAL so
 * they do not linger in it (best effort: another process reading at that
 * moment keeps its frames until later). */
static void sq_rekey_before(store_conn *c) {
  simple_exec(SQ(c), "PRAGMA secure_delete=ON");
}

static void sq_rekey_after(store_conn *c, int ok) {
  sq_conn *q = SQ(c);
  simple_exec(q, "PRAGMA secure_delete=FAST");
  if (ok) sqlite3_wal_checkpoint_v2(q->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
}

const store_backend store_sqlite_backend = {
    .name = "sqlite",
    .single_writer = 1,
    .open = sq_open,
    .close = sq_close,
    .after_batch = sq_after_batch,
    .bg_checkpoints = sq_bg_checkpoints,
    .version = sq_version,
    .meta_load = sq_meta_load,
    .meta_kid = sq_meta_kid,
    .meta_set = sq_meta_set,
    .tx_begin = sq_tx_begin,
    .tx_commit = sq_tx_commit,
    .tx_rollback = sq_tx_rollback,
    .tx_depth = sq_tx_depth,
    .kv_get = sq_kv_get,
    .kv_put = sq_kv_put,
    .kv_delete = sq_kv_delete,
    .kv_scan = sq_kv_scan,
    .kv_reseal = sq_kv_reseal,
    .inbox_add = sq_inbox_add,
    .inbox_due = sq_inbox_due,
    .inbox_find = sq_inbox_find,
    .inbox_mark = sq_inbox_mark,
    .inbox_set = sq_inbox_set,
    .inbox_list = sq_inbox_list,
    .inbox_stats = sq_inbox_stats,
    .inbox_prune = sq_inbox_prune,
    .inbox_scan = sq_inbox_scan,
    .inbox_reseal = sq_inbox_reseal,
    .rekey_before = sq_rekey_before,
    .rekey_after = sq_rekey_after,
};
