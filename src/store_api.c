/*
 * store_api.c: oflua.store, the Lua-facing API of the encrypted key/value
 * store and webhook inbox. This file checks arguments, seals and opens every
 * field (store_seal.c) and drives a backend (store_backend.h: SQLite in
 * store_sqlite.c, PostgreSQL in store_pg.c) that only ever sees sealed bytes
 * and blind indexes.
 *
 * Errors. Expected failures return nil, message, kind (as io.open, plus a
 * kind): "unavailable" (the database cannot be reached: a receiver answers
 * 503), "db" (any other database error), "stale" (the store was rekeyed
 * after this handle opened it), "tampered" (a row failed authentication),
 * "key" (wrong key), "invalid". Wrong argument types raise. Messages never
 * hold a key, a value, the master key or a database password. The list()
 * iterator raises, as an iterator cannot return nil, err.
 *
 * No Lua error is raised while a transaction is open: rows come back from the
 * backend into a "rows" userdata (freed by its __gc if a later allocation
 * raises), sealed or opened in place in C, and Lua values are built only
 * after the transaction committed or rolled back.
 *
 * API (keys and event ids: byte strings up to 4096 bytes; values, payloads:
 * byte strings; `now`: seconds, default the wall clock):
 *   store.open{path | url, key = base64 | key_file = path, namespace = "default",
 *              synchronous = "NORMAL" | "FULL", busy_timeout_ms = 5000,
 *              connect_timeout_s = 5, create = true} -> s | nil, err, kind
 *       (busy_timeout_ms: SQLite's wait for the write lock; PostgreSQL's
 *       lock_timeout)
 *       path: a SQLite file; url (or a path starting with postgresql:// or
 *       postgres://): PostgreSQL. A PostgreSQL handle that cannot reach the
 *       server is still returned and connects on first use.
 *   store.open_env{...}      like open; path or URL from $OFLUA_STORE, key from
 *                            $OFLUA_STORE_KEY_FILE, else $OFLUA_STORE_KEY
 *   store.keygen() -> base64 key; store.save_key(path, key) -> true | nil, err
 *   store.sqlite_version, store.format, store.schema_version, store.is_url(text)
 *   s:get(k) -> v | nil | nil, err      s:put(k, v) -> true | nil, err
 *   s:delete(k) -> true | false | nil, err
 *   s:list([prefix]) -> iterator of k, v in insertion order, read in batches
 *                       of 64 rows through an (ns, id) index: O(rows)
 *   s:transaction(fn) -> fn(s)'s results (rollback + re-raise on error;
 *                        nested calls are savepoints)
 *   s:rekey(key | {key = } | {key_file = }) -> true, rows | nil, err
 *   s:info() -> {backend, path | url, namespace, key_id, format,
 *               schema_version, version, sqlite_version}
 *   s:inbox_add(id, payload[, now[, lease_s]]) -> true (new) | false (seen) | nil, err
 *                            (with lease_s: inserted already claimed by the
 *                            caller; true, claim token)
 *   s:inbox_add_many(list[, now[, lease_s]]) -> {true | false, ...} | nil, err
 *                            list: {{id =, payload =}, ...} (at most 1000),
 *                            one transaction: all rows or none
 *   s:inbox_add_grouped(id, payload[, now[, lease_s[, answer[, handoff]]]])
 *                            -> as inbox_add; the insert shares one
 *                            transaction with concurrent callers (group
 *                            commit, store_group.c); kind "busy" when the
 *                            queue is full (4096 rows); handoff: the new row
 *                            goes, claimed, to this process's next
 *                            inbox_claim_grouped (true, no claim token)
 *   s:group_stats() -> {batches, rows, max_batch, errors, failed_rows,
 *                       rejected, queue_depth, peak_depth, done_marked,
 *                       done_missed, hist}
 *   s:inbox_done_grouped(id[, now[, claim]]) -> true (queued: marked done in
 *                            the committer's next batch, not waited for)
 *   s:inbox_claim(n, lease_s[, now[, max_attempts=5]]) -> {{id, payload, attempts, claim}}
 *   s:inbox_claim_grouped(n, lease_s[, now[, max_attempts[, done]]]) -> as
 *                            inbox_claim, handoff rows first, each with
 *                            lease_left
 *   s:inbox_done(id[, now[, claim]]) -> true | false | nil, err, "lost"
 *   s:inbox_release(id[, now[, claim]]) -> true | false | nil, err, "lost"
 *                            (back to pending unrun: due now, no attempt)
 *   s:inbox_fail(id, reason[, max_attempts=5[, now[, delay_s[, claim]]]])
 *                       -> "pending", next_attempt_at | "dead" | nil, err, "lost"
 *   s:inbox_retry(id[, now]) -> true | false  (back to pending, attempts 0)
 *   s:inbox_get(id) -> {id, payload, state, attempts, last_error, ...} | nil
 *   s:inbox_list{state =, limit = 100, after = 0} -> {{id, payload, state, ...}}, cursor
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
#include "store_group.h"
#include "store_internal.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define STORE_MT "oflua.store"
#define ROWS_MT "oflua.store.rows"
#define REKEY_MT "oflua.store.rekey"
#define SMALL_BOX 4096
#define MAX_CLAIM 10000
/* A grouped claim reads the inbox at least this often while handoff rows
 * keep coming (retries and rows inserted pending are not starved). */
#define CLAIM_READ_EVERY_S 1.0
/* Handoff rows whose lease ran out, handed back by one grouped claim, at most. */
#define CLAIM_EXPIRED_MAX 256
#define MAX_BATCH 1000
#define SCAN_BATCH 64
#define BACKOFF_CAP_S 3600.0
#define LEASE_EXPIRED "lease expired (the worker crashed or took longer than its lease)"

/* ---- errors ---------------------------------------------------------------- */

static int push_err(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  luaL_pushfail(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_pushstring(L, kind);
  return 3;
}

static int push_be(lua_State *L, store_handle *s, int rc) {
  return push_err(L, rc == STORE_EUNAVAIL ? "unavailable" : "db", "oflua.store: %s",
                  s->c ? s->c->err : "store closed");
}

static int push_tampered(lua_State *L, const char *table, int64_t id) {
  return push_err(L, "tampered",
                  "oflua.store: %s row %I failed authentication (altered, copied from another "
                  "row or namespace, or written under another key)",
                  table, (lua_Integer)id);
}

static int push_other_kid(lua_State *L, const store_handle *s, const char *table, int64_t id,
                          int64_t kid) {
  return push_err(L, "stale",
                  "oflua.store: %s row %I is sealed under key id %I but this handle has key id "
                  "%I (was the store rekeyed? reopen it with the current key)",
                  table, (lua_Integer)id, (lua_Integer)kid, (lua_Integer)s->kid);
}

static int push_stale(lua_State *L, const store_handle *s, int64_t kid) {
  return push_err(L, "stale",
                  "oflua.store: the store was rekeyed (key id %I) after this handle opened it "
                  "(key id %I); reopen it with the new key",
                  (lua_Integer)kid, (lua_Integer)s->kid);
}

/* ---- small helpers -------------------------------------------------------- */

static double opt_now(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return oflua__wall_now();
  lua_Number n = luaL_checknumber(L, arg);
  luaL_argcheck(L, isfinite(n), arg, "now must be a finite number");
  return (double)n;
}

static const char *check_id(lua_State *L, int arg, size_t *len, const char *what) {
  const char *p = luaL_checklstring(L, arg, len);
  if (*len > MAX_KEY)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s longer than %d bytes", what, MAX_KEY));
  return p;
}

static const store_aad *aad(store_aad *a, const store_handle *s, const char *domain,
                            const void *item, size_t n) {
  return store_aad_make(a, s->ns, s->nslen, domain, item, n);
}

static store_cbytes cb(const void *p, size_t n) {
  store_cbytes b = {p, n};
  return b;
}

/* A sealing buffer: on the C stack when small, else a Lua userdata pushed on
 * the stack (collected with it, so no leak if an error is raised). */
static unsigned char *box_buffer(lua_State *L, unsigned char *small, size_t need) {
  if (need <= SMALL_BOX) return small;
  return (unsigned char *)lua_newuserdatauv(L, need, 0);
}

/* Opens a box in place: the plaintext is at box->p + NONCE_LEN, *n bytes. */
static int open_in_place(ofc_aead_key *k, store_bytes *box, const store_aad *a, size_t *n) {
  if (box->p == NULL || box->n < BOX_OVERHEAD) return -1;
  *n = box->n - BOX_OVERHEAD;
  return ofc_aead_key_open(k, box->p, box->p + NONCE_LEN, box->n - NONCE_LEN, a->b, a->len,
                           box->p + NONCE_LEN);
}

static void push_plain(lua_State *L, const store_bytes *box) {
  lua_pushlstring(L, (const char *)box->p + NONCE_LEN, box->n - BOX_OVERHEAD);
}

/* ---- rows: backend results owned by a userdata ----------------------------- */

typedef struct {
  int cap, n, pos, done;
  unsigned wseq; /* the handle's write sequence when this batch was read */
  int64_t last;
  store_event *ev; /* cap entries, or NULL */
  store_kv_row *kv;
} rows_t;

static void rows_clear(rows_t *r) {
  for (int i = 0; i < r->n; i++) {
    if (r->ev) store_event_clear(&r->ev[i]);
    if (r->kv) store_kv_row_clear(&r->kv[i]);
  }
  r->n = 0;
  r->pos = 0;
}

static int rows_gc(lua_State *L) {
  rows_t *r = luaL_checkudata(L, 1, ROWS_MT);
  rows_clear(r);
  free(r->ev);
  free(r->kv);
  r->ev = NULL;
  r->kv = NULL;
  return 0;
}

/* Pushes a rows userdata with room for cap events (kv == 0) or kv rows. */
static rows_t *rows_new(lua_State *L, int cap, int kv) {
  rows_t *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, ROWS_MT);
  if (kv) r->kv = calloc((size_t)cap, sizeof *r->kv);
  else r->ev = calloc((size_t)cap, sizeof *r->ev);
  if (r->kv == NULL && r->ev == NULL) luaL_error(L, "oflua.store: out of memory");
  r->cap = cap;
  return r;
}

/* ---- the handle ------------------------------------------------------------ */

static store_handle *to_store(lua_State *L, int idx) {
  return (store_handle *)luaL_checkudata(L, idx, STORE_MT);
}

static store_handle *check_open(lua_State *L, int idx) {
  store_handle *s = to_store(L, idx);
  if (s->c == NULL) luaL_error(L, "oflua.store: the store is closed");
  return s;
}

static void store_shut(store_handle *s) {
  if (s->group != NULL) {
    if (store_group_ours(s->group)) {
      store_group_ring_clear(s->group, s);
      store_group_unref(s->group);
    }
    s->group = NULL;
  }
  if (s->db != NULL) {
    ofc_cleanse(s->db, strlen(s->db));
    free(s->db);
    s->db = NULL;
  }
  if (s->c != NULL) {
    while (s->be->tx_depth(s->c) > 0) s->be->tx_rollback(s->c);
    s->be->close(s->c);
    s->c = NULL;
  }
  store_keys_free(&s->keys);
  ofc_cleanse(s->master, sizeof s->master);
  ofc_cleanse(s->pool, sizeof s->pool);
  s->pool_pos = sizeof s->pool;
  s->ready = 0;
}

/* Reads (creating it if allowed) the meta row, derives the keys and checks
 * the master key against the sealed check value; then forgets the master
 * key. 0, or an error: pushes nothing, fills msg/kind. */
static int make_ready(store_handle *s, char *msg, size_t len, const char **kind) {
  if (s->ready) return 0;
  store_meta init, meta;
  memset(&init, 0, sizeof init);
  memset(&meta, 0, sizeof meta);
  unsigned char box[CHECK_BOX_LEN];
  store_keys k = {NULL, NULL};
  store_aad a;
  *kind = "db";
  if (ofc_random(init.salt, sizeof init.salt) != 0 || store_derive(s->master, init.salt, 1, &k) != 0 ||
      store_seal(s, k.aead, CHECK_TEXT, sizeof CHECK_TEXT - 1, store_check_aad(&a, 1, init.salt),
                 box) != 0) {
    store_keys_free(&k);
    snprintf(msg, len, "key derivation failed");
    return -1;
  }
  store_keys_free(&k);
  init.format = STORE_FORMAT;
  init.kid = 1;
  init.check.p = box;
  init.check.n = sizeof box;
  int rc = s->be->meta_load(s->c, s->create, &init, &meta);
  if (rc < 0) {
    if (rc == STORE_EUNAVAIL) *kind = "unavailable";
    snprintf(msg, len, "%s", s->c->err);
    return -1;
  }
  if (rc == 0) {
    *kind = "invalid";
    snprintf(msg, len, "not an oflua store");
    return -1;
  }
  int ret = 0;
  unsigned char check[CHECK_BOX_LEN];
  if (meta.format != STORE_FORMAT) {
    *kind = "invalid";
    snprintf(msg, len, "store format %lld, this oflua reads format %d", (long long)meta.format,
             STORE_FORMAT);
    ret = -1;
  } else if (meta.kid <= 0 || meta.check.n != CHECK_BOX_LEN ||
             store_derive(s->master, meta.salt, meta.kid, &s->keys) != 0 ||
             store_unseal(s->keys.aead, meta.check.p, meta.check.n,
                          store_check_aad(&a, meta.kid, meta.salt), check) != 0 ||
             memcmp(check, CHECK_TEXT, sizeof CHECK_TEXT - 1) != 0) {
    store_keys_free(&s->keys);
    *kind = "key";
    snprintf(msg, len, "wrong key (the key check failed)");
    ret = -1;
  } else {
    memcpy(s->salt, meta.salt, SALT_LEN);
    s->kid = meta.kid;
    s->ready = 1;
    ofc_cleanse(s->master, sizeof s->master);
  }
  store_bytes_free(&meta.check);
  return ret;
}

