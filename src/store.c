/*
 * store.c: oflua.store, an encrypted key/value store and webhook inbox on
 * SQLite. Connection ids are credentials, so nothing a caller stores reaches
 * the database file in clear: not the values, not the keys, not event ids.
 *
 * Keys. The master key (32 random bytes, base64 in OFLUA_STORE_KEY or a 0600
 * key file) is never used directly: HKDF-SHA256 with the store's random salt
 * and an info string naming the key id (kid) derives a data key (AES-256-GCM)
 * and an index key (HMAC-SHA256). The kid is a counter in oflua_meta, bumped by
 * rekey, and stored on every row so a row sealed under another key is named
 * as such instead of failing as "tampered".
 *
 * Rows. A value is sealed as nonce(12) || ciphertext || tag(16) with a random
 * nonce per write, its AAD binding (domain, namespace, key) with length
 * prefixes, so a ciphertext copied to another row or namespace fails to open.
 * Rows are found by a blind index, HMAC(index key, domain || namespace || key);
 * the key is also sealed in the row so list() can show it. The namespace
 * itself is stored in clear: it names a part of the store, not a secret.
 * oflua_meta holds the salt, the current kid and a sealed check value that
 * tells a wrong master key from a right one on open.
 *
 * Concurrency. Each handle is one SQLite connection (SQLITE_OPEN_NOMUTEX: a
 * lua_State, and so a handle, is used by one thread at a time), in WAL mode
 * with a busy timeout, so several threads and processes share a file.
 * Read-modify-write operations run in BEGIN IMMEDIATE (or a savepoint inside
 * a caller's transaction). Writes carry a guard on oflua_meta.kid so a handle
 * opened before another process rekeyed the store gets an error instead of
 * writing rows under a retired key.
 *
 * Errors follow io.open: expected failures (busy database, tampered row, wrong
 * key) return nil, message; wrong argument types raise. Messages never hold a
 * key, a value or the master key. The list() iterator raises, as an iterator
 * cannot return nil, err.
 *
 * API (keys and event ids: byte strings up to 4096 bytes; values, payloads:
 * byte strings; `now`: seconds, default the wall clock):
 *   store.open{path, key = base64 | key_file = path, namespace = "default",
 *              synchronous = "NORMAL" | "FULL", busy_timeout_ms = 5000,
 *              create = true} -> s | nil, err
 *   store.open_env{...}      like open; path from $OFLUA_STORE, key from
 *                            $OFLUA_STORE_KEY_FILE, else $OFLUA_STORE_KEY
 *   store.keygen() -> base64 key; store.save_key(path, key) -> true | nil, err
 *   store.sqlite_version, store.format
 *   s:get(k) -> v | nil | nil, err      s:put(k, v) -> true | nil, err
 *   s:delete(k) -> true | false | nil, err
 *   s:list([prefix]) -> iterator of k, v in insertion order (decrypts every
 *                       key of the namespace to test the prefix: O(rows))
 *   s:transaction(fn) -> fn(s)'s results (rollback + re-raise on error;
 *                        nested calls are savepoints)
 *   s:rekey(key | {key = } | {key_file = }) -> true, rows | nil, err
 *   s:info() -> {path, namespace, key_id, format, sqlite_version}
 *   s:inbox_add(id, payload[, now[, lease_s]]) -> true (new) | false (seen) | nil, err
 *                            (with lease_s: inserted already claimed by the caller)
 *   s:inbox_claim(n, lease_s[, now[, max_attempts=5]]) -> {{id, payload, attempts}}
 *   s:inbox_done(id[, now]) -> true | false
 *   s:inbox_fail(id, reason[, max_attempts=5[, now[, delay_s]]])
 *                       -> "pending", next_attempt_at | "dead"
 *   s:inbox_retry(id[, now]) -> true | false  (back to pending, attempts 0)
 *   s:inbox_get(id) -> {id, payload, state, attempts, last_error, ...} | nil
 *   s:inbox_dead([limit]) -> {{id, payload, attempts, last_error}}
 *   s:inbox_stats() -> {pending, claimed, done, dead, total}
 *   s:inbox_prune(age_s[, now]) -> number of done events forgotten
 *   s:close() (also __gc, __close; idempotent)
 *
 * Not covered: rolling a row back to an older sealed version of itself (an
 * attacker with write access can restore an old value of the same key), and
 * the namespace names, which are stored in clear.
 */
#include "internal.h"

#include "crypto_core.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define STORE_MT "oflua.store"
#define STORE_FORMAT 1
#define KEY_LEN 32
#define SALT_LEN 16
#define IDX_LEN 32
#define NONCE_LEN OFC_AEAD_NONCE_LEN
#define BOX_OVERHEAD (OFC_AEAD_NONCE_LEN + OFC_AEAD_TAG_LEN)
#define MAX_NS 255
#define MAX_KEY 4096 /* keys and event ids: identifiers, not documents */
#define SMALL_BOX 4096
#define AAD_MAX (4 * 4 + 64 + MAX_NS + MAX_KEY)
#define MAX_CLAIM 10000
#define BACKOFF_CAP_S 3600.0
#define CHECK_TEXT "oflua.store key check v1"

/* Domains of the AADs and blind indexes: one per kind of sealed field. */
#define D_KV_INDEX "oflua.store/kv/index"
#define D_KV_KEY "oflua.store/kv/key"
#define D_KV_VALUE "oflua.store/kv/value"
#define D_IN_INDEX "oflua.store/inbox/index"
#define D_IN_ID "oflua.store/inbox/id"
#define D_IN_PAYLOAD "oflua.store/inbox/payload"
#define D_IN_REASON "oflua.store/inbox/reason"
#define D_CHECK "oflua.store/check"

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

/* Every statement a handle runs, prepared once (SQLITE_PREPARE_PERSISTENT). */
enum {
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_SP_I,
  ST_RELEASE_I,
  ST_ROLLBACK_I,
  ST_SP_U,
  ST_RELEASE_U,
  ST_ROLLBACK_U,
  ST_META,
  ST_META_KID,
  ST_META_SET,
  ST_KV_GET,
  ST_KV_PUT,
  ST_KV_DEL,
  ST_KV_NEXT,
  ST_KV_ALL,
  ST_KV_RESEAL,
  ST_IN_ADD,
  ST_IN_DUE,
  ST_IN_BY_ID,
  ST_IN_FIND,
  ST_IN_SET,
  ST_IN_DEAD,
  ST_IN_STATS,
  ST_IN_PRUNE,
  ST_IN_ALL,
  ST_IN_RESEAL,
  ST_COUNT
};

/* The kid guard: a statement writes only if the handle's key is current. */
#define KID_GUARD "(SELECT kid FROM oflua_meta WHERE one = 1)"

static const char *const SQL[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SP_I] = "SAVEPOINT oflua_i",
    [ST_RELEASE_I] = "RELEASE oflua_i",
    [ST_ROLLBACK_I] = "ROLLBACK TO oflua_i",
    [ST_SP_U] = "SAVEPOINT oflua_u",
    [ST_RELEASE_U] = "RELEASE oflua_u",
    [ST_ROLLBACK_U] = "ROLLBACK TO oflua_u",
    [ST_META] = "SELECT format, kid, salt, check_box FROM oflua_meta WHERE one = 1",
    [ST_META_KID] = "SELECT kid FROM oflua_meta WHERE one = 1",
    [ST_META_SET] = "UPDATE oflua_meta SET kid = ?1, check_box = ?2 WHERE one = 1",
    [ST_KV_GET] = "SELECT id, kid, vbox FROM oflua_kv WHERE ns = ?1 AND kidx = ?2",
    [ST_KV_PUT] = "INSERT INTO oflua_kv (ns, kidx, kid, kbox, vbox)"
                  " SELECT ?1, ?2, ?3, ?4, ?5 WHERE " KID_GUARD " = ?3"
                  " ON CONFLICT (ns, kidx) DO UPDATE SET"
                  " kid = excluded.kid, kbox = excluded.kbox, vbox = excluded.vbox",
    [ST_KV_DEL] = "DELETE FROM oflua_kv WHERE ns = ?1 AND kidx = ?2 AND " KID_GUARD " = ?3",
    [ST_KV_NEXT] = "SELECT id, kid, kbox, vbox FROM oflua_kv"
                   " WHERE ns = ?1 AND id > ?2 ORDER BY id LIMIT 1",
    [ST_KV_ALL] = "SELECT id, ns, kid, kbox, vbox FROM oflua_kv WHERE id > ?1 ORDER BY id LIMIT 1",
    [ST_KV_RESEAL] = "UPDATE oflua_kv SET kidx = ?2, kid = ?3, kbox = ?4, vbox = ?5 WHERE id = ?1",
    [ST_IN_ADD] = "INSERT INTO oflua_inbox (ns, eidx, kid, ebox, pbox, state, attempts, next_at,"
                  " created_at, updated_at)"
                  " SELECT ?1, ?2, ?3, ?4, ?5, ?7, 0, ?8, ?6, ?6 WHERE " KID_GUARD " = ?3"
                  " ON CONFLICT (ns, eidx) DO NOTHING",
    [ST_IN_DUE] = "SELECT id FROM oflua_inbox WHERE ns = ?1 AND state IN ('pending', 'claimed')"
                  " AND next_at <= ?2 ORDER BY next_at, id LIMIT ?3",
    [ST_IN_BY_ID] = "SELECT kid, ebox, pbox, attempts, state FROM oflua_inbox WHERE id = ?1",
    [ST_IN_FIND] = "SELECT m.kid, i.id, i.kid, i.pbox, i.rbox, i.state, i.attempts, i.next_at,"
                   " i.created_at, i.updated_at FROM oflua_meta AS m"
                   " LEFT JOIN oflua_inbox AS i ON i.ns = ?1 AND i.eidx = ?2 WHERE m.one = 1",
    [ST_IN_SET] = "UPDATE oflua_inbox SET state = ?2, attempts = ?3, next_at = ?4,"
                  " rbox = coalesce(?5, rbox), updated_at = ?6 WHERE id = ?1",
    [ST_IN_DEAD] = "SELECT id, kid, ebox, pbox, attempts, rbox FROM oflua_inbox"
                   " WHERE ns = ?1 AND state = 'dead' ORDER BY id LIMIT ?2",
    [ST_IN_STATS] = "SELECT state, count(*) FROM oflua_inbox WHERE ns = ?1 GROUP BY state",
    [ST_IN_PRUNE] = "DELETE FROM oflua_inbox WHERE ns = ?1 AND state = 'done' AND updated_at < ?2",
    [ST_IN_ALL] = "SELECT id, ns, kid, ebox, pbox, rbox FROM oflua_inbox"
                  " WHERE id > ?1 ORDER BY id LIMIT 1",
    [ST_IN_RESEAL] = "UPDATE oflua_inbox SET eidx = ?2, kid = ?3, ebox = ?4, pbox = ?5, rbox = ?6"
                     " WHERE id = ?1",
};

enum { ITX_NONE, ITX_BEGIN, ITX_SAVEPOINT };