/* For every operation: the handle is open and ready. 0, or pushes nil, err,
 * kind and returns 3. */
static int ready(lua_State *L, store_handle *s) {
  if (s->ready) return 0;
  char msg[300];
  const char *kind;
  if (make_ready(s, msg, sizeof msg, &kind) == 0) return 0;
  lua_getiuservalue(L, 1, 1);
  const char *label = lua_tostring(L, -1);
  lua_pop(L, 1);
  return push_err(L, kind, "oflua.store: %s: %s", label ? label : "store", msg);
}

#define READY(L, s)               \
  do {                            \
    int r_ = ready(L, s);         \
    if (r_) return r_;            \
  } while (0)

/* After a write changed nothing: pushes nil, err if the handle is stale (or
 * the check fails) and returns 3; returns 0 if the handle is current. */
static int check_fresh(lua_State *L, store_handle *s) {
  int64_t kid = 0;
  int rc = s->be->meta_kid(s->c, &kid);
  if (rc < 0) return push_be(L, s, rc);
  if (kid != s->kid) return push_stale(L, s, kid);
  return 0;
}

/* ---- open ------------------------------------------------------------------ */

static int is_url(const char *p) {
  return p != NULL &&
         (strncmp(p, "postgresql://", 13) == 0 || strncmp(p, "postgres://", 11) == 0);
}

/* The URL without its password (for messages and info()): see
 * store_pg_label. */
static void push_redacted(lua_State *L, const char *url) {
  char label[512];
  store_pg_label(url, label, sizeof label);
  lua_pushstring(L, label);
}

typedef struct {
  const char *path;
  const char *url;
  const char *key;
  size_t keylen;
  const char *key_file;
  const char *ns;
  size_t nslen;
  const char *sync;
  lua_Integer busy_ms, connect_timeout_s, statement_ms;
  int create;
} open_opts;

/* The string is anchored in the table at index `anchor` (an __index
 * metamethod may return a fresh string that nothing else references: it
 * must stay reachable while the pointer is in use). */
static const char *opt_string(lua_State *L, int t, int anchor, const char *name, size_t *len) {
  lua_getfield(L, t, name);
  const char *v = NULL;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "oflua.store: option '%s' must be a string", name);
    v = lua_tolstring(L, -1, len);
    lua_pushvalue(L, -1);
    lua_setfield(L, anchor, name);
  }
  lua_pop(L, 1);
  return v;
}

static lua_Integer opt_int(lua_State *L, int t, const char *name, lua_Integer def,
                           lua_Integer max) {
  lua_getfield(L, t, name);
  lua_Integer v = def;
  if (!lua_isnil(L, -1)) {
    int isnum = 0;
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum || v < 0 || v > max)
      luaL_error(L, "oflua.store: option '%s' must be an integer in [0, %I]", name, max);
  }
  lua_pop(L, 1);
  return v;
}

/* Pushes the table anchoring the option strings: it stays on the stack
 * while o is in use. */
static void read_open_opts(lua_State *L, int t, open_opts *o) {
  memset(o, 0, sizeof *o);
  lua_createtable(L, 0, 6);
  int a = lua_gettop(L);
  o->path = opt_string(L, t, a, "path", NULL);
  o->url = opt_string(L, t, a, "url", NULL);
  o->key = opt_string(L, t, a, "key", &o->keylen);
  o->key_file = opt_string(L, t, a, "key_file", NULL);
  o->ns = opt_string(L, t, a, "namespace", &o->nslen);
  o->sync = opt_string(L, t, a, "synchronous", NULL);
  o->busy_ms = opt_int(L, t, "busy_timeout_ms", 5000, 3600000);
  o->connect_timeout_s = opt_int(L, t, "connect_timeout_s", 5, 3600);
  o->statement_ms = opt_int(L, t, "statement_timeout_ms", 0, 3600000);
  lua_getfield(L, t, "create");
  o->create = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (o->url == NULL && is_url(o->path)) {
    o->url = o->path;
    o->path = NULL;
  }
  if ((o->path == NULL || o->path[0] == '\0') == (o->url == NULL || o->url[0] == '\0'))
    luaL_error(L, "oflua.store: give exactly one of the options 'path' (SQLite) and 'url' "
                  "(postgresql://...)");
  if (o->url != NULL && !is_url(o->url))
    luaL_error(L, "oflua.store: option 'url' must start with postgresql:// or postgres://");
  if ((o->key == NULL) == (o->key_file == NULL))
    luaL_error(L, "oflua.store: give exactly one of the options 'key' and 'key_file'");
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

static int new_handle(lua_State *L, int opts) {
  open_opts o;
  read_open_opts(L, opts, &o);
  store_handle *s = (store_handle *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->pool_pos = sizeof s->pool; /* empty: the first nonce fills it */
  luaL_setmetatable(L, STORE_MT);
  if (o.url != NULL) push_redacted(L, o.url);
  else lua_pushstring(L, o.path);
  lua_setiuservalue(L, -2, 1);
  int h = lua_gettop(L);
  lua_getiuservalue(L, h, 1);
  const char *label = lua_tostring(L, -1);
  memcpy(s->ns, o.ns, o.nslen);
  s->ns[o.nslen] = '\0';
  s->nslen = o.nslen;
  s->create = o.create;
  s->be = o.url != NULL ? &store_pg_backend : &store_sqlite_backend;

  /* From here until the handle owns them, nothing may raise. */
  char err[300];
  if (o.key != NULL) {
    if (store_decode_key(o.key, o.keylen, s->master) != 0)
      return push_err(L, "invalid", "oflua.store: " KEY_FORMAT_MSG);
  } else if (store_read_key_file(o.key_file, s->master, err, sizeof err) != 0) {
    return push_err(L, "invalid", "oflua.store: %s", err);
  }
  store_open_opts bo = {o.path, o.url, o.sync, (long)o.busy_ms, (long)o.connect_timeout_s,
                        o.create, (long)o.statement_ms, 0};
  const char *db = o.url != NULL ? o.url : o.path;
  s->db = malloc(strlen(db) + 1);
  if (s->db == NULL) {
    ofc_cleanse(s->master, sizeof s->master);
    return push_err(L, "db", "oflua.store: out of memory");
  }
  memcpy(s->db, db, strlen(db) + 1);
  s->gopts = bo;
  s->gopts.path = o.url != NULL ? NULL : s->db;
  s->gopts.url = o.url != NULL ? s->db : NULL;
  s->gopts.sync = strcasecmp(o.sync, "FULL") == 0 ? "FULL" : "NORMAL";
  s->c = s->be->open(&bo, err, sizeof err);
  if (s->c == NULL) {
    ofc_cleanse(s->master, sizeof s->master);
    store_shut(s);
    return push_err(L, "invalid", "oflua.store: %s", err);
  }
  const char *kind;
  if (make_ready(s, err, sizeof err, &kind) != 0) {
    /* PostgreSQL down: the handle connects on first use (a receiver started
     * during an outage answers 503 until the database is back). */
    if (s->be == &store_pg_backend && strcmp(kind, "unavailable") == 0) {
      lua_settop(L, h);
      return 1;
    }
    store_shut(s);
    if (s->be == &store_sqlite_backend && strcmp(kind, "invalid") == 0 &&
        strcmp(err, "not an oflua store") == 0)
      return push_err(L, kind, "oflua.store: %s is not an oflua store", label);
    if (strcmp(kind, "key") == 0)
      return push_err(L, kind, "oflua.store: wrong key for %s (the key check failed)", label);
    return push_err(L, kind, "oflua.store: cannot open %s: %s", label, err);
  }
  lua_settop(L, h);
  return 1;
}

/* store.open{path | url, key | key_file, namespace, synchronous, busy_timeout_ms,
 * connect_timeout_s, create} */
static int store_open(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  return new_handle(L, 1);
}

/* store.open_env{...}: like open, with the path or URL from $OFLUA_STORE and
 * the key from $OFLUA_STORE_KEY_FILE or $OFLUA_STORE_KEY when not given. */
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
  lua_getfield(L, t, "url");
  if (lua_isnil(L, -1) && lua_isnil(L, -2)) {
    const char *p = getenv("OFLUA_STORE");
    if (p == NULL || p[0] == '\0')
      return push_err(L, "invalid", "oflua.store: no store (set OFLUA_STORE or pass path)");
    lua_pushstring(L, p);
    lua_setfield(L, t, "path");
  }
  lua_pop(L, 2);
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
      return push_err(L, "invalid",
                      "oflua.store: no store key (set OFLUA_STORE_KEY_FILE or OFLUA_STORE_KEY)");
    }
  }
  lua_pop(L, 2);
  return new_handle(L, t);
}

static int store_close(lua_State *L) {
  store_handle *s = to_store(L, 1);
  if (s->utx > 0 && s->c != NULL)
    return luaL_error(L, "oflua.store: cannot close the store inside s:transaction()");
  store_shut(s);
  return 0;
}

static int store_gc(lua_State *L) {
  store_shut(to_store(L, 1));
  return 0;
}

static int store_tostring(lua_State *L) {
  store_handle *s = to_store(L, 1);
  lua_getiuservalue(L, 1, 1);
  if (s->c == NULL)
    lua_pushfstring(L, "oflua.store (closed) %s", lua_tostring(L, -1));
  else
    lua_pushfstring(L, "oflua.store %s namespace %s", lua_tostring(L, -1), s->ns);
  return 1;
}

/* s:info() -> {backend, path | url, namespace, key_id, format, schema_version,
 * version, sqlite_version} */
static int store_info(lua_State *L) {
  store_handle *s = check_open(L, 1);
  READY(L, s);
  char version[128];
  s->be->version(s->c, version, sizeof version);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, s->be->name);
  lua_setfield(L, -2, "backend");
  lua_getiuservalue(L, 1, 1);
  lua_setfield(L, -2, s->be == &store_pg_backend ? "url" : "path");
  lua_pushlstring(L, s->ns, s->nslen);
  lua_setfield(L, -2, "namespace");
  lua_pushinteger(L, (lua_Integer)s->kid);
  lua_setfield(L, -2, "key_id");
  lua_pushinteger(L, STORE_FORMAT);
  lua_setfield(L, -2, "format");
  lua_pushinteger(L, STORE_SCHEMA_VERSION);
  lua_setfield(L, -2, "schema_version");
  lua_pushstring(L, version);
  lua_setfield(L, -2, "version");
  if (s->be == &store_sqlite_backend) {
    lua_pushstring(L, version);
    lua_setfield(L, -2, "sqlite_version");
  }
  return 1;
}

/* ---- key/value ------------------------------------------------------------- */

#define MAX_VALUE ((size_t)1 << 30) /* 1 GiB: SQLite's default length limit */

/* s:get(key) -> value | nil (absent) | nil, err */
static int store_get(lua_State *L) {
  store_handle *s = check_open(L, 1);
  size_t klen;
  const char *key = check_id(L, 2, &klen, "key");
  READY(L, s);
  rows_t *r = rows_new(L, 1, 1);
  store_aad a;
  unsigned char idx[IDX_LEN];
  if (store_blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0)
    return push_err(L, "db", "oflua.store: HMAC failed");
  int rc = s->be->kv_get(s->c, s->ns, idx, &r->kv[0]);
  if (rc < 0) return push_be(L, s, rc);
  if (rc == 0) {
    /* Absent, or looked up with the index key of a retired key id: a row
     * found carries its kid (checked below), a miss needs the meta check. */
    int f = check_fresh(L, s);
    if (f) return f;
    lua_pushnil(L);
    return 1;
  }
  r->n = 1;
  store_kv_row *row = &r->kv[0];
  if (row->kid != s->kid) {
    int64_t mkid = 0;
    if (s->be->meta_kid(s->c, &mkid) == 0 && mkid != s->kid) return push_stale(L, s, mkid);
    return push_other_kid(L, s, "oflua_kv", row->id, row->kid);
  }
  size_t n;
  if (open_in_place(s->keys.aead, &row->vbox, aad(&a, s, D_KV_VALUE, key, klen), &n) != 0) {
    rows_clear(r);
    return push_tampered(L, "oflua_kv", row->id);
  }
  push_plain(L, &row->vbox);
  rows_clear(r);
  return 1;
}

/* s:put(key, value) -> true | nil, err */
static int store_put(lua_State *L) {
  store_handle *s = check_open(L, 1);
  size_t klen, vlen;
  const char *key = check_id(L, 2, &klen, "key");
  const char *val = luaL_checklstring(L, 3, &vlen);
  if (vlen > MAX_VALUE - BOX_OVERHEAD) return push_err(L, "invalid", "oflua.store: value too large");
  READY(L, s);
  store_aad a;
  unsigned char idx[IDX_LEN], kbox[MAX_KEY + BOX_OVERHEAD], small[SMALL_BOX];
  unsigned char *vbox = box_buffer(L, small, vlen + BOX_OVERHEAD);
  if (store_blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0 ||
      store_seal(s, s->keys.aead, key, klen, aad(&a, s, D_KV_KEY, NULL, 0), kbox) != 0 ||
      store_seal(s, s->keys.aead, val, vlen, aad(&a, s, D_KV_VALUE, key, klen), vbox) != 0)
    return push_err(L, "db", "oflua.store: encryption failed");
  s->wseq++;
  int rc = s->be->kv_put(s->c, s->ns, idx, s->kid, cb(kbox, klen + BOX_OVERHEAD),
                         cb(vbox, vlen + BOX_OVERHEAD));
  if (rc < 0) return push_be(L, s, rc);
  if (rc == 0) {
    int f = check_fresh(L, s);
    if (f) return f;
    return push_err(L, "db", "oflua.store: the write changed nothing");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* s:delete(key) -> true (deleted) | false (absent) | nil, err */
static int store_delete(lua_State *L) {
  store_handle *s = check_open(L, 1);
  size_t klen;
  const char *key = check_id(L, 2, &klen, "key");
  READY(L, s);
  store_aad a;
  unsigned char idx[IDX_LEN];
  if (store_blind(s->keys.index, aad(&a, s, D_KV_INDEX, key, klen), idx) != 0)
    return push_err(L, "db", "oflua.store: HMAC failed");
  s->wseq++;
  int rc = s->be->kv_delete(s->c, s->ns, idx, s->kid);
  if (rc < 0) return push_be(L, s, rc);
  if (rc == 0) {
    int f = check_fresh(L, s);
    if (f) return f;
  }
  lua_pushboolean(L, rc > 0);
  return 1;
}

/* Raises the error pushed by a push_* helper (for the list() iterator). */
static int raise3(lua_State *L) {
  lua_pop(L, 1); /* kind */
  return lua_error(L);
}

/* The list() iterator. Upvalues: store, prefix, rows (a batch of up to 64
 * rows read by id > last through the (ns, id) index; no statement or
 * transaction stays open between calls). */
static int list_iter(lua_State *L) {
  store_handle *s = to_store(L, lua_upvalueindex(1));
  if (s->c == NULL) return luaL_error(L, "oflua.store: the store is closed");
  size_t plen;
  const char *prefix = lua_tolstring(L, lua_upvalueindex(2), &plen);
  rows_t *r = luaL_checkudata(L, lua_upvalueindex(3), ROWS_MT);
  unsigned char key[MAX_KEY];
  store_aad a;
  for (;;) {
    if (r->pos < r->n && r->wseq != s->wseq) {
      /* The loop body wrote: the rest of the batch may be stale. */
      rows_clear(r);
      r->done = 0;
    }
    if (r->pos >= r->n) {
      rows_clear(r);
      if (r->done) return 0;
      r->wseq = s->wseq;
      int rc = s->be->kv_scan(s->c, s->ns, r->last, r->cap, r->kv, &r->n);
      if (rc < 0) return push_be(L, s, rc), raise3(L);
      if (r->n < r->cap) r->done = 1;
      if (r->n == 0) return 0;
    }
    store_kv_row *row = &r->kv[r->pos++];
    r->last = row->id;
    if (row->kid != s->kid) return push_other_kid(L, s, "oflua_kv", row->id, row->kid), raise3(L);
    size_t klen = 0;
    if (row->kbox.n < BOX_OVERHEAD || row->kbox.n - BOX_OVERHEAD > MAX_KEY ||
        store_unseal(s->keys.aead, row->kbox.p, row->kbox.n, aad(&a, s, D_KV_KEY, NULL, 0),
                     key) != 0)
      return push_tampered(L, "oflua_kv", row->id), raise3(L);
    klen = row->kbox.n - BOX_OVERHEAD;
    if (klen < plen || memcmp(key, prefix, plen) != 0) {
      ofc_cleanse(key, klen);
      continue;
    }
    size_t vn;
    int bad = open_in_place(s->keys.aead, &row->vbox, aad(&a, s, D_KV_VALUE, key, klen), &vn);
    if (bad) {
      ofc_cleanse(key, klen);
      return push_tampered(L, "oflua_kv", row->id), raise3(L);
    }
    lua_pushlstring(L, (const char *)key, klen);
    ofc_cleanse(key, klen);
    push_plain(L, &row->vbox);
    store_bytes_free(&row->vbox);
    return 2;
  }
}

/* s:list([prefix]) -> iterator over key, value (id order). Every row of
 * the namespace has its key decrypted to test the prefix: O(rows). Raises
 * on a database error or a tampered row. */
/* The iterator reads the database: off an I/O thread first (see
 * blocking_call below); k runs in the same closure, upvalues included. */
static int list_iter_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return list_iter(L);
}

static int list_iter_offload(lua_State *L) {
  const oflua_wait_api *api = oflua__wait_api(L);
  if (api != NULL) return api->offload(L, list_iter_k, 0);
  return list_iter(L);
}

static int store_list(lua_State *L) {
  store_handle *s = check_open(L, 1);
  luaL_optlstring(L, 2, "", NULL);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    lua_pushliteral(L, "");
    lua_replace(L, 2);
  }
  if (ready(L, s)) return raise3(L);
  rows_new(L, SCAN_BATCH, 1);
  lua_pushcclosure(L, list_iter_offload, 3);
  return 1;
}

/* s:transaction(fn) -> fn's results. fn(s) runs inside a transaction
 * (SQLite: BEGIN IMMEDIATE; a savepoint when nested) and commits when it
 * returns; if it raises, the transaction is rolled back and the error
 * re-raised. nil, err if the transaction cannot start or commit. */