/* The two keys derived for one key id, as keyed contexts. */
typedef struct {
  ofc_aead_key *aead;  /* AES-256-GCM data key: seals keys, values, ids, payloads */
  ofc_hmac_key *index; /* HMAC-SHA256 blind-index key */
} Keys;

#define NONCE_POOL (NONCE_LEN * 128)

typedef struct Store {
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  sqlite3_int64 kid;
  int itx; /* internal transaction open (an error raised mid-operation may leave it) */
  int utx; /* depth of s:transaction() calls */
  size_t nslen;
  Keys keys; /* for kid */
  unsigned char salt[SALT_LEN];
  /* Random nonces are drawn from the CSPRNG in batches (one call costs as much
   * as sealing a small value); the pool is refilled after fork(). */
  size_t pool_pos;
  unsigned pool_gen;
  unsigned char pool[NONCE_POOL];
  char ns[MAX_NS + 1];
  char err[256]; /* last SQLite error, copied before a reset or rollback replaces it */
  long busy_ms;      /* how long a writer waits for the write lock */
  double busy_since; /* when the current wait began (monotonic seconds) */
} Store;

/* Busy handler: short waits. SQLite's own (sqlite3_busy_timeout) sleeps 1 ms
 * and more between tries, while a write transaction here takes ~0.1 ms, so
 * with two workers on one file most of their time went to sleeping (p99 of
 * the durable webhook path ~100 ms). Waits grow from 20 us to 1 ms, for at
 * most busy_ms in all. */
static int store_busy(void *arg, int count) {
  Store *s = arg;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double t = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
  if (count == 0) s->busy_since = t;
  else if ((t - s->busy_since) * 1000.0 >= (double)s->busy_ms) return 0;
  long us = 20L << (count < 6 ? count : 6);
  if (us > 1000) us = 1000;
  struct timespec d = {0, us * 1000L};
  nanosleep(&d, NULL);
  return 1;
}

/* Length-prefixed concatenation: the AAD of a box and the input of a blind
 * index. Prefixes make (ns="a", key="bc") and (ns="ab", key="c") differ. */
typedef struct {
  size_t len;
  unsigned char b[AAD_MAX];
} Aad;

static void aad_part(Aad *a, const void *p, size_t n) {
  unsigned char *d = a->b + a->len;
  d[0] = (unsigned char)(n >> 24);
  d[1] = (unsigned char)(n >> 16);
  d[2] = (unsigned char)(n >> 8);
  d[3] = (unsigned char)n;
  if (n > 0) memcpy(d + 4, p, n);
  a->len += 4 + n;
}

/* domain, namespace[, item]: callers check item length <= MAX_KEY. */
static const Aad *aad(Aad *a, const Store *s, const char *domain, const void *item, size_t n) {
  a->len = 0;
  aad_part(a, domain, strlen(domain));
  aad_part(a, s->ns, s->nslen);
  if (item != NULL) aad_part(a, item, n);
  return a;
}

/* ---- small helpers -------------------------------------------------------- */

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double opt_now(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return wall_now();
  lua_Number n = luaL_checknumber(L, arg);
  luaL_argcheck(L, isfinite(n), arg, "now must be a finite number");
  return (double)n;
}

static const char *check_id(lua_State *L, int arg, size_t *len, const char *what) {
  const char *p = luaL_checklstring(L, arg, len);
  if (*len > MAX_KEY) luaL_argerror(L, arg, lua_pushfstring(L, "%s longer than %d bytes", what,
                                                             MAX_KEY));
  return p;
}

static int push_fail(lua_State *L, const char *fmt, ...) {
  va_list ap;
  luaL_pushfail(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return 2;
}

static void record(Store *s) {
  snprintf(s->err, sizeof s->err, "%s", s->db ? sqlite3_errmsg(s->db) : "store closed");
}

static int push_db_fail(lua_State *L, Store *s) {
  return push_fail(L, "oflua.store: %s", s->err);
}

static int push_tampered(lua_State *L, const char *table, sqlite3_int64 id) {
  return push_fail(L,
                   "oflua.store: %s row %I failed authentication (altered, copied from another "
                   "row or namespace, or written under another key)",
                   table, (lua_Integer)id);
}

static int push_other_kid(lua_State *L, const Store *s, const char *table, sqlite3_int64 id,
                          sqlite3_int64 kid) {
  return push_fail(L,
                   "oflua.store: %s row %I is sealed under key id %I but this handle has key id "
                   "%I (was the store rekeyed? reopen it with the current key)",
                   table, (lua_Integer)id, (lua_Integer)kid, (lua_Integer)s->kid);
}

static int push_stale(lua_State *L, const Store *s, sqlite3_int64 kid) {
  return push_fail(L,
                   "oflua.store: the store was rekeyed (key id %I) after this handle opened it "
                   "(key id %I); reopen it with the new key",
                   (lua_Integer)kid, (lua_Integer)s->kid);
}

/* Raise instead of returning: for the list() iterator. */
static int raise_pushed(lua_State *L) {
  return lua_error(L);
}

/* ---- statements and transactions ------------------------------------------ */

static sqlite3_stmt *stmt(Store *s, int id) {
  sqlite3_stmt *st = s->st[id];
  if (st == NULL) {
    if (sqlite3_prepare_v3(s->db, SQL[id], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
        SQLITE_OK) {
      record(s);
      sqlite3_finalize(st);
      return NULL;
    }
    s->st[id] = st;
  } else {
    sqlite3_reset(st); /* a no-op unless an error was raised while it ran */
  }
  return st;
}

/* sqlite3_step that records the error message and resets on failure. */
static int step(Store *s, sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    record(s);
    sqlite3_reset(st);
  }
  return rc;
}

/* Runs a statement without results; 0 or -1 (message in s->err). */
static int exec_st(Store *s, int id) {
  sqlite3_stmt *st = stmt(s, id);
  if (st == NULL) return -1;
  int rc = step(s, st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static void bind_ns(Store *s, sqlite3_stmt *st, int i) {
  sqlite3_bind_text(st, i, s->ns, (int)s->nslen, SQLITE_STATIC);
}

static int itx_begin(Store *s) {
  if (sqlite3_get_autocommit(s->db)) {
    if (exec_st(s, ST_BEGIN) != 0) return -1;
    s->itx = ITX_BEGIN;
  } else {
    if (exec_st(s, ST_SP_I) != 0) return -1;
    s->itx = ITX_SAVEPOINT;
  }
  return 0;
}

static void itx_rollback(Store *s) {
  char keep[sizeof s->err];
  memcpy(keep, s->err, sizeof keep); /* the caller's error, not the rollback's */
  if (s->itx == ITX_BEGIN) {
    if (!sqlite3_get_autocommit(s->db)) exec_st(s, ST_ROLLBACK);
  } else if (s->itx == ITX_SAVEPOINT) {
    exec_st(s, ST_ROLLBACK_I);
    exec_st(s, ST_RELEASE_I);
  }
  s->itx = ITX_NONE;
  memcpy(s->err, keep, sizeof keep);
}

static int itx_commit(Store *s) {
  int rc = exec_st(s, s->itx == ITX_BEGIN ? ST_COMMIT : ST_RELEASE_I);
  if (rc != 0) {
    itx_rollback(s);
    return -1;
  }
  s->itx = ITX_NONE;
  return 0;
}

/* The current kid in oflua_meta, or -1 (message in s->err). */
static sqlite3_int64 meta_kid(Store *s) {
  sqlite3_stmt *st = stmt(s, ST_META_KID);
  if (st == NULL) return -1;
  int rc = step(s, st);
  sqlite3_int64 kid = -1;
  if (rc == SQLITE_ROW) kid = sqlite3_column_int64(st, 0);
  else if (rc == SQLITE_DONE) snprintf(s->err, sizeof s->err, "oflua_meta is empty");
  sqlite3_reset(st);
  return kid;
}

/* After a write changed nothing: pushes nil, err if the handle is stale (or
 * the check fails) and returns 2; returns 0 if the handle is current. */
static int check_fresh(lua_State *L, Store *s) {
  sqlite3_int64 kid = meta_kid(s);
  if (kid < 0) return push_db_fail(L, s);
  if (kid != s->kid) return push_stale(L, s, kid);
  return 0;
}

/* ---- crypto --------------------------------------------------------------- */

static void keys_free(Keys *k) {
  ofc_aead_key_free(k->aead);
  ofc_hmac_key_free(k->index);
  k->aead = NULL;
  k->index = NULL;
}

/* HKDF-SHA256(master, salt, info naming the key id) -> the data and index keys. */
static int derive(const unsigned char *master, const unsigned char *salt, sqlite3_int64 kid,
                  Keys *k) {
  unsigned char dkey[KEY_LEN], ikey[KEY_LEN];
  char info[96];
  int n = snprintf(info, sizeof info, "oflua.store v1 data key, key id %lld", (long long)kid);
  int rc = ofc_hkdf("sha256", master, KEY_LEN, salt, SALT_LEN, info, (size_t)n, dkey, KEY_LEN);
  n = snprintf(info, sizeof info, "oflua.store v1 index key, key id %lld", (long long)kid);
  if (rc == 0)
    rc = ofc_hkdf("sha256", master, KEY_LEN, salt, SALT_LEN, info, (size_t)n, ikey, KEY_LEN);
  if (rc == 0) {
    k->aead = ofc_aead_key_new(dkey);
    k->index = ofc_hmac_key_new("sha256", ikey, KEY_LEN);
    if (k->aead == NULL || k->index == NULL) {
      keys_free(k);
      rc = -1;
    }
  }
  ofc_cleanse(dkey, sizeof dkey);
  ofc_cleanse(ikey, sizeof ikey);
  return rc;
}

static int blind(ofc_hmac_key *k, const Aad *a, unsigned char out[IDX_LEN]) {
  size_t n = 0;
  return ofc_hmac_key_mac(k, a->b, a->len, out, &n) == 0 && n == IDX_LEN ? 0 : -1;
}

/* Bumped in the child after fork(): a handle carried into a child must not
 * hand out the nonces its parent will also use. */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) {
  fork_gen++;
}
static void fork_watch(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}

static int next_nonce(Store *s, unsigned char *out) {
  if (s->pool_pos + NONCE_LEN > sizeof s->pool || s->pool_gen != fork_gen) {
    if (ofc_random(s->pool, sizeof s->pool) != 0) return -1;
    s->pool_pos = 0;
    s->pool_gen = fork_gen;
  }
  memcpy(out, s->pool + s->pool_pos, NONCE_LEN);
  memset(s->pool + s->pool_pos, 0, NONCE_LEN); /* each nonce is handed out once */
  s->pool_pos += NONCE_LEN;
  return 0;
}

/* out: room for n + BOX_OVERHEAD bytes: nonce || ciphertext || tag. */
static int seal(Store *s, ofc_aead_key *k, const void *pt, size_t n, const Aad *a,
                unsigned char *out) {
  if (next_nonce(s, out) != 0) return -1;
  return ofc_aead_key_seal(k, out, pt, n, a->b, a->len, out + NONCE_LEN);
}

/* out: room for boxlen - BOX_OVERHEAD bytes (checked by the caller). */
static int unseal(ofc_aead_key *k, const void *box, size_t boxlen, const Aad *a,
                  unsigned char *out) {
  if (box == NULL || boxlen < BOX_OVERHEAD) return -1;
  const unsigned char *b = box;
  return ofc_aead_key_open(k, b, b + NONCE_LEN, boxlen - NONCE_LEN, a->b, a->len, out);
}

/* Opens a box into a new Lua string pushed on the stack; 0, or -1 with
 * nothing pushed. */
static int unseal_push(lua_State *L, ofc_aead_key *key, const void *box, size_t boxlen,
                       const Aad *a) {
  if (box == NULL || boxlen < BOX_OVERHEAD) return -1;
  int top = lua_gettop(L);
  size_t n = boxlen - BOX_OVERHEAD;
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n);
  if (unseal(key, box, boxlen, a, out) != 0) {
    lua_settop(L, top);
    return -1;
  }
  luaL_pushresultsize(&b, n);
  return 0;
}

/* Opens a small box (a key or an event id) into out[MAX_KEY]. */
static int unseal_small(ofc_aead_key *key, const void *box, size_t boxlen, const Aad *a,
                        unsigned char *out, size_t *outlen) {
  if (box == NULL || boxlen < BOX_OVERHEAD || boxlen - BOX_OVERHEAD > MAX_KEY) return -1;
  *outlen = boxlen - BOX_OVERHEAD;
  return unseal(key, box, boxlen, a, out);
}

/* A sealing buffer: on the C stack when small, else a Lua userdata pushed on
 * the stack (collected with it, so no leak if an error is raised). */
static unsigned char *box_buffer(lua_State *L, unsigned char *small, size_t need) {
  if (need <= SMALL_BOX) return small;
  return (unsigned char *)lua_newuserdatauv(L, need, 0);
}

/* ---- base64 (the master key's text form) ----------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_encode(const unsigned char *in, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16;
    if (i + 1 < n) v |= (unsigned)in[i + 1] << 8;
    if (i + 2 < n) v |= in[i + 2];
    out[o++] = B64[(v >> 18) & 63];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < n ? B64[v & 63] : '=';
  }
  out[o] = '\0';
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Strict decoding of a 32-byte key from padded base64, surrounding white
 * space allowed (key files end with a newline). 0 or -1; never says why in
 * terms of the text, so the key cannot leak into a message. */
static int decode_key(const char *text, size_t n, unsigned char key[KEY_LEN]) {
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ' ||
                   text[n - 1] == '\t'))
    n--;
  while (n > 0 && (text[0] == '\n' || text[0] == '\r' || text[0] == ' ' || text[0] == '\t')) {
    text++;
    n--;
  }
  if (n != 44 || text[43] != '=' || text[42] == '=') return -1;
  unsigned char out[33];
  size_t o = 0;
  int ok = 1;
  for (size_t i = 0; i < 44; i += 4) {
    int v[4];
    for (int j = 0; j < 4; j++) {
      unsigned char c = (unsigned char)text[i + j];
      v[j] = (i + j == 43) ? 0 : b64_value(c);
      if (v[j] < 0) ok = 0;
    }
    if (!ok) break;
    unsigned w = ((unsigned)v[0] << 18) | ((unsigned)v[1] << 12) | ((unsigned)v[2] << 6) |
                 (unsigned)v[3];
    out[o++] = (unsigned char)(w >> 16);
    out[o++] = (unsigned char)(w >> 8);
    out[o++] = (unsigned char)w;
  }
  /* 43 significant characters carry 258 bits: the last 2 must be zero. */
  if (ok && (b64_value((unsigned char)text[42]) & 3) != 0) ok = 0;
  if (ok) memcpy(key, out, KEY_LEN);
  ofc_cleanse(out, sizeof out);
  return ok ? 0 : -1;
}