static int store_transaction(lua_State *L) {
  store_handle *s = check_open(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  READY(L, s);
  int rc = s->be->tx_begin(s->c, STORE_TX_EXCLUSIVE);
  if (rc < 0) return push_be(L, s, rc);
  s->utx++;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  int status = lua_pcall(L, 1, LUA_MULTRET, 0);
  s->utx--;
  if (s->c == NULL) {
    if (status != LUA_OK) return lua_error(L);
    return luaL_error(L, "oflua.store: the store was closed inside its transaction");
  }
  if (status != LUA_OK) {
    s->be->tx_rollback(s->c);
    s->wseq++;
    return lua_error(L);
  }
  rc = s->be->tx_commit(s->c);
  if (rc < 0) {
    s->wseq++;
    lua_settop(L, 2);
    return push_be(L, s, rc);
  }
  return lua_gettop(L) - 2;
}

/* ---- rekey ----------------------------------------------------------------- */

/* Everything rekey allocates lives in this userdata, whose __gc frees it:
 * nothing is lost if anything raises (nothing should, but a leak of key
 * contexts or plaintext must not depend on that). */
typedef struct {
  store_keys next; /* the keys being rotated to, for key id next_kid */
  int64_t next_kid, rows, bad_id;
  const char *bad_table;
  int fail;
  unsigned char *buf[3];
  size_t cap[3];
} rekey_t;

enum { REKEY_DB = 1, REKEY_TAMPERED, REKEY_OTHER_KID, REKEY_CRYPTO, REKEY_OOM };

static void rekey_release(rekey_t *r) {
  store_keys_free(&r->next);
  for (int i = 0; i < 3; i++) {
    if (r->buf[i] != NULL) ofc_cleanse(r->buf[i], r->cap[i]);
    free(r->buf[i]);
    r->buf[i] = NULL;
    r->cap[i] = 0;
  }
}

static int rekey_gc(lua_State *L) {
  rekey_release(luaL_checkudata(L, 1, REKEY_MT));
  return 0;
}

static unsigned char *rk_buf(rekey_t *r, int i, size_t n) {
  if (n <= r->cap[i] && r->buf[i] != NULL) return r->buf[i];
  if (r->buf[i] != NULL) ofc_cleanse(r->buf[i], r->cap[i]);
  free(r->buf[i]);
  r->cap[i] = n < 4096 ? 4096 : n;
  r->buf[i] = malloc(r->cap[i]);
  if (r->buf[i] == NULL) r->cap[i] = 0;
  return r->buf[i];
}

/* Re-seals every oflua_kv row of every namespace. 0 or -1 (r->fail). */
static int rekey_kv(store_handle *s, rekey_t *r, rows_t *rows) {
  store_aad a;
  int64_t last = 0;
  for (;;) {
    rows_clear(rows);
    int rc = s->be->kv_scan(s->c, NULL, last, rows->cap, rows->kv, &rows->n);
    if (rc < 0) return r->fail = REKEY_DB, -1;
    if (rows->n == 0) return 0;
    for (int i = 0; i < rows->n; i++) {
      store_kv_row *row = &rows->kv[i];
      size_t nslen = strlen(row->ns), klen, vlen;
      last = row->id;
      r->bad_id = row->id;
      r->bad_table = "oflua_kv";
      if (row->kid != s->kid) return r->fail = REKEY_OTHER_KID, -1;
      if (open_in_place(s->keys.aead, &row->kbox, store_aad_make(&a, row->ns, nslen, D_KV_KEY, NULL, 0), &klen) != 0 ||
          klen > MAX_KEY)
        return r->fail = REKEY_TAMPERED, -1;
      const unsigned char *key = row->kbox.p + NONCE_LEN;
      if (open_in_place(s->keys.aead, &row->vbox, store_aad_make(&a, row->ns, nslen, D_KV_VALUE, key, klen), &vlen) != 0)
        return r->fail = REKEY_TAMPERED, -1;
      unsigned char idx[IDX_LEN];
      unsigned char *kb = rk_buf(r, 0, klen + BOX_OVERHEAD), *vb = rk_buf(r, 1, vlen + BOX_OVERHEAD);
      if (kb == NULL || vb == NULL) return r->fail = REKEY_OOM, -1;
      if (store_blind(r->next.index, store_aad_make(&a, row->ns, nslen, D_KV_INDEX, key, klen), idx) != 0 ||
          store_seal(s, r->next.aead, key, klen, store_aad_make(&a, row->ns, nslen, D_KV_KEY, NULL, 0), kb) != 0 ||
          store_seal(s, r->next.aead, row->vbox.p + NONCE_LEN, vlen,
                     store_aad_make(&a, row->ns, nslen, D_KV_VALUE, key, klen), vb) != 0)
        return r->fail = REKEY_CRYPTO, -1;
      if (s->be->kv_reseal(s->c, row->id, idx, r->next_kid, cb(kb, klen + BOX_OVERHEAD),
                           cb(vb, vlen + BOX_OVERHEAD)) < 0)
        return r->fail = REKEY_DB, -1;
      r->rows++;
    }
  }
}

/* Re-seals every oflua_inbox row (event id, payload, last error). */
static int rekey_inbox(store_handle *s, rekey_t *r, rows_t *rows) {
  store_aad a;
  int64_t last = 0;
  for (;;) {
    rows_clear(rows);
    int rc = s->be->inbox_scan(s->c, last, rows->cap, rows->ev, &rows->n);
    if (rc < 0) return r->fail = REKEY_DB, -1;
    if (rows->n == 0) return 0;
    for (int i = 0; i < rows->n; i++) {
      store_event *e = &rows->ev[i];
      size_t nslen = strlen(e->ns), elen, plen, rlen = 0;
      last = e->id;
      r->bad_id = e->id;
      r->bad_table = "oflua_inbox";
      if (e->kid != s->kid) return r->fail = REKEY_OTHER_KID, -1;
      if (open_in_place(s->keys.aead, &e->ebox, store_aad_make(&a, e->ns, nslen, D_IN_ID, NULL, 0), &elen) != 0 ||
          elen > MAX_KEY)
        return r->fail = REKEY_TAMPERED, -1;
      const unsigned char *eid = e->ebox.p + NONCE_LEN;
      if (open_in_place(s->keys.aead, &e->pbox, store_aad_make(&a, e->ns, nslen, D_IN_PAYLOAD, eid, elen), &plen) != 0 ||
          (e->has_reason &&
           open_in_place(s->keys.aead, &e->rbox, store_aad_make(&a, e->ns, nslen, D_IN_REASON, eid, elen), &rlen) != 0))
        return r->fail = REKEY_TAMPERED, -1;
      unsigned char idx[IDX_LEN];
      unsigned char *eb = rk_buf(r, 0, elen + BOX_OVERHEAD), *pb = rk_buf(r, 1, plen + BOX_OVERHEAD),
                    *rb = rk_buf(r, 2, rlen + BOX_OVERHEAD);
      if (eb == NULL || pb == NULL || rb == NULL) return r->fail = REKEY_OOM, -1;
      if (store_blind(r->next.index, store_aad_make(&a, e->ns, nslen, D_IN_INDEX, eid, elen), idx) != 0 ||
          store_seal(s, r->next.aead, eid, elen, store_aad_make(&a, e->ns, nslen, D_IN_ID, NULL, 0), eb) != 0 ||
          store_seal(s, r->next.aead, e->pbox.p + NONCE_LEN, plen,
                     store_aad_make(&a, e->ns, nslen, D_IN_PAYLOAD, eid, elen), pb) != 0 ||
          (e->has_reason &&
           store_seal(s, r->next.aead, e->rbox.p + NONCE_LEN, rlen,
                      store_aad_make(&a, e->ns, nslen, D_IN_REASON, eid, elen), rb) != 0))
        return r->fail = REKEY_CRYPTO, -1;
      if (s->be->inbox_reseal(s->c, e->id, idx, r->next_kid, cb(eb, elen + BOX_OVERHEAD),
                              cb(pb, plen + BOX_OVERHEAD),
                              e->has_reason ? cb(rb, rlen + BOX_OVERHEAD) : cb(NULL, 0)) < 0)
        return r->fail = REKEY_DB, -1;
      r->rows++;
    }
  }
}

/* s:rekey(new_key | {key = base64} | {key_file = path}) -> true, rows | nil, err.
 * Re-seals every row of every namespace and the key check under keys
 * derived from the new master key (key id + 1), in one transaction: either
 * all rows move or none. */
static int store_rekey(lua_State *L) {
  store_handle *s = check_open(L, 1);
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
  READY(L, s);
  if (s->be->tx_depth(s->c) > 0)
    return push_err(L, "invalid", "oflua.store: rekey cannot run inside a transaction");
  /* Every Lua allocation first: nothing below raises. */
  rows_t *evrows = rows_new(L, SCAN_BATCH, 0);
  rows_t *kvrows = rows_new(L, SCAN_BATCH, 1);
  rekey_t *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, REKEY_MT);
  unsigned char master[KEY_LEN];
  char err[300];
  if (text != NULL && store_decode_key(text, n, master) != 0)
    return push_err(L, "invalid", "oflua.store: " KEY_FORMAT_MSG);
  if (text == NULL && store_read_key_file(file, master, err, sizeof err) != 0)
    return push_err(L, "invalid", "oflua.store: %s", err);
  r->next_kid = s->kid + 1;
  int dk = store_derive(master, s->salt, r->next_kid, &r->next);
  ofc_cleanse(master, sizeof master);
  if (dk != 0) {
    rekey_release(r);
    return push_err(L, "db", "oflua.store: key derivation failed");
  }
  int rc = s->be->tx_begin(s->c, STORE_TX_EXCLUSIVE);
  if (rc < 0) {
    rekey_release(r);
    return push_be(L, s, rc);
  }
  int64_t kid = 0;
  rc = s->be->meta_kid(s->c, &kid);
  if (rc < 0 || kid != s->kid) {
    s->be->tx_rollback(s->c);
    rekey_release(r);
    return rc < 0 ? push_be(L, s, rc) : push_stale(L, s, kid);
  }
  if (s->be->rekey_before) s->be->rekey_before(s->c);
  /* PostgreSQL: lock the meta row before the scans (writers hold FOR KEY
   * SHARE on it), so no write slips in under the old key. */
  store_aad a;
  unsigned char box[CHECK_BOX_LEN];
  int ok = store_seal(s, r->next.aead, CHECK_TEXT, sizeof CHECK_TEXT - 1,
                      store_check_aad(&a, r->next_kid, s->salt), box) == 0;
  if (!ok) r->fail = REKEY_CRYPTO;
  else if (s->be->meta_set(s->c, r->next_kid, cb(box, sizeof box)) < 0) r->fail = REKEY_DB;
  ok = r->fail == 0 && rekey_kv(s, r, kvrows) == 0 && rekey_inbox(s, r, evrows) == 0;
  rows_clear(kvrows);
  rows_clear(evrows);
  if (ok && s->be->tx_commit(s->c) < 0) {
    ok = 0;
    r->fail = REKEY_DB;
  } else if (!ok) {
    s->be->tx_rollback(s->c);
  }
  if (s->be->rekey_after) s->be->rekey_after(s->c, ok);
  if (!ok) {
    int ret;
    if (r->fail == REKEY_OTHER_KID)
      ret = push_err(L, "stale",
                     "oflua.store: rekey stopped at %s row %I, which is sealed under another "
                     "key id; nothing was changed",
                     r->bad_table, (lua_Integer)r->bad_id);
    else if (r->fail == REKEY_TAMPERED)
      ret = push_err(L, "tampered",
                     "oflua.store: rekey stopped at %s row %I, which failed authentication "
                     "(altered or copied from another row); nothing was changed",
                     r->bad_table, (lua_Integer)r->bad_id);
    else
      ret = push_err(L, "db", "oflua.store: rekey failed, nothing was changed: %s",
                     r->fail == REKEY_CRYPTO ? "encryption failed"
                     : r->fail == REKEY_OOM  ? "out of memory"
                                             : s->c->err);
    rekey_release(r);
    return ret;
  }
  store_keys_free(&s->keys);
  s->keys = r->next;
  r->next.aead = NULL;
  r->next.index = NULL;
  s->kid = r->next_kid;
  s->wseq++;
  lua_Integer rows = (lua_Integer)r->rows;
  rekey_release(r);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, rows);
  return 2;
}

/* ---- webhook inbox ----------------------------------------------------------
 * One row per event id (blind index, unique per namespace). States:
 *   pending  waiting for next_at (0 attempts: new; more: backing off after a failure)
 *   claimed  handed to a worker until next_at (its lease); claimable again after
 *   done     handled; kept so a redelivery is recognised as a duplicate
 *   dead     failed max_attempts times; inbox_retry() puts it back to pending
 */

/* Claim tokens (store_fence): "<attempts>:<lease end as a hex float>", an
 * opaque text for the caller (exact: the lease end round-trips). */
static void push_token(lua_State *L, int64_t attempts, double lease_end) {
  char buf[64];
  snprintf(buf, sizeof buf, "%lld:%a", (long long)attempts, lease_end);
  lua_pushstring(L, buf);
}

/* The optional claim token at arg: 1 (fence filled), 0 (none given). */
/* Parses a claim token ("attempts:lease_end"); 1, or 0 when it is not one. */
static int parse_token(const char *t, store_fence *fence) {
  char *end = NULL;
  errno = 0;
  long long a = strtoll(t, &end, 10);
  int ok = errno == 0 && end != t && *end == ':' && a >= 0;
  if (ok) {
    const char *d = end + 1;
    fence->lease_end = strtod(d, &end);
    ok = end != d && *end == '\0' && isfinite(fence->lease_end);
  }
  fence->attempts = (int64_t)a;
  return ok;
}

static int opt_token(lua_State *L, int arg, store_fence *fence) {
  if (lua_isnoneornil(L, arg)) return 0;
  luaL_argcheck(L, parse_token(luaL_checkstring(L, arg), fence), arg,
                "not a claim token (the claim field of an inbox_claim item)");
  return 1;
}

/* Whether a locked row is still held by the claim a fence names. */
static int fence_holds(const store_event *e, const store_fence *fence) {
  return strcmp(e->state, "claimed") == 0 && e->attempts == fence->attempts &&
         e->next_at == fence->lease_end;
}

static int push_lost(lua_State *L) {
  return push_err(L, "lost",
                  "oflua.store: the claim on this event was lost (its lease ran out and it "
                  "was claimed again, or it was settled meanwhile)");
}

static lua_Number opt_lease(lua_State *L, int arg) {
  lua_Number lease = luaL_optnumber(L, arg, -1);
  luaL_argcheck(L, lease == -1 || (lease > 0 && lease <= 86400 * 7), arg,
                "lease_s must be within (0, 604800] seconds");
  return lease;
}

/* Seals n events (ids and payloads at stack positions given by the caller
 * through get) and inserts them in one transaction. */
typedef struct {
  const char *eid, *payload;
  size_t elen, plen;
} new_item;

static int add_events(lua_State *L, store_handle *s, const new_item *items, int n, double now,
                      lua_Number lease, int *inserted) {
  /* One buffer for every box, owned by a userdata on the stack. */
  size_t total = 0;
  for (int i = 0; i < n; i++) total += items[i].elen + items[i].plen + 2 * BOX_OVERHEAD;
  store_new_event *ev = lua_newuserdatauv(L, (size_t)n * sizeof *ev + total, 0);
  unsigned char *p = (unsigned char *)(ev + n);
  store_aad a;
  for (int i = 0; i < n; i++) {
    const new_item *it = &items[i];
    unsigned char *eb = p, *pb = p + it->elen + BOX_OVERHEAD;
    p = pb + it->plen + BOX_OVERHEAD;
    if (store_blind(s->keys.index, aad(&a, s, D_IN_INDEX, it->eid, it->elen), ev[i].idx) != 0 ||
        store_seal(s, s->keys.aead, it->eid, it->elen, aad(&a, s, D_IN_ID, NULL, 0), eb) != 0 ||
        store_seal(s, s->keys.aead, it->payload, it->plen,
                   aad(&a, s, D_IN_PAYLOAD, it->eid, it->elen), pb) != 0)
      return push_err(L, "db", "oflua.store: encryption failed");
    ev[i].ebox = cb(eb, it->elen + BOX_OVERHEAD);
    ev[i].pbox = cb(pb, it->plen + BOX_OVERHEAD);
    /* With lease_s the new event is inserted already claimed by the caller
     * (as inbox_claim would hand it out): one write instead of two. */
    ev[i].state = lease > 0 ? "claimed" : "pending";
    ev[i].next_at = lease > 0 ? now + (double)lease : now;
    ev[i].now = now;
  }
  int rc = s->be->inbox_add(s->c, s->ns, s->kid, ev, n, inserted);
  if (rc < 0) return push_be(L, s, rc);
  for (int i = 0; i < n; i++)
    if (!inserted[i]) {
      int f = check_fresh(L, s);
      if (f) return f;
      break;
    }
  lua_pop(L, 1);
  return 0;
}

/* s:inbox_add(event_id, payload[, now[, lease_s]]) -> true (new) | false (seen) | nil, err */
static int store_inbox_add(lua_State *L) {
  store_handle *s = check_open(L, 1);
  new_item it;
  it.eid = check_id(L, 2, &it.elen, "event id");
  it.payload = luaL_checklstring(L, 3, &it.plen);
  double now = opt_now(L, 4);
  lua_Number lease = opt_lease(L, 5);
  if (it.plen > MAX_VALUE - BOX_OVERHEAD)
    return push_err(L, "invalid", "oflua.store: payload too large");
  READY(L, s);
  int inserted = 0;
  int r = add_events(L, s, &it, 1, now, lease, &inserted);
  if (r) return r;
  lua_pushboolean(L, inserted);
  if (!inserted || lease <= 0) return 1;
  push_token(L, 0, now + (double)lease);
  return 2;
}

/* s:inbox_add_many({{id =, payload =}, ...}[, now[, lease_s]]) -> {true | false, ...}
 * | nil, err: up to 1000 events in one transaction (all or none); result[i]
 * says whether event i was new (true) or a duplicate (false). */