#define KEY_FORMAT_MSG "the store key must be the base64 text of exactly 32 bytes (oflua store keygen)"

/* Reads and decodes a key file that only its owner may read. Pushes nil, err
 * and returns 2 on failure, 0 on success. */
static int read_key_file(lua_State *L, const char *path, unsigned char key[KEY_LEN]) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return push_fail(L, "oflua.store: cannot open key file %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return push_fail(L, "oflua.store: cannot stat key file %s: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return push_fail(L, "oflua.store: key file %s is not a regular file", path);
  }
  if ((st.st_mode & 077) != 0) {
    char mode[16];
    snprintf(mode, sizeof mode, "%04o", (unsigned)(st.st_mode & 07777));
    close(fd);
    return push_fail(L,
                     "oflua.store: key file %s is accessible by group or others (mode %s); "
                     "run: chmod 600 %s",
                     path, mode, path);
  }
  char buf[256];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf + got, sizeof buf - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      ofc_cleanse(buf, sizeof buf);
      return push_fail(L, "oflua.store: cannot read key file %s: %s", path, strerror(e));
    }
    if (r == 0 || (got += (size_t)r) == sizeof buf) break;
  }
  close(fd);
  int rc = got < sizeof buf ? decode_key(buf, got, key) : -1;
  ofc_cleanse(buf, sizeof buf);
  if (rc != 0) return push_fail(L, "oflua.store: key file %s: " KEY_FORMAT_MSG, path);
  return 0;
}

/* ---- open and close -------------------------------------------------------- */

static void store_shut(Store *s) {
  if (s->db != NULL) {
    for (int i = 0; i < ST_COUNT; i++) {
      sqlite3_finalize(s->st[i]);
      s->st[i] = NULL;
    }
    /* Every statement is finalized, so this closes (and, as the last
     * connection, checkpoints the WAL into the database file). */
    if (sqlite3_close(s->db) != SQLITE_OK) sqlite3_close_v2(s->db);
    s->db = NULL;
  }
  keys_free(&s->keys);
  ofc_cleanse(s->pool, sizeof s->pool);
  s->pool_pos = sizeof s->pool;
  s->itx = ITX_NONE;
}

static Store *to_store(lua_State *L, int idx) {
  return (Store *)luaL_checkudata(L, idx, STORE_MT);
}

static Store *check_open(lua_State *L, int idx) {
  Store *s = to_store(L, idx);
  if (s->db == NULL) luaL_error(L, "oflua.store: the store is closed");
  if (s->itx != ITX_NONE) itx_rollback(s); /* left by an error raised mid-operation */
  return s;
}

static int simple_exec(Store *s, const char *sql) {
  if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
    record(s);
    return -1;
  }
  return 0;
}

/* Seals the key-check value for kid into box[sizeof CHECK_TEXT - 1 + 28]. */
#define CHECK_BOX_LEN (sizeof CHECK_TEXT - 1 + BOX_OVERHEAD)

static const Aad *check_aad(Aad *a, sqlite3_int64 kid, const unsigned char *salt) {
  char k[32];
  int n = snprintf(k, sizeof k, "%lld", (long long)kid);
  a->len = 0;
  aad_part(a, D_CHECK, strlen(D_CHECK));
  aad_part(a, k, (size_t)n);
  aad_part(a, salt, SALT_LEN);
  return a;
}

/* Creates the schema and the meta row if missing (two processes may race
 * here: CREATE IF NOT EXISTS and ON CONFLICT DO NOTHING in one IMMEDIATE
 * transaction make the loser a no-op). */
static int create_schema(Store *s, const unsigned char *master) {
  unsigned char salt[SALT_LEN], box[CHECK_BOX_LEN];
  Keys k = {NULL, NULL};
  Aad a;
  int rc = -1;
  if (ofc_random(salt, sizeof salt) != 0 || derive(master, salt, 1, &k) != 0 ||
      seal(s, k.aead, CHECK_TEXT, sizeof CHECK_TEXT - 1, check_aad(&a, 1, salt), box) != 0) {
    snprintf(s->err, sizeof s->err, "key derivation failed");
    goto out;
  }
  if (simple_exec(s, "BEGIN IMMEDIATE") != 0) goto out;
  sqlite3_stmt *st = NULL;
  if (simple_exec(s, SCHEMA) != 0 ||
      sqlite3_prepare_v2(s->db,
                         "INSERT INTO oflua_meta (one, format, kid, salt, check_box)"
                         " VALUES (1, ?1, 1, ?2, ?3) ON CONFLICT (one) DO NOTHING",
                         -1, &st, NULL) != SQLITE_OK) {
    record(s);
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    goto out;
  }
  sqlite3_bind_int(st, 1, STORE_FORMAT);
  sqlite3_bind_blob(st, 2, salt, SALT_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, box, (int)sizeof box, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE) {
    record(s);
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    goto out;
  }
  sqlite3_finalize(st);
  if (simple_exec(s, "COMMIT") != 0) {
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    goto out;
  }
  rc = 0;
out:
  keys_free(&k);
  return rc;
}

typedef struct {
  const char *path;
  const char *key;
  size_t keylen;
  const char *key_file;
  const char *ns;
  size_t nslen;
  const char *sync;
  lua_Integer busy_ms;
  int create;
} OpenOpts;

static const char *opt_string(lua_State *L, int t, const char *name, size_t *len) {
  lua_getfield(L, t, name);
  const char *v = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "oflua.store: option '%s' must be a string", name);
    v = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1); /* the string stays alive in the options table */
  return v;
}

static void read_open_opts(lua_State *L, int t, OpenOpts *o) {
  memset(o, 0, sizeof *o);
  o->path = opt_string(L, t, "path", NULL);
  o->key = opt_string(L, t, "key", &o->keylen);
  o->key_file = opt_string(L, t, "key_file", NULL);
  o->ns = opt_string(L, t, "namespace", &o->nslen);
  o->sync = opt_string(L, t, "synchronous", NULL);
  lua_getfield(L, t, "busy_timeout_ms");
  o->busy_ms = 5000;
  if (!lua_isnil(L, -1)) {
    int isnum = 0;
    o->busy_ms = lua_tointegerx(L, -1, &isnum);
    if (!isnum || o->busy_ms < 0 || o->busy_ms > 3600000)
      luaL_error(L, "oflua.store: option 'busy_timeout_ms' must be an integer in [0, 3600000]");
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "create");
  o->create = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (o->ns == NULL) {
    o->ns = "default";
    o->nslen = 7;
  }
  if (o->nslen == 0 || o->nslen > MAX_NS || memchr(o->ns, '\0', o->nslen) != NULL)
    luaL_error(L, "oflua.store: option 'namespace' must be 1 to %d bytes without NUL", MAX_NS);
  if (o->sync == NULL) o->sync = "NORMAL";
  if (strcasecmp(o->sync, "NORMAL") != 0 && strcasecmp(o->sync, "FULL") != 0)
    luaL_error(L, "oflua.store: option 'synchronous' must be \"NORMAL\" or \"FULL\"");
}