static int store_inbox_add_many(lua_State *L) {
  store_handle *s = check_open(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  double now = opt_now(L, 3);
  lua_Number lease = opt_lease(L, 4);
  lua_settop(L, 4);
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 0 && n <= MAX_BATCH, 2, "at most 1000 events per call");
  new_item *items = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *items, 0);
  int *inserted = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *inserted, 0);
  /* Anchors every id and payload: an item's __index may return fresh
   * strings that nothing else references. */
  lua_createtable(L, (int)(2 * n), 0);
  int anchor = lua_gettop(L);
  size_t total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TTABLE)
      return luaL_argerror(L, 2, lua_pushfstring(L, "item %I is not a table", i));
    lua_getfield(L, -1, "id");
    lua_getfield(L, -2, "payload");
    new_item *it = &items[i - 1];
    it->eid = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &it->elen) : NULL;
    it->payload = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &it->plen) : NULL;
    if (it->eid == NULL || it->payload == NULL)
      return luaL_argerror(L, 2, lua_pushfstring(L, "item %I needs string fields id and payload", i));
    if (it->elen > MAX_KEY)
      return luaL_argerror(L, 2, lua_pushfstring(L, "item %I: event id longer than %d bytes", i, MAX_KEY));
    total += it->plen;
    if (it->plen > MAX_VALUE - BOX_OVERHEAD || total > MAX_VALUE)
      return push_err(L, "invalid", "oflua.store: payloads too large");
    lua_rawseti(L, anchor, 2 * i);
    lua_rawseti(L, anchor, 2 * i - 1);
    lua_pop(L, 1);
  }
  READY(L, s);
  lua_createtable(L, (int)n, 0);
  int result = lua_gettop(L);
  if (n > 0) {
    int r = add_events(L, s, items, (int)n, now, lease, inserted);
    if (r) return r;
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_pushboolean(L, inserted[i - 1]);
    lua_rawseti(L, result, i);
  }
  lua_settop(L, result);
  if (lease <= 0) return 1;
  push_token(L, 0, now + (double)lease); /* the claim of every new event */
  return 2;
}

/* ---- group commit ------------------------------------------------------------
 * s:inbox_add_grouped(id, payload[, now[, lease_s[, answer]]]) is inbox_add whose
 * write transaction is shared with the other deliveries that arrive at the
 * same time (store_group.c). The row is sealed here, in the caller's thread;
 * then the caller waits for the committer: an oflua.server handler parks
 * (its worker serves other requests meanwhile, server_wait.h), anything else
 * blocks. The answer comes only after the batch holding the row committed.
 * `answer` (server.answer, parked handlers only): the server sends it to the
 * client as soon as the row is committed as new, without waiting for the
 * handler to resume (a hop through its worker thread less on the path of
 * the answer); the handler's own answer is then dropped. */

/* The completion of a parked handler: wake it through the server, which
 * first sends its prepared answer (if it gave one) when the row is new. */
static void grouped_complete(group_item *it) {
  const oflua_wait_api *api = it->aux;
  void *a = it->rc == 0 && it->inserted ? it->answer : NULL;
  if (a != NULL) api->complete_answer((struct oflua_waiter *)it->token, a);
  else api->complete((struct oflua_waiter *)it->token);
}

static void grouped_release(void *ud) {
  group_item *it = ud;
  if (it->answer != NULL) ((const oflua_wait_api *)it->aux)->answer_unref(it->answer);
  free(it);
}

/* A completed item's results, copied out of it. */
typedef struct {
  int rc, inserted;
  int64_t meta_kid;
  char err[sizeof ((group_item *)0)->err];
} grouped_res;

static void grouped_copy(const group_item *it, grouped_res *r) {
  r->rc = it->rc;
  r->inserted = it->inserted;
  r->meta_kid = it->meta_kid;
  memcpy(r->err, it->err, sizeof r->err);
}

/* Pushes the results of a completed item. lease_end > 0: the row was
 * inserted claimed (its claim token follows). */
static int grouped_results(lua_State *L, store_handle *s, const grouped_res *it, double lease_end) {
  int rc = it->rc, inserted = it->inserted;
  if (rc == 1)
    return push_err(L, "busy", "oflua.store: the group-commit queue is full (%d rows waiting)",
                    GROUP_QUEUE_ROWS);
  if (rc < 0)
    return push_err(L, rc == STORE_EUNAVAIL ? "unavailable" : "db", "oflua.store: %s", it->err);
  if (!inserted) { /* a duplicate, or a row under a key id no longer current */
    /* the committer read the store's key id after the batch (a read of
     * this handle's own otherwise: one per duplicate) */
    if (it->meta_kid != 0 && it->meta_kid != s->kid) return push_stale(L, s, it->meta_kid);
    if (it->meta_kid == 0) {
      if (s->c == NULL) return push_err(L, "db", "oflua.store: the store was closed meanwhile");
      int f = check_fresh(L, s);
      if (f) return f;
    }
  }
  lua_pushboolean(L, inserted);
  if (!inserted || lease_end <= 0) return 1;
  push_token(L, 0, lease_end);
  return 2;
}

static int grouped_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  group_item *it = (group_item *)ctx; /* freed by grouped_release, after this */
  double lease_end = strcmp(it->ev.state, "claimed") == 0 ? it->ev.next_at : 0;
  grouped_res r;
  grouped_copy(it, &r);
  return grouped_results(L, to_store(L, 1), &r, lease_end);
}

/* The group of this handle (made on first use, anew after a fork or a
 * rekey through it): 0, or pushes nil, err and returns their count (<0). */
static int handle_group(lua_State *L, store_handle *s) {
  if (s->group != NULL && !store_group_ours(s->group)) s->group = NULL; /* forked */
  if (s->group != NULL && s->group_kid != s->kid) { /* rekeyed through this handle */
    store_group_ring_clear(s->group, s);
    store_group_unref(s->group);
    s->group = NULL;
  }
  if (s->group == NULL) {
    char err[300];
    s->group = store_group_get(s->be, &s->gopts, s->ns, s->kid, err, sizeof err);
    if (s->group == NULL) return -push_err(L, "db", "oflua.store: %s", err);
    s->group_kid = s->kid;
  }
  return 0;
}

static int store_inbox_add_grouped(lua_State *L) {
  store_handle *s = check_open(L, 1);
  int handoff = 0;
  if (!lua_isnoneornil(L, 7)) {
    luaL_checktype(L, 7, LUA_TBOOLEAN);
    handoff = lua_toboolean(L, 7);
  }
  luaL_argcheck(L, !handoff || opt_lease(L, 5) > 0, 7, "a handoff needs lease_s (the claim's lease)");
  /* A private in-memory database cannot be shared with a committer (nor
   * hand rows off: inserted pending then, for the inbox's claims). */
  if (s->gopts.path != NULL && strcmp(s->gopts.path, ":memory:") == 0) {
    lua_settop(L, handoff ? 4 : 5);
    return store_inbox_add(L);
  }
  size_t elen, plen;
  const char *eid = check_id(L, 2, &elen, "event id");
  const char *payload = luaL_checklstring(L, 3, &plen);
  double now = opt_now(L, 4);
  lua_Number lease = opt_lease(L, 5);
  if (!lua_isnoneornil(L, 6) && luaL_testudata(L, 6, OFLUA_ANSWER_MT) == NULL)
    luaL_typeerror(L, 6, "oflua.server answer (server.answer) or nil");
  if (plen > MAX_VALUE - BOX_OVERHEAD)
    return push_err(L, "invalid", "oflua.store: payload too large");
  lua_settop(L, 6);
  lua_replace(L, 4); /* [4]: the answer, or nil */
  lua_settop(L, 4);
  READY(L, s);
  /* oflua.server's park/resume functions, from the registry of a server VM
   * (internal.h; NULL elsewhere): the store cannot link against the server's
   * side object. */
  const oflua_wait_api *api = oflua__wait_api(L);
  int g = handle_group(L, s);
  if (g < 0) return -g;
  size_t eb = elen + BOX_OVERHEAD, pb = plen + BOX_OVERHEAD;
  group_item *it = malloc(sizeof *it + eb + pb);
  if (it == NULL) return push_err(L, "db", "oflua.store: out of memory");
  memset(it, 0, sizeof *it);
  store_aad a;
  if (store_blind(s->keys.index, aad(&a, s, D_IN_INDEX, eid, elen), it->ev.idx) != 0 ||
      store_seal(s, s->keys.aead, eid, elen, aad(&a, s, D_IN_ID, NULL, 0), it->data) != 0 ||
      store_seal(s, s->keys.aead, payload, plen, aad(&a, s, D_IN_PAYLOAD, eid, elen),
                 it->data + eb) != 0) {
    free(it);
    return push_err(L, "db", "oflua.store: encryption failed");
  }
  it->ev.ebox = cb(it->data, eb);
  it->ev.pbox = cb(it->data + eb, pb);
  /* a handoff row is made claimed by the committer, if its list has room */
  it->ev.state = lease > 0 && !handoff ? "claimed" : "pending";
  it->ev.next_at = lease > 0 && !handoff ? now + (double)lease : now;
  it->ev.now = now;
  it->handoff = handoff;
  it->lease = (double)lease;
  it->bytes = eb + pb + sizeof *it;
  if (api == NULL) { /* not a server VM: block this thread */
    int rc = store_group_submit(s->group, it);
    if (rc == 0) store_group_wait(s->group, it);
    else it->rc = 1;
    grouped_res r;
    grouped_copy(it, &r);
    free(it);
    return grouped_results(L, s, &r, lease > 0 && !handoff ? now + (double)lease : 0);
  }
  it->aux = api;
  it->answer = api->answer_ref(L, 4); /* NULL without one */
  struct oflua_waiter *w = api->begin(L, grouped_release, it); /* on error it frees it */
  it->complete = grouped_complete;
  it->batch = api->batch;
  it->token = w;
  if (store_group_submit(s->group, it) != 0) {
    it->rc = 1;
    api->complete(w);
  }
  return api->park(L, w, grouped_k, (lua_KContext)it);
}

/* The committer thread does the writing: only a handle not ready yet (its
 * first use: opening, connecting) waits here, so only then is the handler
 * moved off an I/O thread. */
static int store_inbox_done_grouped(lua_State *L);

static lua_CFunction grouped_fn(lua_KContext which) {
  return which == 0 ? store_inbox_add_grouped : store_inbox_done_grouped;
}

static int grouped_entry_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return grouped_fn(ctx)(L);
}

/* s:inbox_add_grouped (upvalue 0) and s:inbox_done_grouped (1). */
static int grouped_entry(lua_State *L) {
  lua_KContext which = (lua_KContext)lua_tointeger(L, lua_upvalueindex(1));
  store_handle *s = check_open(L, 1);
  const oflua_wait_api *api = s->ready ? NULL : oflua__wait_api(L);
  if (api != NULL) return api->offload(L, grouped_entry_k, which);
  return grouped_fn(which)(L);
}

/* s:group_stats() -> {batches, rows, max_batch, errors, rejected, queue_depth,
 * peak_depth, done_marked, done_missed, checkpoints, hist = {n1, n2, n4, ..., n256}} of the group commit on this
 * handle's database (process-wide: every handle on it); zeros before the
 * handle's first inbox_add_grouped. */