/* Opens the handle s with options o; 0, or pushes nil, err and returns 2. */
static int open_store(lua_State *L, Store *s, const OpenOpts *o) {
  unsigned char master[KEY_LEN];
  int ret = 0;
  if (o->key != NULL) {
    if (decode_key(o->key, o->keylen, master) != 0)
      return push_fail(L, "oflua.store: " KEY_FORMAT_MSG);
  } else if (read_key_file(L, o->key_file, master) != 0) {
    return 2;
  }

  int memory = strcmp(o->path, ":memory:") == 0;
  struct stat fst;
  if (!memory && stat(o->path, &fst) != 0) {
    if (errno != ENOENT || !o->create) {
      ret = push_fail(L, "oflua.store: no store at %s (%s)", o->path, strerror(errno));
      goto out;
    }
    /* Create the file ourselves so it (and its -wal/-shm, which SQLite gives
     * the same mode) is 0600 from the first byte. */
    int fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
      ret = push_fail(L, "oflua.store: cannot create %s: %s", o->path, strerror(errno));
      goto out;
    }
    if (fd >= 0) close(fd);
  }

  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (o->create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(o->path, &s->db, flags, NULL) != SQLITE_OK) {
    ret = push_fail(L, "oflua.store: cannot open %s: %s", o->path,
                    s->db ? sqlite3_errmsg(s->db) : "out of memory");
    goto out;
  }
  sqlite3_extended_result_codes(s->db, 1);
  s->busy_ms = (long)o->busy_ms;
  sqlite3_busy_handler(s->db, store_busy, s);
  /* A store file is data, not code: no triggers or views from it run with
   * privileges, and no SQL can corrupt it on purpose. */
  sqlite3_db_config(s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
  sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);

  char pragmas[128];
  snprintf(pragmas, sizeof pragmas, "PRAGMA synchronous=%s; PRAGMA secure_delete=FAST;",
           strcasecmp(o->sync, "FULL") == 0 ? "FULL" : "NORMAL");
  if (simple_exec(s, pragmas) != 0) goto db_fail;
  if (!memory) {
    /* Switching a new file to WAL needs an exclusive lock, and SQLite answers
     * SQLITE_BUSY here without calling the busy handler when another
     * connection is opening the same new file: retry for busy_timeout_ms. */
    int ok = 0;
    for (lua_Integer waited = 0;; waited += 5) {
      sqlite3_stmt *st = NULL;
      int rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
      if (rc == SQLITE_OK) rc = sqlite3_step(st);
      const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
      ok = mode != NULL && strcmp(mode, "wal") == 0;
      int busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
      if (!ok) record(s);
      sqlite3_finalize(st);
      if (ok || !busy || waited >= o->busy_ms) break;
      sqlite3_sleep(5);
    }
    if (!ok) goto db_fail;
  }

  memcpy(s->ns, o->ns, o->nslen);
  s->ns[o->nslen] = '\0';
  s->nslen = o->nslen;

  for (int attempt = 0;; attempt++) {
    sqlite3_stmt *st = stmt(s, ST_META);
    int rc = st ? step(s, st) : SQLITE_ERROR;
    if (rc == SQLITE_ROW) {
      sqlite3_int64 format = sqlite3_column_int64(st, 0);
      s->kid = sqlite3_column_int64(st, 1);
      const void *salt = sqlite3_column_blob(st, 2);
      int saltlen = sqlite3_column_bytes(st, 2);
      const void *box = sqlite3_column_blob(st, 3);
      int boxlen = sqlite3_column_bytes(st, 3);
      if (format != STORE_FORMAT) {
        sqlite3_reset(st);
        ret = push_fail(L, "oflua.store: %s has store format %I, this oflua reads format %d",
                        o->path, (lua_Integer)format, STORE_FORMAT);
        goto out;
      }
      unsigned char check[CHECK_BOX_LEN];
      Aad a;
      int good = saltlen == SALT_LEN && s->kid > 0 && boxlen == (int)CHECK_BOX_LEN;
      if (good) {
        memcpy(s->salt, salt, SALT_LEN);
        good = derive(master, s->salt, s->kid, &s->keys) == 0 &&
               unseal(s->keys.aead, box, (size_t)boxlen, check_aad(&a, s->kid, s->salt), check) == 0 &&
               memcmp(check, CHECK_TEXT, sizeof CHECK_TEXT - 1) == 0;
      }
      sqlite3_reset(st);
      if (!good) {
        ret = push_fail(L, "oflua.store: wrong key for %s (the key check failed)", o->path);
        goto out;
      }
      break;
    }
    if (st != NULL && rc == SQLITE_DONE) sqlite3_reset(st);
    if (st != NULL && rc != SQLITE_DONE) goto db_fail;
    /* No meta row, or no tables yet. */
    if (attempt > 0) goto db_fail;
    sqlite3_stmt *t = NULL;
    int exists = 0;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT count(*) FROM sqlite_master WHERE name = 'oflua_meta'", -1, &t,
                           NULL) != SQLITE_OK ||
        sqlite3_step(t) != SQLITE_ROW) {
      record(s);
      sqlite3_finalize(t);
      goto db_fail;
    }
    exists = sqlite3_column_int(t, 0) > 0;
    sqlite3_finalize(t);
    if (!exists && !o->create) {
      ret = push_fail(L, "oflua.store: %s is not an oflua store", o->path);
      goto out;
    }
    if (create_schema(s, master) != 0) goto db_fail;
  }
  goto out;

db_fail:
  ret = push_fail(L, "oflua.store: cannot open %s: %s", o->path, s->err);
out:
  ofc_cleanse(master, sizeof master);
  return ret;
}

static int new_handle(lua_State *L, int opts) {
  OpenOpts o;
  read_open_opts(L, opts, &o);
  if (o.path == NULL || o.path[0] == '\0')
    luaL_error(L, "oflua.store: option 'path' is required");
  if ((o.key == NULL) == (o.key_file == NULL))
    luaL_error(L, "oflua.store: give exactly one of the options 'key' and 'key_file'");
  Store *s = (Store *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->pool_pos = sizeof s->pool; /* empty: the first nonce fills it */
  luaL_setmetatable(L, STORE_MT);
  lua_pushstring(L, o.path);
  lua_setiuservalue(L, -2, 1);
  int h = lua_gettop(L);
  if (open_store(L, s, &o) != 0) {
    store_shut(s);
    lua_remove(L, h);
    return 2;
  }
  lua_settop(L, h);
  return 1;
}

/* store.open{path, key | key_file, namespace, synchronous, busy_timeout_ms, create} */
static int store_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  return new_handle(L, 1);
}

/* store.open_env{...}: like open, with path from $OFLUA_STORE and the key
 * from $OFLUA_STORE_KEY_FILE or $OFLUA_STORE_KEY when not given. */
static int store_open_env(lua_State *L) {
  lua_settop(L, 1);
  lua_newtable(L);
  int t = lua_gettop(L);
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, t);
    }
  }
  lua_getfield(L, t, "path");
  if (lua_isnil(L, -1)) {
    const char *p = getenv("OFLUA_STORE");
    if (p == NULL || p[0] == '\0')
      return push_fail(L, "oflua.store: no store path (set OFLUA_STORE or pass path)");
    lua_pushstring(L, p);
    lua_setfield(L, t, "path");
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "key");
  lua_getfield(L, t, "key_file");
  if (lua_isnil(L, -1) && lua_isnil(L, -2)) {
    const char *f = getenv("OFLUA_STORE_KEY_FILE");
    const char *k = getenv("OFLUA_STORE_KEY");
    if (f != NULL && f[0] != '\0') {
      lua_pushstring(L, f);
      lua_setfield(L, t, "key_file");
    } else if (k != NULL && k[0] != '\0') {
      lua_pushstring(L, k);
      lua_setfield(L, t, "key");
    } else {
      return push_fail(L, "oflua.store: no store key (set OFLUA_STORE_KEY_FILE or "
                          "OFLUA_STORE_KEY)");
    }
  }
  lua_pop(L, 2);
  return new_handle(L, t);
}

static int store_close(lua_State *L) {
  Store *s = to_store(L, 1);
  if (s->utx > 0 && s->db != NULL)
    return luaL_error(L, "oflua.store: cannot close the store inside s:transaction()");
  store_shut(s);
  return 0;
}

static int store_gc(lua_State *L) {
  store_shut(to_store(L, 1));
  return 0;
}

static int store_tostring(lua_State *L) {
  Store *s = to_store(L, 1);
  lua_getiuservalue(L, 1, 1);
  if (s->db == NULL)
    lua_pushfstring(L, "oflua.store (closed) %s", lua_tostring(L, -1));
  else
    lua_pushfstring(L, "oflua.store %s namespace %s", lua_tostring(L, -1), s->ns);
  return 1;
}

/* s:info() -> {path, namespace, key_id, format, sqlite_version} */
static int store_info(lua_State *L) {
  Store *s = check_open(L, 1);
  lua_createtable(L, 0, 5);
  lua_getiuservalue(L, 1, 1);
  lua_setfield(L, -2, "path");
  lua_pushlstring(L, s->ns, s->nslen);
  lua_setfield(L, -2, "namespace");
  lua_pushinteger(L, (lua_Integer)s->kid);
  lua_setfield(L, -2, "key_id");
  lua_pushinteger(L, STORE_FORMAT);
  lua_setfield(L, -2, "format");
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
  return 1;
}

/* ---- key/value ------------------------------------------------------------- */

static int value_fits(Store *s, size_t n) {
  int limit = sqlite3_limit(s->db, SQLITE_LIMIT_LENGTH, -1);
  return n <= (size_t)limit - BOX_OVERHEAD && n <= (size_t)INT32_MAX - BOX_OVERHEAD;
}

/* s:get(key) -> value | nil (absent) | nil, err */
static int store_get(lua_State *L) {
  Store *s = check_open(L, 1);
  size_t klen;
  const char *key = check_id(L, 2, &klen, "key");
  Aad a;
  unsigned char idx[IDX_LEN];
  if (blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0)
    return push_fail(L, "oflua.store: HMAC failed");
  sqlite3_stmt *st = stmt(s, ST_KV_GET);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
  int rc = step(s, st);
  if (rc == SQLITE_DONE) {
    /* Absent, or looked up with the index key of a retired key id: a row
     * found carries its kid (checked below), a miss needs the meta check. */
    sqlite3_reset(st);
    int r = check_fresh(L, s);
    if (r) return r;
    lua_pushnil(L);
    return 1;
  }
  if (rc != SQLITE_ROW) return push_db_fail(L, s);
  sqlite3_int64 id = sqlite3_column_int64(st, 0), kid = sqlite3_column_int64(st, 1);
  if (kid != s->kid) {
    sqlite3_reset(st);
    sqlite3_int64 mkid = meta_kid(s);
    if (mkid > 0 && mkid != s->kid) return push_stale(L, s, mkid);
    return push_other_kid(L, s, "oflua_kv", id, kid);
  }
  const void *box = sqlite3_column_blob(st, 2);
  size_t boxlen = (size_t)sqlite3_column_bytes(st, 2);
  rc = unseal_push(L, s->keys.aead, box, boxlen, aad(&a, s, D_KV_VALUE, key, klen));
  sqlite3_reset(st);
  if (rc != 0) return push_tampered(L, "oflua_kv", id);
  return 1;
}