static int store_group_stats_lua(lua_State *L) {
  store_handle *s = to_store(L, 1);
  store_group_stats st;
  memset(&st, 0, sizeof st);
  if (s->group != NULL && store_group_ours(s->group)) store_group_stats_get(s->group, &st);
  lua_createtable(L, 0, 19);
#define F(name, v)                        \
  lua_pushinteger(L, (lua_Integer)(v)); \
  lua_setfield(L, -2, name)
  F("batches", st.batches);
  F("rows", st.rows);
  F("max_batch", st.max_batch);
  F("errors", st.errors);
  F("failed_rows", st.failed_rows);
  F("rejected", st.rejected);
  F("queue_depth", st.depth);
  F("peak_depth", st.peak_depth);
  F("done_marked", st.done_marked);
  F("done_missed", st.done_missed);
  F("checkpoints", st.checkpoints);
  F("handoff", st.ready_in);
  F("handoff_taken", st.ready_taken);
  F("handoff_expired", st.ready_expired);
  F("handoff_released", st.ready_released);
  F("handoff_full", st.ready_full);
  F("handoff_depth", st.ready_depth);
#undef F
  lua_createtable(L, GROUP_HIST, 0);
  for (int i = 0; i < GROUP_HIST; i++) {
    lua_pushinteger(L, (lua_Integer)st.hist[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "hist");
  return 1;
}

/* The database part of a claim, on connection c (the handle's, or the
 * group committer's under its lock): no Lua calls here (nothing may raise
 * while that lock is held). 0 and r filled, or an error in *e (r cleared). */
typedef struct {
  int what; /* CLAIM_* */
  int rc;
  int64_t id, kid;
  char err[sizeof ((store_conn *)0)->err];
} claim_err;
enum { CLAIM_OK, CLAIM_BE, CLAIM_OTHER_KID, CLAIM_TAMPERED, CLAIM_SEAL };

/* Rolls back what claim_db began (depth above base: not a transaction of
 * the caller's that it runs inside). */
static int claim_fail(store_conn *c, const store_backend *be, int base, rows_t *r, claim_err *e,
                      int what, int rc, int64_t id, int64_t kid) {
  e->what = what;
  e->rc = rc;
  e->id = id;
  e->kid = kid;
  snprintf(e->err, sizeof e->err, "%s", c->err);
  if (be->tx_depth(c) > base) be->tx_rollback(c);
  rows_clear(r);
  return -1;
}

static int event_index(lua_State *L, store_handle *s, const char *eid, size_t elen,
                       unsigned char idx[IDX_LEN]) {
  store_aad a;
  (void)L;
  return store_blind(s->keys.index, aad(&a, s, D_IN_INDEX, eid, elen), idx);
}

/* inbox_claim_grouped's done list, checked and blinded before any lock. */
typedef struct {
  unsigned char idx[IDX_LEN];
  store_fence fence;
  int fenced;
  int release; /* a handoff row whose lease ran out unrun: back to pending instead */
} claim_done;

static int claim_db(store_handle *s, store_conn *c, rows_t *r, int n, double lease, double now,
                    lua_Integer max, const claim_done *done, int ndone, claim_err *e) {
  const store_backend *be = s->be;
  int rc, base = be->tx_depth(c);
  if (ndone > 0) { /* the previous batch's done marks, in the claim's transaction */
    rc = be->tx_begin(c, 0);
    if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
    for (int i = 0; i < ndone; i++) {
      /* 0 (gone, rekeyed, or its claim lost to another runner): left as is */
      rc = be->inbox_mark(c, s->ns, done[i].idx, s->kid, done[i].release ? "pending" : "done",
                          done[i].release ? STORE_MARK_RELEASE : STORE_MARK_KEEP, now,
                          done[i].fenced ? &done[i].fence : NULL);
      if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
    }
  }
  /* SQLite: a claim's transaction takes the database's one write lock.
   * Look first, in a plain read (WAL: no lock taken), whether anything is
   * due at all: the tick and the inline app's periodic drains mostly find
   * nothing, and then they neither wait for the group committer's lock nor
   * hold it up. (PostgreSQL has row locks: no need, and a round trip.) */
  if (ndone == 0 && be->tx_depth(c) == 0 && be->single_writer) {
    rc = be->inbox_due(c, s->ns, now, 1, r->ev, &r->n);
    if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
    int any = r->n > 0;
    rows_clear(r);
    if (!any) return 0;
  }
  if (ndone == 0) {
    rc = be->tx_begin(c, 0);
    if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
  }
  rc = be->inbox_due(c, s->ns, now, n, r->ev, &r->n);
  if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
  store_aad a;
  unsigned char rbox[sizeof LEASE_EXPIRED - 1 + BOX_OVERHEAD];
  for (int i = 0; i < r->n; i++) {
    store_event *ev = &r->ev[i];
    size_t elen, plen;
    if (ev->kid != s->kid) return claim_fail(c, be, base, r, e, CLAIM_OTHER_KID, 0, ev->id, ev->kid);
    int expired = strcmp(ev->state, "claimed") == 0;
    if (open_in_place(s->keys.aead, &ev->ebox, aad(&a, s, D_IN_ID, NULL, 0), &elen) != 0 ||
        elen > MAX_KEY ||
        open_in_place(s->keys.aead, &ev->pbox,
                      aad(&a, s, D_IN_PAYLOAD, ev->ebox.p + NONCE_LEN, elen), &plen) != 0)
      return claim_fail(c, be, base, r, e, CLAIM_TAMPERED, 0, ev->id, 0);
    if (expired) {
      ev->attempts++;
      if (store_seal(s, s->keys.aead, LEASE_EXPIRED, sizeof LEASE_EXPIRED - 1,
                     aad(&a, s, D_IN_REASON, ev->ebox.p + NONCE_LEN, elen), rbox) != 0)
        return claim_fail(c, be, base, r, e, CLAIM_SEAL, 0, 0, 0);
    }
    int dead = expired && ev->attempts >= max;
    rc = be->inbox_set(c, ev->id, dead ? "dead" : "claimed", ev->attempts, dead ? now : now + lease,
                       expired ? cb(rbox, sizeof rbox) : cb(NULL, 0), now);
    if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
    snprintf(ev->state, sizeof ev->state, "%s", dead ? "dead" : "claimed");
    ev->next_at = now + lease; /* (the lease end: the claim token's) */
  }
  rc = be->tx_commit(c);
  if (rc < 0) return claim_fail(c, be, base, r, e, CLAIM_BE, rc, 0, 0);
  return 0;
}

/* The claimed rows of r (committed), as inbox_claim's result; clears r.
 * grouped: each with lease_left (a handoff row's lease began at its insert). */
static int push_claimed(lua_State *L, rows_t *r, double now, int grouped) {
  lua_createtable(L, r->n, 0);
  int out = 0;
  for (int i = 0; i < r->n; i++) {
    store_event *ev = &r->ev[i];
    if (strcmp(ev->state, "dead") == 0) continue;
    lua_createtable(L, 0, 5);
    push_plain(L, &ev->ebox);
    lua_setfield(L, -2, "id");
    push_plain(L, &ev->pbox);
    lua_setfield(L, -2, "payload");
    lua_pushinteger(L, (lua_Integer)ev->attempts);
    lua_setfield(L, -2, "attempts");
    push_token(L, ev->attempts, ev->next_at);
    lua_setfield(L, -2, "claim");
    if (grouped) {
      lua_pushnumber(L, ev->next_at - now);
      lua_setfield(L, -2, "lease_left");
    }
    lua_rawseti(L, -2, ++out);
  }
  rows_clear(r);
  return 1;
}

/* inbox_claim_grouped's done marks, queued for the committer's next batch
 * (all of them, or none: -1, and the claim's own transaction marks them). */
static int submit_done(store_handle *s, const claim_done *done, int ndone, double now) {
  group_item *head = NULL;
  for (int i = ndone - 1; i >= 0; i--) {
    group_item *it = calloc(1, sizeof *it);
    if (it == NULL) goto fail;
    memcpy(it->ev.idx, done[i].idx, sizeof it->ev.idx);
    it->kind = GROUP_DONE;
    it->has_fence = done[i].fenced;
    if (done[i].fenced) it->fence = done[i].fence;
    it->ev.now = now;
    it->bytes = sizeof *it;
    it->next = head;
    head = it;
  }
  if (store_group_submit_all(s->group, head, ndone) == 0) return 0;
fail:
  while (head != NULL) {
    group_item *next = head->next;
    free(head);
    head = next;
  }
  return -1;
}

/* inbox_claim_grouped's done marks in a transaction of this handle's own
 * connection (a backend with row locks, PostgreSQL: there each mark is a
 * round trip, which the committer's thread must not spend while inserts
 * wait). 0, or -1 (rolled back: the claim's transaction marks them). */
static int mark_own(store_handle *s, const claim_done *done, int ndone, double now) {
  const store_backend *be = s->be;
  store_conn *c = s->c;
  if (ndone == 0) return 0;
  store_mark *m = be->inbox_done_many != NULL ? malloc((size_t)ndone * sizeof *m) : NULL;
  int rc = be->tx_begin(c, STORE_TX_RELAXED); /* a lost mark: as in a process crash */
  if (m != NULL) { /* one statement */
    for (int i = 0; i < ndone; i++) {
      memcpy(m[i].idx, done[i].idx, sizeof m[i].idx);
      m[i].fenced = done[i].fenced;
      m[i].fence = done[i].fence;
    }
    int64_t applied = 0;
    if (rc >= 0) rc = be->inbox_done_many(c, s->ns, s->kid, m, ndone, now, &applied);
    free(m);
  } else {
    for (int i = 0; rc >= 0 && i < ndone; i++)
      rc = be->inbox_mark(c, s->ns, done[i].idx, s->kid, "done", STORE_MARK_KEEP, now,
                          done[i].fenced ? &done[i].fence : NULL);
  }
  if (rc >= 0 && be->tx_commit(c) >= 0) return 0;
  while (be->tx_depth(c) > 0) be->tx_rollback(c);
  return -1;
}

/* Handoff rows (store_group.c's ready list) into r->ev[r->n..]: up to max,
 * opened like claimed rows (it was this handle's key that sealed them). 0,
 * or -1 when one does not open (dropped; the others are kept). */
static int take_ready(store_handle *s, rows_t *r, int max, double now) {
  group_ready *got[64];
  int bad = 0;
  while (max > 0) {
    int k = store_group_take_ready(s->group, max < 64 ? max : 64, now, got);
    if (k == 0) break;
    max -= k;
    for (int i = 0; i < k; i++) {
      group_ready *g = got[i];
      store_event *ev = &r->ev[r->n];
      memset(ev, 0, sizeof *ev);
      size_t elen, plen;
      store_aad a;
      int ok = store_bytes_set(&ev->ebox, g->data, g->elen) == 0 &&
               store_bytes_set(&ev->pbox, g->data + g->elen, g->plen) == 0 &&
               open_in_place(s->keys.aead, &ev->ebox, aad(&a, s, D_IN_ID, NULL, 0), &elen) == 0 &&
               elen <= MAX_KEY &&
               open_in_place(s->keys.aead, &ev->pbox,
                             aad(&a, s, D_IN_PAYLOAD, ev->ebox.p + NONCE_LEN, elen), &plen) == 0;
      if (ok) {
        ev->kid = s->kid;
        ev->next_at = g->lease_end;
        snprintf(ev->state, sizeof ev->state, "claimed");
        r->n++;
      } else {
        store_event_clear(ev);
        bad = 1;
      }
      free(g);
    }
  }
  return bad ? -1 : 0;
}

/* s:inbox_claim(n, lease_s[, now[, max_attempts]]) -> {{id, payload, attempts}, ...} | nil, err
 * Hands out up to n due events (oldest due first) and leases them for
 * lease_s seconds; an event whose lease expired is handed out again and the
 * expiry counts as a failed attempt (so an event that crashes its worker
 * ends dead after max_attempts instead of looping). On PostgreSQL rows
 * another claimer holds are skipped (FOR UPDATE SKIP LOCKED). */
static int inbox_claim(lua_State *L, int grouped) {
  store_handle *s = check_open(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= MAX_CLAIM, 2, "n must be within [1, 10000]");
  lua_Number lease = luaL_checknumber(L, 3);
  luaL_argcheck(L, isfinite(lease) && lease >= 0 && lease <= 1e9, 3, "bad lease");
  double now = opt_now(L, 4);
  lua_Integer max = luaL_optinteger(L, 5, 5);
  luaL_argcheck(L, max >= 1, 5, "max_attempts must be at least 1");
  /* grouped: done items of the previous batch, {{id =, claim =}, ...} */
  int ndone = 0;
  claim_done *done = NULL;
  if (grouped && !lua_isnoneornil(L, 6)) {
    luaL_checktype(L, 6, LUA_TTABLE);
    lua_Unsigned m = lua_rawlen(L, 6);
    luaL_argcheck(L, m <= MAX_CLAIM, 6, "at most 10000 done items");
    ndone = (int)m;
  }
  READY(L, s);
  int shared = grouped && s->be->tx_depth(s->c) == 0 &&
               !(s->gopts.path != NULL && strcmp(s->gopts.path, ":memory:") == 0);
  if (ndone > 0) {
    done = lua_newuserdatauv(L, (size_t)ndone * sizeof *done, 0);
    memset(done, 0, (size_t)ndone * sizeof *done);
    for (int i = 0; i < ndone; i++) {
      lua_rawgeti(L, 6, i + 1);
      if (!lua_istable(L, -1)) luaL_argerror(L, 6, "done items must be inbox_claim items");
      lua_getfield(L, -1, "id");
      size_t elen;
      const char *eid = lua_tolstring(L, -1, &elen);
      if (eid == NULL || elen > MAX_KEY) luaL_argerror(L, 6, "a done item has no valid id");
      if (event_index(L, s, eid, elen, done[i].idx) != 0)
        return push_err(L, "db", "oflua.store: HMAC failed");
      lua_getfield(L, -2, "claim");
      done[i].fenced = lua_type(L, -1) == LUA_TSTRING;
      if (!lua_isnil(L, -1) && (!done[i].fenced || !parse_token(lua_tostring(L, -1), &done[i].fence)))
        luaL_argerror(L, 6, "a done item's claim is not a claim token");
      lua_pop(L, 3);
    }
  }
  rows_t *r = rows_new(L, (int)n, 0);
  claim_err e = {0};
  int rc;
  if (shared) {
    int g = handle_group(L, s);
    if (g < 0) return -g;
    /* in a server's tick VM: new rows for it wake its tick (set at every
     * claim: another handle that set it since may have gone, clearing it) */
    lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_TICK_RING);
    const oflua_tick_ring *ring = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (ring != NULL) store_group_ring_set(s->group, ring, s);
  }
  /* Handoff rows first, without reading the inbox (their done marks go to
   * the committer's queue on SQLite, in a transaction of this handle's own
   * elsewhere), as long as its own claims ran within the last
   * CLAIM_READ_EVERY_S: retries and rows inserted pending are not starved. */
  if (shared && store_group_has_ready(s->group) &&
      oflua__mono_now() - s->claim_sql_at < CLAIM_READ_EVERY_S &&
      (s->be->single_writer ? submit_done(s, done, ndone, now) : mark_own(s, done, ndone, now)) == 0) {
    if (take_ready(s, r, (int)n, now) != 0 && r->n == 0)
      return push_err(L, "db", "oflua.store: a handed-off inbox row does not open");
    if (r->n > 0) return push_claimed(L, r, now, 1);
    ndone = 0; /* (queued) */
  }
  /* Handoff rows whose lease ran out before anyone took them: handed back
   * in the claim's transaction (pending, due at once: this claim takes
   * them, with no attempt counted for a run that never began). */
  group_ready *exp[CLAIM_EXPIRED_MAX];
  int nexp = shared ? store_group_take_expired(s->group, CLAIM_EXPIRED_MAX, now, exp) : 0;
  claim_done *with_exp = NULL; /* (malloc'd: nothing may raise while they are out of the list) */
  if (nexp > 0) {
    with_exp = malloc((size_t)(ndone + nexp) * sizeof *with_exp);
    if (with_exp == NULL) { /* they wait for the next claim */
      store_group_put_back(s->group, exp, nexp);
      nexp = 0;
    } else {
      if (ndone > 0) memcpy(with_exp, done, (size_t)ndone * sizeof *done);
      for (int i = 0; i < nexp; i++) {
        claim_done *d = &with_exp[ndone + i];
        memcpy(d->idx, exp[i]->idx, sizeof d->idx);
        d->fenced = 1;
        d->fence.attempts = 0;
        d->fence.lease_end = exp[i]->lease_end;
        d->release = 1;
      }
      done = with_exp;
      ndone += nexp;
    }
  }
  /* Grouped, on SQLite, outside a transaction of the caller's: on the group
   * committer's connection, between its batches. That file has one writer
   * then, whose page cache no other connection's commit invalidates (each
   * connection's cache is dropped whenever another one wrote). */
  if (shared && s->be->single_writer) {
    char err[300];
    store_conn *c = store_group_lock_conn(s->group, err, sizeof err);
    if (c == NULL) {
      if (nexp > 0) store_group_put_back(s->group, exp, nexp);
      free(with_exp);
      return push_err(L, "unavailable", "oflua.store: %s", err);
    }
    rc = claim_db(s, c, r, (int)n, (double)lease, now, max, done, ndone, &e);
    store_group_unlock_conn(s->group);
  } else {
    rc = claim_db(s, s->c, r, (int)n, (double)lease, now, max, done, ndone, &e);
  }
  /* the releases of expired handoff rows committed with the claim, or not */
  free(with_exp);
  if (rc < 0 && nexp > 0) store_group_put_back(s->group, exp, nexp);
  else
    for (int i = 0; i < nexp; i++) free(exp[i]);
  if (rc < 0) {
    switch (e.what) {
    case CLAIM_OTHER_KID: return push_other_kid(L, s, "oflua_inbox", e.id, e.kid);
    case CLAIM_TAMPERED: return push_tampered(L, "oflua_inbox", e.id);
    case CLAIM_SEAL: return push_err(L, "db", "oflua.store: encryption failed");
    default:
      return push_err(L, e.rc == STORE_EUNAVAIL ? "unavailable" : "db", "oflua.store: %s", e.err);
    }
  }
  if (shared) {
    s->claim_sql_at = oflua__mono_now();
    /* room left: handoff rows (a failure to open one only drops it) */
    if (r->n < (int)n) (void)take_ready(s, r, (int)n - r->n, now);
  }
  return push_claimed(L, r, now, grouped);
}

static int store_inbox_claim(lua_State *L) {
  return inbox_claim(L, 0);
}

/* s:inbox_claim_grouped(n, lease_s[, now[, max_attempts[, done]]]) -> as
 * inbox_claim, after marking done (in the same transaction) the items of
 * `done` (inbox_claim items whose handlers succeeded; one whose claim was
 * lost, or that is gone, is left as it is). On SQLite it runs on the group
 * committer's connection between two of its batches, so the database keeps
 * one writing connection; elsewhere, or inside s:transaction, on the
 * handle's. */
static int store_inbox_claim_grouped(lua_State *L) {
  return inbox_claim(L, 1);
}

/* Finds event idx inside the open transaction; 1 found, 0 absent, or pushes
 * nil, err (transaction rolled back) and returns 3. */
static int find_locked(lua_State *L, store_handle *s, const unsigned char *idx, store_event *e) {
  int64_t mkid = 0;
  int rc = s->be->inbox_find(s->c, s->ns, idx, &mkid, e);
  if (rc < 0) {
    s->be->tx_rollback(s->c);
    return -push_be(L, s, rc);
  }
  if (mkid != s->kid) {
    store_event_clear(e);
    s->be->tx_rollback(s->c);
    return -push_stale(L, s, mkid);
  }
  if (rc == 1 && e->kid != s->kid) {
    int64_t id = e->id, kid = e->kid;
    store_event_clear(e);
    s->be->tx_rollback(s->c);
    return -push_other_kid(L, s, "oflua_inbox", id, kid);
  }
  return rc;
}


/* Shared by done/retry: find the event, set its state. */
static int inbox_move(lua_State *L, const char *state, int reset, int token_arg) {
  store_handle *s = check_open(L, 1);
  size_t elen;
  const char *eid = check_id(L, 2, &elen, "event id");
  double now = opt_now(L, 3);
  store_fence fence;
  const store_fence *fp = token_arg > 0 && opt_token(L, token_arg, &fence) ? &fence : NULL;
  READY(L, s);
  unsigned char idx[IDX_LEN];
  if (event_index(L, s, eid, elen, idx) != 0) return push_err(L, "db", "oflua.store: HMAC failed");
  /* One statement in the common case (the hot path of every delivery). */
  int rc = s->be->inbox_mark(s->c, s->ns, idx, s->kid, state, reset, now, fp);
  if (rc < 0) return push_be(L, s, rc);
  if (rc == 1) {
    lua_pushboolean(L, 1);
    return 1;
  }
  /* Absent, or under another key id: find out which. */
  rows_t *r = rows_new(L, 1, 0);
  rc = s->be->tx_begin(s->c, 0);
  if (rc < 0) return push_be(L, s, rc);
  int f = find_locked(L, s, idx, &r->ev[0]);
  if (f < 0) return -f;
  r->n = f;
  if (f == 0) {
    s->be->tx_rollback(s->c);
    lua_pushboolean(L, 0);
    return 1;
  }
  store_event *e = &r->ev[0];
  if (reset == STORE_MARK_RELEASE && strcmp(e->state, "claimed") != 0) {
    s->be->tx_rollback(s->c); /* only a claimed event goes back unrun */
    rows_clear(r);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (fp != NULL && !fence_holds(e, fp)) {
    s->be->tx_rollback(s->c);
    rows_clear(r);
    return push_lost(L);
  }
  rc = s->be->inbox_set(s->c, e->id, state, reset == STORE_MARK_RETRY ? 0 : e->attempts,
                        reset != STORE_MARK_KEEP ? now : e->next_at, cb(NULL, 0), now);
  if (rc >= 0) rc = s->be->tx_commit(s->c);
  else s->be->tx_rollback(s->c);
  rows_clear(r);
  if (rc < 0) return push_be(L, s, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* s:inbox_done(event_id[, now[, claim]]) -> true | false (unknown id) | nil, err
 * With claim (an inbox_claim item's token) only while that claim still
 * holds the event: else nil, err, "lost" and nothing changes. */
static int store_inbox_done(lua_State *L) {
  return inbox_move(L, "done", STORE_MARK_KEEP, 4);
}

/* s:inbox_done_grouped(event_id[, now[, claim]]) -> true | nil, err, kind
 * inbox_done without a write of its own: the mark joins the group
 * committer's next batch and this call returns at once (true: queued).
 * Nothing waits for it: should it fail, or the process stop first, the
 * event stays claimed until its lease runs out and then runs again (what
 * a crash between a handler and its inbox_done does anyway). The group's
 * stats count marks applied and missed. "busy": the queue is full (call
 * inbox_done instead). */
static int store_inbox_done_grouped(lua_State *L) {
  store_handle *s = check_open(L, 1);
  if (s->gopts.path != NULL && strcmp(s->gopts.path, ":memory:") == 0) {
    lua_settop(L, 4);
    return inbox_move(L, "done", STORE_MARK_KEEP, 4);
  }
  size_t elen;
  const char *eid = check_id(L, 2, &elen, "event id");
  double now = opt_now(L, 3);
  store_fence fence;
  int fenced = opt_token(L, 4, &fence);
  READY(L, s);
  int g = handle_group(L, s);
  if (g < 0) return -g;
  group_item *it = calloc(1, sizeof *it);
  if (it == NULL) return push_err(L, "db", "oflua.store: out of memory");
  if (event_index(L, s, eid, elen, it->ev.idx) != 0) {
    free(it);
    return push_err(L, "db", "oflua.store: HMAC failed");
  }
  it->kind = GROUP_DONE;
  it->has_fence = fenced;
  if (fenced) it->fence = fence;
  it->ev.now = now;
  it->bytes = sizeof *it;
  if (store_group_submit(s->group, it) != 0) {
    free(it);
    return push_err(L, "busy", "oflua.store: the group-commit queue is full (%d rows waiting)",
                    GROUP_QUEUE_ROWS);
  }
  lua_pushboolean(L, 1);
  return 1;
}



/* s:inbox_retry(event_id[, now]) -> true | false: back to pending, due now,
 * attempts reset (for a dead, failed or done event). */
static int store_inbox_retry(lua_State *L) {
  return inbox_move(L, "pending", STORE_MARK_RETRY, 0);
}

/* s:inbox_release(event_id[, now[, claim]]) -> true | false (unknown id, or
 * not claimed) | nil, err, "lost": hands a claimed event back unrun:
 * pending, due now, attempts as they were (no attempt is counted: its
 * handlers did not run). With claim, only while that claim still holds the
 * event. */
static int store_inbox_release(lua_State *L) {
  return inbox_move(L, "pending", STORE_MARK_RELEASE, 4);
}

/* s:inbox_fail(event_id, reason[, max_attempts=5[, now[, delay_s]]])
 *   -> "pending", next_attempt_at | "dead" | nil, err
 * Counts a failed attempt. Below max_attempts the event is due again after
 * delay_s, by default 2^attempts seconds (capped at an hour); at
 * max_attempts it becomes dead. With claim (the inbox_claim item's token, 7th
 * argument) only while that claim still holds the event: else nil, err,
 * "lost" and nothing changes. */
static int store_inbox_fail(lua_State *L) {
  store_handle *s = check_open(L, 1);
  size_t elen, rlen;
  const char *eid = check_id(L, 2, &elen, "event id");
  const char *reason = luaL_optlstring(L, 3, "", &rlen);
  lua_Integer max = luaL_optinteger(L, 4, 5);
  luaL_argcheck(L, max >= 1, 4, "max_attempts must be at least 1");
  double now = opt_now(L, 5);
  double delay = -1;
  if (!lua_isnoneornil(L, 6)) {
    delay = (double)luaL_checknumber(L, 6);
    luaL_argcheck(L, isfinite(delay) && delay >= 0, 6, "delay_s must be >= 0");
  }
  store_fence fence;
  int fenced = opt_token(L, 7, &fence);
  if (rlen > 65536) rlen = 65536; /* a reason is a message, not a document */
  READY(L, s);
  rows_t *r = rows_new(L, 1, 0);
  store_aad a;
  unsigned char idx[IDX_LEN], small[SMALL_BOX];
  unsigned char *rbox = box_buffer(L, small, rlen + BOX_OVERHEAD);
  if (event_index(L, s, eid, elen, idx) != 0 ||
      store_seal(s, s->keys.aead, reason, rlen, aad(&a, s, D_IN_REASON, eid, elen), rbox) != 0)
    return push_err(L, "db", "oflua.store: encryption failed");
  int rc = s->be->tx_begin(s->c, 0);
  if (rc < 0) return push_be(L, s, rc);
  int f = find_locked(L, s, idx, &r->ev[0]);
  if (f < 0) return -f;
  r->n = f;
  if (f == 0) {
    s->be->tx_rollback(s->c);
    return push_err(L, "invalid", "oflua.store: no such event in the inbox");
  }
  if (fenced && !fence_holds(&r->ev[0], &fence)) {
    s->be->tx_rollback(s->c);
    rows_clear(r);
    return push_lost(L);
  }
  int64_t attempts = r->ev[0].attempts + 1;
  int dead = attempts >= max;
  if (delay < 0)
    delay = attempts >= 12 ? BACKOFF_CAP_S : fmin(ldexp(1.0, (int)attempts), BACKOFF_CAP_S);
  double next_at = dead ? now : now + delay;
  rc = s->be->inbox_set(s->c, r->ev[0].id, dead ? "dead" : "pending", attempts, next_at,
                        cb(rbox, rlen + BOX_OVERHEAD), now);
  if (rc >= 0) rc = s->be->tx_commit(s->c);
  else s->be->tx_rollback(s->c);
  rows_clear(r);
  if (rc < 0) return push_be(L, s, rc);
  if (dead) {
    lua_pushliteral(L, "dead");
    return 1;
  }
  lua_pushliteral(L, "pending");
  lua_pushnumber(L, next_at);
  return 2;
}

/* Opens an event row's boxes in place; 0 or -1 (tampered). eid: the known
 * event id, or NULL to open it from the row. */
static int open_event(store_handle *s, store_event *e, const char *eid, size_t elen) {
  store_aad a;
  size_t n;
  if (eid == NULL) {
    if (open_in_place(s->keys.aead, &e->ebox, aad(&a, s, D_IN_ID, NULL, 0), &elen) != 0 ||
        elen > MAX_KEY)
      return -1;
    eid = (const char *)e->ebox.p + NONCE_LEN;
  }
  if (open_in_place(s->keys.aead, &e->pbox, aad(&a, s, D_IN_PAYLOAD, eid, elen), &n) != 0)
    return -1;
  if (e->has_reason &&
      open_in_place(s->keys.aead, &e->rbox, aad(&a, s, D_IN_REASON, eid, elen), &n) != 0)
    return -1;
  return 0;
}

/* Pushes {id, payload, state, attempts, last_error, next_attempt_at,
 * created_at, updated_at} of an opened row. */
static void push_event(lua_State *L, const store_event *e, const char *eid, size_t elen,
                       int brief) {
  lua_createtable(L, 0, 8);
  if (eid != NULL) lua_pushlstring(L, eid, elen);
  else push_plain(L, &e->ebox);
  lua_setfield(L, -2, "id");
  push_plain(L, &e->pbox);
  lua_setfield(L, -2, "payload");
  if (e->has_reason) {
    push_plain(L, &e->rbox);
    lua_setfield(L, -2, "last_error");
  }
  lua_pushinteger(L, (lua_Integer)e->attempts);
  lua_setfield(L, -2, "attempts");
  if (brief) return; /* inbox_dead: id, payload, attempts, last_error */
  lua_pushstring(L, e->state);
  lua_setfield(L, -2, "state");
  lua_pushnumber(L, e->next_at);
  lua_setfield(L, -2, "next_attempt_at");
  lua_pushnumber(L, e->created_at);
  lua_setfield(L, -2, "created_at");
  lua_pushnumber(L, e->updated_at);
  lua_setfield(L, -2, "updated_at");
}

/* s:inbox_get(event_id) -> {id, payload, state, attempts, last_error,
 *   next_attempt_at, created_at, updated_at} | nil (unknown) | nil, err */
static int store_inbox_get(lua_State *L) {
  store_handle *s = check_open(L, 1);
  size_t elen;
  const char *eid = check_id(L, 2, &elen, "event id");
  READY(L, s);
  rows_t *r = rows_new(L, 1, 0);
  unsigned char idx[IDX_LEN];
  if (event_index(L, s, eid, elen, idx) != 0) return push_err(L, "db", "oflua.store: HMAC failed");
  int64_t mkid = 0;
  int rc = s->be->inbox_find(s->c, s->ns, idx, &mkid, &r->ev[0]);
  if (rc < 0) return push_be(L, s, rc);
  if (mkid != s->kid) {
    store_event_clear(&r->ev[0]);
    return push_stale(L, s, mkid);
  }
  if (rc == 0) {
    lua_pushnil(L);
    return 1;
  }
  r->n = 1;
  store_event *e = &r->ev[0];
  if (e->kid != s->kid) return push_other_kid(L, s, "oflua_inbox", e->id, e->kid);
  if (open_event(s, e, eid, elen) != 0) return push_tampered(L, "oflua_inbox", e->id);
  push_event(L, e, eid, elen, 0);
  rows_clear(r);
  return 1;
}

/* Lists up to limit events in a state (NULL: any) with id > after into a
 * new table; pushes it and the last id seen (the cursor for the next page). */
static int list_events(lua_State *L, store_handle *s, const char *state, lua_Integer limit,
                       int64_t after, int brief) {
  rows_t *r = rows_new(L, SCAN_BATCH, 0);
  lua_newtable(L);
  int result = lua_gettop(L), n = 0;
  while (n < limit) {
    int want = limit - n < SCAN_BATCH ? (int)(limit - n) : SCAN_BATCH;
    rows_clear(r);
    int rc = s->be->inbox_list(s->c, s->ns, state, after, want, r->ev, &r->n);
    if (rc < 0) return push_be(L, s, rc);
    for (int i = 0; i < r->n; i++) {
      store_event *e = &r->ev[i];
      after = e->id;
      if (e->kid != s->kid) return push_other_kid(L, s, "oflua_inbox", e->id, e->kid);
      if (open_event(s, e, NULL, 0) != 0) return push_tampered(L, "oflua_inbox", e->id);
      push_event(L, e, NULL, 0, brief);
      lua_rawseti(L, result, ++n);
    }
    if (r->n < want) break;
  }
  rows_clear(r);
  lua_pushinteger(L, (lua_Integer)after);
  return 2;
}

/* s:inbox_dead([limit=1000]) -> {{id, payload, attempts, last_error, ...}, ...} | nil, err */
static int store_inbox_dead(lua_State *L) {
  store_handle *s = check_open(L, 1);
  lua_Integer limit = luaL_optinteger(L, 2, 1000);
  luaL_argcheck(L, limit >= 1, 2, "limit must be at least 1");
  READY(L, s);
  int r = list_events(L, s, "dead", limit, 0, 1);
  if (r == 2) lua_pop(L, 1);
  return r == 2 ? 1 : r;
}

/* s:inbox_list{state = nil | "pending" | "claimed" | "done" | "dead",
 * limit = 100, after = 0} -> events, cursor (pass as `after` for the next
 * page) | nil, err */
static int store_inbox_list(lua_State *L) {
  store_handle *s = check_open(L, 1);
  const char *state = NULL;
  lua_Integer limit = 100, after = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "state");
    state = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 2, "limit");
    limit = luaL_optinteger(L, -1, 100);
    lua_getfield(L, 2, "after");
    after = luaL_optinteger(L, -1, 0);
    lua_pop(L, 2); /* state stays on the stack */
  }
  luaL_argcheck(L, limit >= 1 && limit <= 100000, 2, "limit must be within [1, 100000]");
  luaL_argcheck(L, state == NULL || strcmp(state, "pending") == 0 ||
                       strcmp(state, "claimed") == 0 || strcmp(state, "done") == 0 ||
                       strcmp(state, "dead") == 0,
                2, "state must be pending, claimed, done or dead");
  READY(L, s);
  return list_events(L, s, state, limit, (int64_t)after, 0);
}

/* s:inbox_stats() -> {pending, claimed, done, dead, total} | nil, err */
static int store_inbox_stats(lua_State *L) {
  store_handle *s = check_open(L, 1);
  READY(L, s);
  int64_t counts[4];
  int rc = s->be->inbox_stats(s->c, s->ns, counts);
  if (rc < 0) return push_be(L, s, rc);
  static const char *const states[] = {"pending", "claimed", "done", "dead"};
  lua_createtable(L, 0, 5);
  lua_Integer total = 0;
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, (lua_Integer)counts[i]);
    lua_setfield(L, -2, states[i]);
    total += (lua_Integer)counts[i];
  }
  lua_pushinteger(L, total);
  lua_setfield(L, -2, "total");
  return 1;
}