/* s:put(key, value) -> true | nil, err */
static int store_put(lua_State *L) {
  Store *s = check_open(L, 1);
  size_t klen, vlen;
  const char *key = check_id(L, 2, &klen, "key");
  const char *val = luaL_checklstring(L, 3, &vlen);
  if (!value_fits(s, vlen)) return push_fail(L, "oflua.store: value too large");
  Aad a;
  unsigned char idx[IDX_LEN], kbox[MAX_KEY + BOX_OVERHEAD], small[SMALL_BOX];
  unsigned char *vbox = box_buffer(L, small, vlen + BOX_OVERHEAD);
  if (blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0 ||
      seal(s, s->keys.aead, key, klen, aad(&a, s, D_KV_KEY, NULL, 0), kbox) != 0 ||
      seal(s, s->keys.aead, val, vlen, aad(&a, s, D_KV_VALUE, key, klen), vbox) != 0)
    return push_fail(L, "oflua.store: encryption failed");
  sqlite3_stmt *st = stmt(s, ST_KV_PUT);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, s->kid);
  sqlite3_bind_blob(st, 4, kbox, (int)(klen + BOX_OVERHEAD), SQLITE_STATIC);
  sqlite3_bind_blob(st, 5, vbox, (int)(vlen + BOX_OVERHEAD), SQLITE_STATIC);
  int rc = step(s, st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  if (sqlite3_changes(s->db) == 0) {
    int r = check_fresh(L, s);
    if (r) return r;
    return push_fail(L, "oflua.store: the write changed nothing");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* s:delete(key) -> true (deleted) | false (absent) | nil, err */
static int store_delete(lua_State *L) {
  Store *s = check_open(L, 1);
  size_t klen;
  const char *key = check_id(L, 2, &klen, "key");
  Aad a;
  unsigned char idx[IDX_LEN];
  if (blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0)
    return push_fail(L, "oflua.store: HMAC failed");
  sqlite3_stmt *st = stmt(s, ST_KV_DEL);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, s->kid);
  int rc = step(s, st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  if (sqlite3_changes(s->db) == 0) {
    int r = check_fresh(L, s);
    if (r) return r;
  }
  lua_pushboolean(L, sqlite3_changes(s->db) > 0);
  return 1;
}

/* The list() iterator. Upvalues: store, prefix, last row id seen. Each call
 * seeks the next row of the namespace by rowid (so no statement stays open
 * between calls, and writes made by the loop body are well defined), opens its
 * key and, if the prefix matches, its value. */
static int list_iter(lua_State *L) {
  Store *s = check_open(L, lua_upvalueindex(1));
  size_t plen;
  const char *prefix = lua_tolstring(L, lua_upvalueindex(2), &plen);
  sqlite3_int64 last = (sqlite3_int64)lua_tointeger(L, lua_upvalueindex(3));
  unsigned char key[MAX_KEY];
  Aad a;
  for (;;) {
    sqlite3_stmt *st = stmt(s, ST_KV_NEXT);
    if (st == NULL) return push_db_fail(L, s), raise_pushed(L);
    bind_ns(s, st, 1);
    sqlite3_bind_int64(st, 2, last);
    int rc = step(s, st);
    if (rc == SQLITE_DONE) {
      sqlite3_reset(st);
      return 0;
    }
    if (rc != SQLITE_ROW) return push_db_fail(L, s), raise_pushed(L);
    sqlite3_int64 id = sqlite3_column_int64(st, 0), kid = sqlite3_column_int64(st, 1);
    last = id;
    if (kid != s->kid) {
      sqlite3_reset(st);
      return push_other_kid(L, s, "oflua_kv", id, kid), raise_pushed(L);
    }
    size_t klen = 0;
    if (unseal_small(s->keys.aead, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                     aad(&a, s, D_KV_KEY, NULL, 0), key, &klen) != 0) {
      sqlite3_reset(st);
      return push_tampered(L, "oflua_kv", id), raise_pushed(L);
    }
    if (klen < plen || memcmp(key, prefix, plen) != 0) {
      ofc_cleanse(key, klen);
      sqlite3_reset(st);
      continue;
    }
    lua_pushinteger(L, (lua_Integer)last);
    lua_replace(L, lua_upvalueindex(3));
    lua_pushlstring(L, (const char *)key, klen);
    int bad = unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 3),
                          (size_t)sqlite3_column_bytes(st, 3),
                          aad(&a, s, D_KV_VALUE, key, klen));
    ofc_cleanse(key, klen);
    sqlite3_reset(st);
    if (bad) return push_tampered(L, "oflua_kv", id), raise_pushed(L);
    return 2;
  }
}

/* s:list([prefix]) -> iterator over key, value (rowid order). Every row of
 * the namespace has its key decrypted to test the prefix: O(rows), fine for
 * thousands of rows. Raises on a database error or a tampered row. */
static int store_list(lua_State *L) {
  check_open(L, 1);
  luaL_optlstring(L, 2, "", NULL);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    lua_pushliteral(L, "");
    lua_replace(L, 2);
  }
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, list_iter, 3);
  return 1;
}

/* s:transaction(fn) -> fn's results. fn(s) runs inside BEGIN IMMEDIATE (a
 * savepoint when nested) and commits when it returns; if it raises, the
 * transaction is rolled back and the error re-raised. nil, err if the
 * transaction cannot start or commit. */
static int store_transaction(lua_State *L) {
  Store *s = check_open(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  int outer = sqlite3_get_autocommit(s->db);
  if (exec_st(s, outer ? ST_BEGIN : ST_SP_U) != 0) return push_db_fail(L, s);
  s->utx++;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  int status = lua_pcall(L, 1, LUA_MULTRET, 0);
  s->utx--;
  if (s->db == NULL) {
    if (status != LUA_OK) return lua_error(L);
    return luaL_error(L, "oflua.store: the store was closed inside its transaction");
  }
  if (status != LUA_OK) {
    s->itx = ITX_NONE; /* an internal savepoint left by an error goes with this rollback */
    if (outer) {
      if (!sqlite3_get_autocommit(s->db)) exec_st(s, ST_ROLLBACK);
    } else {
      exec_st(s, ST_ROLLBACK_U);
      exec_st(s, ST_RELEASE_U);
    }
    return lua_error(L);
  }
  /* fn caught an error raised in the middle of one of our operations: undo
   * that operation's partial writes before committing the rest. */
  if (s->itx != ITX_NONE) itx_rollback(s);
  if (exec_st(s, outer ? ST_COMMIT : ST_RELEASE_U) != 0) {
    int top = lua_gettop(L);
    push_db_fail(L, s);
    if (outer) {
      if (!sqlite3_get_autocommit(s->db)) exec_st(s, ST_ROLLBACK);
    } else {
      exec_st(s, ST_ROLLBACK_U);
      exec_st(s, ST_RELEASE_U);
    }
    return lua_gettop(L) - top;
  }
  return lua_gettop(L) - 2;
}

/* ---- rekey ----------------------------------------------------------------- */

/* A growable heap buffer for plaintext during rekey; wiped before reuse ends. */
typedef struct {
  unsigned char *p;
  size_t cap;
} Buf;

static unsigned char *buf_need(Buf *b, size_t n) {
  if (n <= b->cap && b->p != NULL) return b->p;
  if (b->p != NULL) {
    ofc_cleanse(b->p, b->cap);
    free(b->p);
  }
  b->cap = n < 4096 ? 4096 : n;
  b->p = malloc(b->cap);
  if (b->p == NULL) b->cap = 0;
  return b->p;
}

static void buf_free(Buf *b) {
  if (b->p != NULL) {
    ofc_cleanse(b->p, b->cap);
    free(b->p);
  }
  b->p = NULL;
  b->cap = 0;
}

typedef struct {
  Store *s;     /* namespace field is switched row by row */
  Keys next; /* the keys being rotated to, for key id next_kid */
  sqlite3_int64 next_kid;
  Buf pt, ct, ct2;
  unsigned char small[MAX_KEY + BOX_OVERHEAD];
  unsigned char small2[MAX_KEY];
  sqlite3_int64 rows;
  sqlite3_int64 bad_id;     /* the row a REKEY_TAMPERED / REKEY_OTHER_KID failure names */
  const char *bad_table;
  int fail;
} Rekey;

enum { REKEY_DB = 1, REKEY_TAMPERED, REKEY_OTHER_KID };

static void set_ns(Store *s, const unsigned char *ns, size_t n) {
  if (n > MAX_NS) n = MAX_NS;
  if (n > 0) memcpy(s->ns, ns, n);
  s->ns[n] = '\0';
  s->nslen = n;
}

/* Steps statement `which` (columns id, ns, kid, ...) to the row after *last,
 * records it as the row being re-sealed (for the error message) and checks
 * its key id. Returns the statement positioned on that row; NULL with
 * *rc = 0 when no row is left, or *rc = -1 on an error (r->fail or s->err
 * says which). */
static sqlite3_stmt *rekey_row(Rekey *r, int which, const char *table, sqlite3_int64 *last,
                               int *rc) {
  Store *s = r->s;
  *rc = -1;
  sqlite3_stmt *st = stmt(s, which);
  if (st == NULL) return NULL;
  sqlite3_bind_int64(st, 1, *last);
  int sr = step(s, st);
  if (sr == SQLITE_DONE) {
    sqlite3_reset(st);
    *rc = 0;
    return NULL;
  }
  if (sr != SQLITE_ROW) return NULL;
  *last = sqlite3_column_int64(st, 0);
  r->bad_id = *last;
  r->bad_table = table;
  set_ns(s, sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1));
  if (sqlite3_column_int64(st, 2) != s->kid) {
    r->fail = REKEY_OTHER_KID;
    sqlite3_reset(st);
    return NULL;
  }
  return st;
}

/* Re-seals every oflua_kv row. 0, or -1 with r->bad_* or s->err set. */
static int rekey_kv(Rekey *r) {
  Store *s = r->s;
  Aad a;
  sqlite3_int64 last = 0;
  for (;;) {
    int rc;
    sqlite3_stmt *st = rekey_row(r, ST_KV_ALL, "oflua_kv", &last, &rc);
    if (st == NULL) return rc;
    sqlite3_int64 id = last;
    unsigned char *key = r->small2;
    size_t klen = 0, vlen;
    const void *vb = sqlite3_column_blob(st, 4);
    size_t vblen = (size_t)sqlite3_column_bytes(st, 4);
    unsigned char *val = vblen >= BOX_OVERHEAD ? buf_need(&r->pt, vblen) : NULL;
    unsigned char *vbox = buf_need(&r->ct, vblen);
    if (vblen >= BOX_OVERHEAD && (val == NULL || vbox == NULL)) {
      sqlite3_reset(st);
      snprintf(s->err, sizeof s->err, "out of memory");
      return -1;
    }
    vlen = vblen - BOX_OVERHEAD;
    if (unseal_small(s->keys.aead, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3),
                     aad(&a, s, D_KV_KEY, NULL, 0), key, &klen) != 0 ||
        unseal(s->keys.aead, vb, vblen, aad(&a, s, D_KV_VALUE, key, klen), val) != 0) {
      sqlite3_reset(st);
      r->fail = REKEY_TAMPERED;
      return -1;
    }
    sqlite3_reset(st);
    unsigned char idx[IDX_LEN];
    if (blind(r->next.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0 ||
        seal(s, r->next.aead, key, klen, aad(&a, s, D_KV_KEY, NULL, 0), r->small) != 0 ||
        seal(s, r->next.aead, val, vlen, aad(&a, s, D_KV_VALUE, key, klen), vbox) != 0) {
      snprintf(s->err, sizeof s->err, "encryption failed");
      return -1;
    }
    ofc_cleanse(key, klen);
    ofc_cleanse(val, vlen);
    st = stmt(s, ST_KV_RESEAL);
    if (st == NULL) return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->next_kid);
    sqlite3_bind_blob(st, 4, r->small, (int)(klen + BOX_OVERHEAD), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, vbox, (int)vblen, SQLITE_STATIC);
    rc = step(s, st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
      return -1;
    }
    r->rows++;
  }
}