/* s:inbox_prune(age_s[, now]) -> number of done events older than age_s
 * deleted (their ids are forgotten: a redelivery after that is new again). */
static int store_inbox_prune(lua_State *L) {
  store_handle *s = check_open(L, 1);
  lua_Number age = luaL_checknumber(L, 2);
  luaL_argcheck(L, isfinite(age) && age >= 0, 2, "age_s must be >= 0");
  double now = opt_now(L, 3);
  READY(L, s);
  int64_t n = 0;
  int rc = s->be->inbox_prune(s->c, s->ns, now - (double)age, &n);
  if (rc < 0) return push_be(L, s, rc);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* ---- module functions ------------------------------------------------------ */

/* store.keygen() -> a new master key: base64 of 32 random bytes */
static int store_keygen(lua_State *L) {
  unsigned char key[KEY_LEN];
  char text[48];
  if (ofc_random(key, sizeof key) != 0) return luaL_error(L, "oflua.store: no random bytes");
  store_b64_encode(key, sizeof key, text);
  ofc_cleanse(key, sizeof key);
  lua_pushstring(L, text); /* may raise: the text is wiped only on success */
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
  char err[300];
  if (store_decode_key(text, n, key) != 0)
    return push_err(L, "invalid", "oflua.store: " KEY_FORMAT_MSG);
  int rc = store_write_key_file(path, key, err, sizeof err);
  ofc_cleanse(key, sizeof key);
  if (rc != 0) return push_err(L, "invalid", "oflua.store: %s", err);
  lua_pushboolean(L, 1);
  return 1;
}

/* store.is_url(text) -> whether text names a PostgreSQL store */
static int store_is_url(lua_State *L) {
  lua_pushboolean(L, is_url(luaL_optstring(L, 1, NULL)));
  return 1;
}

/* Every function that waits on the database (a lock, the disk, the network)
 * first moves a handler running inline on an oflua.server I/O thread to its
 * VM's worker (internal.h: offload; elsewhere the call runs at once). The
 * registered function is a closure whose upvalue indexes this table. */
static const luaL_Reg blocking[] = {{"get", store_get},
                                    {"put", store_put},
                                    {"delete", store_delete},
                                    {"list", store_list},
                                    {"transaction", store_transaction},
                                    {"rekey", store_rekey},
                                    {"info", store_info},
                                    {"inbox_add", store_inbox_add},
                                    {"inbox_add_many", store_inbox_add_many},
                                    {"inbox_claim", store_inbox_claim},
                                    {"inbox_done", store_inbox_done},
                                    {"inbox_fail", store_inbox_fail},
                                    {"inbox_retry", store_inbox_retry},
                                    {"inbox_get", store_inbox_get},
                                    {"inbox_list", store_inbox_list},
                                    {"inbox_dead", store_inbox_dead},
                                    {"inbox_stats", store_inbox_stats},
                                    {"inbox_prune", store_inbox_prune},
                                    {"inbox_release", store_inbox_release},
                                    {"inbox_claim_grouped", store_inbox_claim_grouped},
                                    {"open", store_open},
                                    {"open_env", store_open_env},
                                    {NULL, NULL}};
#define FIRST_MODULE_FN 20 /* blocking[20..]: module functions, not methods */

static int blocking_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return blocking[ctx].func(L);
}