/* Re-seals every oflua_inbox row (event id, payload, last error). */
static int rekey_inbox(Rekey *r) {
  Store *s = r->s;
  Aad a;
  sqlite3_int64 last = 0;
  for (;;) {
    int rc;
    sqlite3_stmt *st = rekey_row(r, ST_IN_ALL, "oflua_inbox", &last, &rc);
    if (st == NULL) return rc;
    sqlite3_int64 id = last;
    unsigned char *eid = r->small2;
    size_t elen = 0;
    const void *pb = sqlite3_column_blob(st, 4), *rb = sqlite3_column_blob(st, 5);
    size_t pblen = (size_t)sqlite3_column_bytes(st, 4), rblen = (size_t)sqlite3_column_bytes(st, 5);
    int has_reason = sqlite3_column_type(st, 5) != SQLITE_NULL;
    size_t plen = pblen - BOX_OVERHEAD, rlen = rblen - BOX_OVERHEAD;
    if (pblen < BOX_OVERHEAD || (has_reason && rblen < BOX_OVERHEAD)) {
      sqlite3_reset(st);
      r->fail = REKEY_TAMPERED;
      return -1;
    }
    /* pt holds payload then reason; ct their new boxes. */
    size_t rl = has_reason ? rlen : 0;
    unsigned char *pt = buf_need(&r->pt, plen + rl + 1);
    unsigned char *ct = buf_need(&r->ct, pblen);
    unsigned char *ct2 = buf_need(&r->ct2, (has_reason ? rblen : 0) + 1);
    if (pt == NULL || ct == NULL || ct2 == NULL) {
      sqlite3_reset(st);
      snprintf(s->err, sizeof s->err, "out of memory");
      return -1;
    }
    if (unseal_small(s->keys.aead, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3),
                     aad(&a, s, D_IN_ID, NULL, 0), eid, &elen) != 0 ||
        unseal(s->keys.aead, pb, pblen, aad(&a, s, D_IN_PAYLOAD, eid, elen), pt) != 0 ||
        (has_reason &&
         unseal(s->keys.aead, rb, rblen, aad(&a, s, D_IN_REASON, eid, elen), pt + plen) != 0)) {
      sqlite3_reset(st);
      r->fail = REKEY_TAMPERED;
      return -1;
    }
    sqlite3_reset(st);
    unsigned char idx[IDX_LEN];
    if (blind(r->next.index, aad(&a, s, D_IN_INDEX, eid, elen), idx) != 0 ||
        seal(s, r->next.aead, eid, elen, aad(&a, s, D_IN_ID, NULL, 0), r->small) != 0 ||
        seal(s, r->next.aead, pt, plen, aad(&a, s, D_IN_PAYLOAD, eid, elen), ct) != 0 ||
        (has_reason &&
         seal(s, r->next.aead, pt + plen, rlen, aad(&a, s, D_IN_REASON, eid, elen), ct2) !=
             0)) {
      snprintf(s->err, sizeof s->err, "encryption failed");
      return -1;
    }
    ofc_cleanse(eid, elen);
    ofc_cleanse(pt, plen + rl);
    st = stmt(s, ST_IN_RESEAL);
    if (st == NULL) return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->next_kid);
    sqlite3_bind_blob(st, 4, r->small, (int)(elen + BOX_OVERHEAD), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, ct, (int)pblen, SQLITE_STATIC);
    if (has_reason)
      sqlite3_bind_blob(st, 6, ct2, (int)rblen, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 6);
    rc = step(s, st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
      return -1;
    }
    r->rows++;
  }
}

/* s:rekey(new_key | {key = base64} | {key_file = path}) -> true, rows | nil, err.
 * Re-seals every row of
 * every namespace and the key check under keys derived from the new master
 * key (key id + 1), in one transaction: either all rows move or none. Then
 * checkpoints the WAL so old ciphertexts do not linger in it (best effort:
 * another process reading at that moment keeps its frames until later). */
static int store_rekey(lua_State *L) {
  Store *s = check_open(L, 1);
  size_t n = 0;
  const char *text = NULL, *file = NULL;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "key");
    lua_getfield(L, 2, "key_file");
    text = lua_tolstring(L, -2, &n);
    file = lua_tostring(L, -1);
    if ((text == NULL) == (file == NULL))
      return luaL_argerror(L, 2, "give exactly one of the fields 'key' and 'key_file'");
  } else {
    text = luaL_checklstring(L, 2, &n);
  }
  if (!sqlite3_get_autocommit(s->db))
    return push_fail(L, "oflua.store: rekey cannot run inside a transaction");
  unsigned char master[KEY_LEN];
  if (text != NULL && decode_key(text, n, master) != 0)
    return push_fail(L, "oflua.store: " KEY_FORMAT_MSG);
  if (text == NULL && read_key_file(L, file, master) != 0) return 2;
  Rekey *r = (Rekey *)lua_newuserdatauv(L, sizeof *r, 0); /* large: not on the C stack */
  memset(r, 0, sizeof *r);
  r->s = s;
  r->next_kid = s->kid + 1;
  int dk = derive(master, s->salt, r->next_kid, &r->next);
  ofc_cleanse(master, sizeof master);
  char saved_ns[MAX_NS + 1];
  size_t saved_nslen = s->nslen;
  memcpy(saved_ns, s->ns, sizeof saved_ns);
  int ret = 0;
  if (dk != 0) {
    ret = push_fail(L, "oflua.store: key derivation failed");
    goto out;
  }
  if (itx_begin(s) != 0) {
    ret = push_db_fail(L, s);
    goto out;
  }
  sqlite3_int64 kid = meta_kid(s);
  if (kid != s->kid) {
    itx_rollback(s);
    ret = kid < 0 ? push_db_fail(L, s) : push_stale(L, s, kid);
    goto out;
  }
  simple_exec(s, "PRAGMA secure_delete=ON"); /* overwrite the old ciphertexts in place */
  int rc = rekey_kv(r);
  if (rc == 0) rc = rekey_inbox(r);
  if (rc == 0) {
    Aad a;
    unsigned char box[CHECK_BOX_LEN];
    sqlite3_stmt *st = NULL;
    if (seal(s, r->next.aead, CHECK_TEXT, sizeof CHECK_TEXT - 1,
             check_aad(&a, r->next_kid, s->salt), box) != 0) {
      snprintf(s->err, sizeof s->err, "encryption failed");
      rc = -1;
    } else if ((st = stmt(s, ST_META_SET)) == NULL) {
      rc = -1;
    } else {
      sqlite3_bind_int64(st, 1, r->next_kid);
      sqlite3_bind_blob(st, 2, box, (int)sizeof box, SQLITE_STATIC);
      rc = step(s, st) == SQLITE_DONE ? 0 : -1;
      sqlite3_reset(st);
    }
  }
  if (rc == 0) rc = itx_commit(s);
  else itx_rollback(s);
  simple_exec(s, "PRAGMA secure_delete=FAST");
  memcpy(s->ns, saved_ns, sizeof saved_ns);
  s->nslen = saved_nslen;
  if (rc != 0) {
    if (r->fail == REKEY_OTHER_KID)
      ret = push_fail(L,
                      "oflua.store: rekey stopped at %s row %I, which is sealed under another "
                      "key id; nothing was changed",
                      r->bad_table, (lua_Integer)r->bad_id);
    else if (r->fail == REKEY_TAMPERED)
      ret = push_fail(L,
                      "oflua.store: rekey stopped at %s row %I, which failed authentication "
                      "(altered or copied from another row); nothing was changed",
                      r->bad_table, (lua_Integer)r->bad_id);
    else
      ret = push_fail(L, "oflua.store: rekey failed, nothing was changed: %s", s->err);
    goto out;
  }
  keys_free(&s->keys);
  s->keys = r->next;
  r->next.aead = NULL;
  r->next.index = NULL;
  s->kid = r->next_kid;
  sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, (lua_Integer)r->rows);
  ret = 2;
out:
  memcpy(s->ns, saved_ns, sizeof saved_ns);
  s->nslen = saved_nslen;
  buf_free(&r->pt);
  buf_free(&r->ct);
  buf_free(&r->ct2);
  keys_free(&r->next);
  ofc_cleanse(r, sizeof *r);
  return ret;
}

/* ---- webhook inbox ----------------------------------------------------------
 * One row per event id (blind index, unique per namespace). States:
 *   pending  waiting for next_at (0 attempts: new; more: backing off after a failure)
 *   claimed  handed to a worker until next_at (its lease); claimable again after
 *   done     handled; kept so a redelivery is recognised as a duplicate
 *   dead     failed max_attempts times; inbox_retry() puts it back to pending
 */

static int check_event(lua_State *L, Store *s, int arg, const char **eid, size_t *elen,
                       unsigned char idx[IDX_LEN]) {
  Aad a;
  *eid = check_id(L, arg, elen, "event id");
  return blind(s->keys.index, aad(&a, s, D_IN_INDEX, *eid, *elen), idx);
}

/* s:inbox_add(event_id, payload[, now[, lease_s]]) -> true (new) | false (seen) | nil, err */
static int store_inbox_add(lua_State *L) {
  Store *s = check_open(L, 1);
  const char *eid;
  size_t elen, plen;
  unsigned char idx[IDX_LEN];
  if (check_event(L, s, 2, &eid, &elen, idx) != 0) return push_fail(L, "oflua.store: HMAC failed");
  const char *payload = luaL_checklstring(L, 3, &plen);
  double now = opt_now(L, 4);
  /* With lease_s the new event is inserted already claimed by the caller
   * (as inbox_claim would hand it out): one write instead of two. */
  lua_Number lease = luaL_optnumber(L, 5, -1);
  luaL_argcheck(L, lease == -1 || (lease > 0 && lease <= 86400 * 7), 5,
                "lease_s must be within (0, 604800] seconds");
  if (!value_fits(s, plen)) return push_fail(L, "oflua.store: payload too large");
  Aad a;
  unsigned char ebox[MAX_KEY + BOX_OVERHEAD], small[SMALL_BOX];
  unsigned char *pbox = box_buffer(L, small, plen + BOX_OVERHEAD);
  if (seal(s, s->keys.aead, eid, elen, aad(&a, s, D_IN_ID, NULL, 0), ebox) != 0 ||
      seal(s, s->keys.aead, payload, plen, aad(&a, s, D_IN_PAYLOAD, eid, elen), pbox) != 0)
    return push_fail(L, "oflua.store: encryption failed");
  sqlite3_stmt *st = stmt(s, ST_IN_ADD);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, s->kid);
  sqlite3_bind_blob(st, 4, ebox, (int)(elen + BOX_OVERHEAD), SQLITE_STATIC);
  sqlite3_bind_blob(st, 5, pbox, (int)(plen + BOX_OVERHEAD), SQLITE_STATIC);
  sqlite3_bind_double(st, 6, now);
  sqlite3_bind_text(st, 7, lease > 0 ? "claimed" : "pending", -1, SQLITE_STATIC);
  sqlite3_bind_double(st, 8, lease > 0 ? now + (double)lease : now);
  int rc = step(s, st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  if (sqlite3_changes(s->db) == 0) {
    int r = check_fresh(L, s);
    if (r) return r;
  }
  lua_pushboolean(L, sqlite3_changes(s->db) > 0);
  return 1;
}

/* Runs ST_IN_SET on row id. 0 or -1 (s->err). */
static int inbox_set(Store *s, sqlite3_int64 id, const char *state, sqlite3_int64 attempts,
                     double next_at, const unsigned char *rbox, size_t rboxlen, double now) {
  sqlite3_stmt *st = stmt(s, ST_IN_SET);
  if (st == NULL) return -1;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, attempts);
  sqlite3_bind_double(st, 4, next_at);
  if (rbox != NULL)
    sqlite3_bind_blob(st, 5, rbox, (int)rboxlen, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, 5);
  sqlite3_bind_double(st, 6, now);
  int rc = step(s, st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : -1;
}

#define LEASE_EXPIRED "lease expired (the worker crashed or took longer than its lease)"

/* s:inbox_claim(n, lease_s[, now[, max_attempts]]) -> {{id, payload, attempts}, ...} | nil, err
 * Hands out up to n due events (oldest due first) and leases them for
 * lease_s seconds; an event whose lease expired is handed out again and the
 * expiry counts as a failed attempt (so an event that crashes its worker
 * ends dead after max_attempts instead of looping). */
static int store_inbox_claim(lua_State *L) {
  Store *s = check_open(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= MAX_CLAIM, 2, "n must be within [1, 10000]");
  lua_Number lease = luaL_checknumber(L, 3);
  luaL_argcheck(L, isfinite(lease) && lease >= 0 && lease <= 1e9, 3, "bad lease");
  double now = opt_now(L, 4);
  lua_Integer max = luaL_optinteger(L, 5, 5);
  luaL_argcheck(L, max >= 1, 5, "max_attempts must be at least 1");
  sqlite3_int64 *ids = (sqlite3_int64 *)lua_newuserdatauv(L, (size_t)n * sizeof *ids, 0);
  lua_createtable(L, (int)n, 0);
  int result = lua_gettop(L);
  if (itx_begin(s) != 0) return push_db_fail(L, s);

  sqlite3_stmt *st = stmt(s, ST_IN_DUE);
  if (st == NULL) goto db_fail;
  bind_ns(s, st, 1);
  sqlite3_bind_double(st, 2, now);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)n);
  int count = 0, rc;
  while ((rc = step(s, st)) == SQLITE_ROW) ids[count++] = sqlite3_column_int64(st, 0);
  if (rc != SQLITE_DONE) goto db_fail;
  sqlite3_reset(st);

  int out = 0;
  Aad a;
  unsigned char eid[MAX_KEY], rbox[sizeof LEASE_EXPIRED - 1 + BOX_OVERHEAD];
  for (int i = 0; i < count; i++) {
    st = stmt(s, ST_IN_BY_ID);
    if (st == NULL) goto db_fail;
    sqlite3_bind_int64(st, 1, ids[i]);
    if ((rc = step(s, st)) != SQLITE_ROW) {
      if (rc == SQLITE_DONE) {
        snprintf(s->err, sizeof s->err, "inbox row vanished");
        sqlite3_reset(st);
      }
      goto db_fail;
    }
    sqlite3_int64 kid = sqlite3_column_int64(st, 0);
    sqlite3_int64 attempts = sqlite3_column_int64(st, 3);
    const unsigned char *state = sqlite3_column_text(st, 4);
    int expired = state != NULL && strcmp((const char *)state, "claimed") == 0;
    size_t elen = 0;
    if (kid != s->kid) {
      sqlite3_reset(st);
      itx_rollback(s);
      return push_other_kid(L, s, "oflua_inbox", ids[i], kid);
    }
    if (unseal_small(s->keys.aead, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1),
                     aad(&a, s, D_IN_ID, NULL, 0), eid, &elen) != 0) {
      sqlite3_reset(st);
      itx_rollback(s);
      return push_tampered(L, "oflua_inbox", ids[i]);
    }
    if (expired) attempts++;
    if (expired && attempts >= max) {
      sqlite3_reset(st);
      if (seal(s, s->keys.aead, LEASE_EXPIRED, sizeof LEASE_EXPIRED - 1,
               aad(&a, s, D_IN_REASON, eid, elen), rbox) != 0) {
        itx_rollback(s);
        return push_fail(L, "oflua.store: encryption failed");
      }
      if (inbox_set(s, ids[i], "dead", attempts, now, rbox, sizeof rbox, now) != 0) goto db_fail;
      continue;
    }
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, (const char *)eid, elen);
    lua_setfield(L, -2, "id");
    if (unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                    aad(&a, s, D_IN_PAYLOAD, eid, elen)) != 0) {
      sqlite3_reset(st);
      itx_rollback(s);
      return push_tampered(L, "oflua_inbox", ids[i]);
    }
    sqlite3_reset(st);
    lua_setfield(L, -2, "payload");
    lua_pushinteger(L, (lua_Integer)attempts);
    lua_setfield(L, -2, "attempts");
    lua_rawseti(L, result, ++out);
    const unsigned char *reason = NULL;
    if (expired) {
      if (seal(s, s->keys.aead, LEASE_EXPIRED, sizeof LEASE_EXPIRED - 1,
               aad(&a, s, D_IN_REASON, eid, elen), rbox) != 0) {
        itx_rollback(s);
        return push_fail(L, "oflua.store: encryption failed");
      }
      reason = rbox;
    }
    if (inbox_set(s, ids[i], "claimed", attempts, now + lease, reason, sizeof rbox, now) != 0)
      goto db_fail;
  }
  ofc_cleanse(eid, sizeof eid);
  if (itx_commit(s) != 0) return push_db_fail(L, s);
  lua_settop(L, result);
  return 1;

db_fail:
  itx_rollback(s);
  return push_db_fail(L, s);
}

typedef struct {
  sqlite3_int64 id, attempts;
  double next_at, created_at, updated_at;
  char state[16];
} EventRow;

/* Finds an event by id inside the open internal transaction. Returns 1
 * found (row filled; the statement is still on that row, reset by the
 * caller), 0 absent, or 2 after pushing nil, err (transaction rolled back). */
static int inbox_find(lua_State *L, Store *s, const unsigned char idx[IDX_LEN], EventRow *row,
                      sqlite3_stmt **out) {
  sqlite3_stmt *st = stmt(s, ST_IN_FIND);
  if (st == NULL) {
    itx_rollback(s);
    return push_db_fail(L, s);
  }
  bind_ns(s, st, 1);
  sqlite3_bind_blob(st, 2, idx, IDX_LEN, SQLITE_STATIC);
  int rc = step(s, st);
  if (rc != SQLITE_ROW) {
    if (rc == SQLITE_DONE) snprintf(s->err, sizeof s->err, "oflua_meta is empty");
    sqlite3_reset(st);
    itx_rollback(s);
    return push_db_fail(L, s);
  }
  sqlite3_int64 mkid = sqlite3_column_int64(st, 0);
  if (mkid != s->kid) {
    sqlite3_reset(st);
    itx_rollback(s);
    return push_stale(L, s, mkid);
  }
  if (sqlite3_column_type(st, 1) == SQLITE_NULL) {
    sqlite3_reset(st);
    return 0;
  }
  row->id = sqlite3_column_int64(st, 1);
  sqlite3_int64 kid = sqlite3_column_int64(st, 2);
  if (kid != s->kid) {
    sqlite3_reset(st);
    itx_rollback(s);
    return push_other_kid(L, s, "oflua_inbox", row->id, kid);
  }
  const unsigned char *state = sqlite3_column_text(st, 5);
  snprintf(row->state, sizeof row->state, "%s", state ? (const char *)state : "?");
  row->attempts = sqlite3_column_int64(st, 6);
  row->next_at = sqlite3_column_double(st, 7);
  row->created_at = sqlite3_column_double(st, 8);
  row->updated_at = sqlite3_column_double(st, 9);
  *out = st;
  return 1;
}