static int blocking_call(lua_State *L) {
  lua_KContext i = (lua_KContext)lua_tointeger(L, lua_upvalueindex(1));
  const oflua_wait_api *api = oflua__wait_api(L);
  if (api != NULL) return api->offload(L, blocking_k, i);
  return blocking[i].func(L);
}

/* Sets the blocking functions [from, to) in the table on top. */
static void set_blocking(lua_State *L, int from, int to) {
  for (int i = from; i < to; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, blocking_call, 1);
    lua_setfield(L, -2, blocking[i].name);
  }
}

int luaopen_oflua_store(lua_State *L) {
  store_fork_watch();
  static const luaL_Reg methods[] = {
      {"group_stats", store_group_stats_lua},
      {"close", store_close},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", store_gc},
                                  {"__close", store_close},
                                  {"__tostring", store_tostring},
                                  {"__index", NULL},
                                  {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"keygen", store_keygen},
                                   {"save_key", store_save_key},
                                   {"is_url", store_is_url},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, STORE_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    set_blocking(L, 0, FIRST_MODULE_FN);
    static const char *const grouped[] = {"inbox_add_grouped", "inbox_done_grouped"};
    for (int i = 0; i < 2; i++) {
      lua_pushinteger(L, i);
      lua_pushcclosure(L, grouped_entry, 1);
      lua_setfield(L, -2, grouped[i]);
    }
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, ROWS_MT)) {
    lua_pushcfunction(L, rows_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, REKEY_MT)) {
    lua_pushcfunction(L, rekey_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  set_blocking(L, FIRST_MODULE_FN, (int)(sizeof blocking / sizeof blocking[0]) - 1);
  char version[64];
  store_sqlite_backend.version(NULL, version, sizeof version);
  lua_pushstring(L, version);
  lua_setfield(L, -2, "sqlite_version");
  lua_pushinteger(L, STORE_FORMAT);
  lua_setfield(L, -2, "format");
  lua_pushinteger(L, STORE_SCHEMA_VERSION);
  lua_setfield(L, -2, "schema_version");
  return 1;
}