/* Shared by done/retry: find the event, set its state. */
static int inbox_move(lua_State *L, const char *state, int reset_attempts) {
  Store *s = check_open(L, 1);
  const char *eid;
  size_t elen;
  unsigned char idx[IDX_LEN];
  if (check_event(L, s, 2, &eid, &elen, idx) != 0) return push_fail(L, "oflua.store: HMAC failed");
  double now = opt_now(L, 3);
  if (itx_begin(s) != 0) return push_db_fail(L, s);
  EventRow row;
  sqlite3_stmt *st = NULL;
  int r = inbox_find(L, s, idx, &row, &st);
  if (r == 2) return 2;
  if (r == 0) {
    itx_rollback(s);
    lua_pushboolean(L, 0);
    return 1;
  }
  sqlite3_reset(st);
  if (inbox_set(s, row.id, state, reset_attempts ? 0 : row.attempts,
                reset_attempts ? now : row.next_at, NULL, 0, now) != 0 ||
      itx_commit(s) != 0) {
    itx_rollback(s);
    return push_db_fail(L, s);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* s:inbox_done(event_id[, now]) -> true | false (unknown id) | nil, err */
static int store_inbox_done(lua_State *L) {
  return inbox_move(L, "done", 0);
}

/* s:inbox_retry(event_id[, now]) -> true | false: back to pending, due now,
 * attempts reset (for a dead, failed or done event). */
static int store_inbox_retry(lua_State *L) {
  return inbox_move(L, "pending", 1);
}

/* s:inbox_fail(event_id, reason[, max_attempts=5[, now[, delay_s]]])
 *   -> "pending", next_attempt_at | "dead" | nil, err
 * Counts a failed attempt. Below max_attempts the event is due again after
 * delay_s, by default 2^attempts seconds (capped at an hour); at
 * max_attempts it becomes dead. */
static int store_inbox_fail(lua_State *L) {
  Store *s = check_open(L, 1);
  const char *eid;
  size_t elen, rlen;
  unsigned char idx[IDX_LEN];
  if (check_event(L, s, 2, &eid, &elen, idx) != 0) return push_fail(L, "oflua.store: HMAC failed");
  const char *reason = luaL_optlstring(L, 3, "", &rlen);
  lua_Integer max = luaL_optinteger(L, 4, 5);
  luaL_argcheck(L, max >= 1, 4, "max_attempts must be at least 1");
  double now = opt_now(L, 5);
  double delay = -1;
  if (!lua_isnoneornil(L, 6)) {
    delay = (double)luaL_checknumber(L, 6);
    luaL_argcheck(L, isfinite(delay) && delay >= 0, 6, "delay_s must be >= 0");
  }
  if (rlen > 65536) rlen = 65536; /* a reason is a message, not a document */
  Aad a;
  unsigned char small[SMALL_BOX];
  unsigned char *rbox = box_buffer(L, small, rlen + BOX_OVERHEAD);
  if (seal(s, s->keys.aead, reason, rlen, aad(&a, s, D_IN_REASON, eid, elen), rbox) != 0)
    return push_fail(L, "oflua.store: encryption failed");
  if (itx_begin(s) != 0) return push_db_fail(L, s);
  EventRow row;
  sqlite3_stmt *st = NULL;
  int r = inbox_find(L, s, idx, &row, &st);
  if (r == 2) return 2;
  if (r == 0) {
    itx_rollback(s);
    return push_fail(L, "oflua.store: no such event in the inbox");
  }
  sqlite3_reset(st);
  sqlite3_int64 attempts = row.attempts + 1;
  int dead = attempts >= max;
  if (delay < 0) delay = attempts >= 12 ? BACKOFF_CAP_S : fmin(ldexp(1.0, (int)attempts),
                                                                BACKOFF_CAP_S);
  double next_at = dead ? now : now + delay;
  if (inbox_set(s, row.id, dead ? "dead" : "pending", attempts, next_at, rbox,
                rlen + BOX_OVERHEAD, now) != 0 ||
      itx_commit(s) != 0) {
    itx_rollback(s);
    return push_db_fail(L, s);
  }
  if (dead) {
    lua_pushliteral(L, "dead");
    return 1;
  }
  lua_pushliteral(L, "pending");
  lua_pushnumber(L, next_at);
  return 2;
}

/* s:inbox_get(event_id) -> {id, payload, state, attempts, last_error,
 *   next_attempt_at, created_at, updated_at} | nil (unknown) | nil, err */
static int store_inbox_get(lua_State *L) {
  Store *s = check_open(L, 1);
  const char *eid;
  size_t elen;
  unsigned char idx[IDX_LEN];
  if (check_event(L, s, 2, &eid, &elen, idx) != 0) return push_fail(L, "oflua.store: HMAC failed");
  EventRow row;
  sqlite3_stmt *st = NULL;
  int r = inbox_find(L, s, idx, &row, &st);
  if (r == 2) return 2;
  if (r == 0) {
    lua_pushnil(L);
    return 1;
  }
  Aad a;
  lua_createtable(L, 0, 8);
  lua_pushlstring(L, eid, elen);
  lua_setfield(L, -2, "id");
  if (unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3),
                  aad(&a, s, D_IN_PAYLOAD, eid, elen)) != 0) {
    sqlite3_reset(st);
    return push_tampered(L, "oflua_inbox", row.id);
  }
  lua_setfield(L, -2, "payload");
  if (sqlite3_column_type(st, 4) != SQLITE_NULL) {
    if (unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4),
                    aad(&a, s, D_IN_REASON, eid, elen)) != 0) {
      sqlite3_reset(st);
      return push_tampered(L, "oflua_inbox", row.id);
    }
    lua_setfield(L, -2, "last_error");
  }
  sqlite3_reset(st);
  lua_pushstring(L, row.state);
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, (lua_Integer)row.attempts);
  lua_setfield(L, -2, "attempts");
  lua_pushnumber(L, row.next_at);
  lua_setfield(L, -2, "next_attempt_at");
  lua_pushnumber(L, row.created_at);
  lua_setfield(L, -2, "created_at");
  lua_pushnumber(L, row.updated_at);
  lua_setfield(L, -2, "updated_at");
  return 1;
}

/* s:inbox_dead([limit=1000]) -> {{id, payload, attempts, last_error}, ...} | nil, err */
static int store_inbox_dead(lua_State *L) {
  Store *s = check_open(L, 1);
  lua_Integer limit = luaL_optinteger(L, 2, 1000);
  luaL_argcheck(L, limit >= 1, 2, "limit must be at least 1");
  sqlite3_stmt *st = stmt(s, ST_IN_DEAD);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)limit);
  lua_newtable(L);
  int result = lua_gettop(L), n = 0, rc;
  Aad a;
  unsigned char eid[MAX_KEY];
  while ((rc = step(s, st)) == SQLITE_ROW) {
    sqlite3_int64 id = sqlite3_column_int64(st, 0), kid = sqlite3_column_int64(st, 1);
    size_t elen = 0;
    if (kid != s->kid) {
      sqlite3_reset(st);
      return push_other_kid(L, s, "oflua_inbox", id, kid);
    }
    if (unseal_small(s->keys.aead, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                     aad(&a, s, D_IN_ID, NULL, 0), eid, &elen) != 0) {
      sqlite3_reset(st);
      return push_tampered(L, "oflua_inbox", id);
    }
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, (const char *)eid, elen);
    lua_setfield(L, -2, "id");
    if (unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3),
                    aad(&a, s, D_IN_PAYLOAD, eid, elen)) != 0) {
      sqlite3_reset(st);
      return push_tampered(L, "oflua_inbox", id);
    }
    lua_setfield(L, -2, "payload");
    lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, 4));
    lua_setfield(L, -2, "attempts");
    if (sqlite3_column_type(st, 5) != SQLITE_NULL) {
      if (unseal_push(L, s->keys.aead, sqlite3_column_blob(st, 5), (size_t)sqlite3_column_bytes(st, 5),
                      aad(&a, s, D_IN_REASON, eid, elen)) != 0) {
        sqlite3_reset(st);
        return push_tampered(L, "oflua_inbox", id);
      }
      lua_setfield(L, -2, "last_error");
    }
    lua_rawseti(L, result, ++n);
  }
  ofc_cleanse(eid, sizeof eid);
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  sqlite3_reset(st);
  lua_settop(L, result);
  return 1;
}

/* s:inbox_stats() -> {pending, claimed, done, dead, total} | nil, err */
static int store_inbox_stats(lua_State *L) {
  Store *s = check_open(L, 1);
  sqlite3_stmt *st = stmt(s, ST_IN_STATS);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  lua_createtable(L, 0, 5);
  static const char *const states[] = {"pending", "claimed", "done", "dead"};
  for (size_t i = 0; i < sizeof states / sizeof *states; i++) {
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, states[i]);
  }
  lua_Integer total = 0;
  int rc;
  while ((rc = step(s, st)) == SQLITE_ROW) {
    lua_Integer c = (lua_Integer)sqlite3_column_int64(st, 1);
    const unsigned char *state = sqlite3_column_text(st, 0);
    total += c;
    lua_pushinteger(L, c);
    lua_setfield(L, -2, state != NULL ? (const char *)state : "?");
  }
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  sqlite3_reset(st);
  lua_pushinteger(L, total);
  lua_setfield(L, -2, "total");
  return 1;
}

/* s:inbox_prune(age_s[, now]) -> number of done events older than age_s
 * deleted (their ids are forgotten: a redelivery after that is new again). */
static int store_inbox_prune(lua_State *L) {
  Store *s = check_open(L, 1);
  lua_Number age = luaL_checknumber(L, 2);
  luaL_argcheck(L, isfinite(age) && age >= 0, 2, "age_s must be >= 0");
  double now = opt_now(L, 3);
  sqlite3_stmt *st = stmt(s, ST_IN_PRUNE);
  if (st == NULL) return push_db_fail(L, s);
  bind_ns(s, st, 1);
  sqlite3_bind_double(st, 2, now - (double)age);
  int rc = step(s, st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return push_db_fail(L, s);
  lua_pushinteger(L, (lua_Integer)sqlite3_changes(s->db));
  return 1;
}

/* ---- module functions ------------------------------------------------------ */

/* store.keygen() -> a new master key: base64 of 32 random bytes */
static int store_keygen(lua_State *L) {
  unsigned char key[KEY_LEN];
  char text[48];
  if (ofc_random(key, sizeof key) != 0) return luaL_error(L, "oflua.store: no random bytes");
  b64_encode(key, sizeof key, text);
  lua_pushstring(L, text);
  ofc_cleanse(key, sizeof key);
  ofc_cleanse(text, sizeof text);
  return 1;
}

/* store.save_key(path, key) -> true | nil, err: writes a key file with mode
 * 0600, refusing to overwrite an existing file. */
static int store_save_key(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n;
  const char *text = luaL_checklstring(L, 2, &n);
  unsigned char key[KEY_LEN];
  if (decode_key(text, n, key) != 0) return push_fail(L, "oflua.store: " KEY_FORMAT_MSG);
  char line[48];
  b64_encode(key, sizeof key, line);
  ofc_cleanse(key, sizeof key);
  size_t len = strlen(line);
  line[len++] = '\n';
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    ofc_cleanse(line, sizeof line);
    if (e == EEXIST) return push_fail(L, "oflua.store: %s already exists; not overwriting it", path);
    return push_fail(L, "oflua.store: cannot create %s: %s", path, strerror(e));
  }
  size_t off = 0;
  int e = 0;
  while (off < len) {
    ssize_t w = write(fd, line + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      e = errno;
      break;
    }
    off += (size_t)w;
  }
  ofc_cleanse(line, sizeof line);
  if (e == 0 && fsync(fd) != 0) e = errno;
  if (close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    unlink(path);
    return push_fail(L, "oflua.store: cannot write %s: %s", path, strerror(e));
  }
  lua_pushboolean(L, 1);
  return 1;
}

int luaopen_oflua_store(lua_State *L) {
  pthread_once(&fork_once, fork_watch);
  static const luaL_Reg methods[] = {
      {"get", store_get},
      {"put", store_put},
      {"delete", store_delete},
      {"list", store_list},
      {"transaction", store_transaction},
      {"rekey", store_rekey},
      {"info", store_info},
      {"inbox_add", store_inbox_add},
      {"inbox_claim", store_inbox_claim},
      {"inbox_done", store_inbox_done},
      {"inbox_fail", store_inbox_fail},
      {"inbox_retry", store_inbox_retry},
      {"inbox_get", store_inbox_get},
      {"inbox_dead", store_inbox_dead},
      {"inbox_stats", store_inbox_stats},
      {"inbox_prune", store_inbox_prune},
      {"close", store_close},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", store_gc},
                                  {"__close", store_close},
                                  {"__tostring", store_tostring},
                                  {"__index", NULL},
                                  {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"open", store_open},
                                   {"open_env", store_open_env},
                                   {"keygen", store_keygen},
                                   {"save_key", store_save_key},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, STORE_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
  lua_pushinteger(L, STORE_FORMAT);
  lua_setfield(L, -2, "format");
  return 1;
}
