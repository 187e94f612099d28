/*
 * store_backend.h: the internal interface between oflua.store's Lua-facing
 * code (store_api.c, which seals and opens every field) and a database
 * backend (store_sqlite.c, store_pg.c). A backend stores and finds opaque
 * sealed bytes: it never sees a key, a plaintext or a lua_State, so it cannot
 * raise a Lua error with a transaction open, and a third backend is one new
 * file that fills a store_backend table.
 *
 * Conventions. Every operation takes the connection first and returns a
 * non-negative result, or STORE_EDB (a database error) / STORE_EUNAVAIL (the
 * database cannot be reached: connection refused or lost) with a message in
 * conn->err that holds no secret (no password, no key, no row content).
 * Byte results (store_bytes) are malloc'd copies that the caller frees with
 * store_bytes_free / store_event_clear / store_kv_row_clear. Namespaces are
 * NUL-free strings; blind indexes are STORE_IDX_LEN bytes.
 *
 * Transactions nest: tx_begin opens a transaction (SQLite: BEGIN IMMEDIATE;
 * PostgreSQL: BEGIN) or, inside one, a savepoint; tx_commit / tx_rollback
 * close the innermost level. The Lua API opens one around every
 * read-modify-write operation and around s:transaction(fn).
 */
#ifndef OFLUA_STORE_BACKEND_H
#define OFLUA_STORE_BACKEND_H

#include "util.h"

#include <stddef.h>
#include <stdint.h>

#define STORE_TX_EXCLUSIVE 1 /* tx_begin flags: see there */
#define STORE_TX_RELAXED 2

/* strerror for messages, thread-safe (opens run on server worker threads):
 * the text lives until the end of the enclosing block. */
#define STORE_STRERROR(e) oflua__strerror((e), (char[128]){0}, 128)

#define STORE_IDX_LEN 32
#define STORE_SALT_LEN 16
#define STORE_MAX_NS 255
/* Schema version of the tables (oflua_schema.version). 1: the first layout
 * (no version row); 2: adds the version row and the (ns, id) index that
 * makes list() O(rows). A store with a newer version is refused. */
#define STORE_SCHEMA_VERSION 2

/* A claim token (inbox_claim): the row is still claimed by that claim when
 * its state is 'claimed' with these attempts and lease end (every new claim
 * of a row changes one of them: a re-claim after expiry counts an attempt,
 * and sets a new lease end). inbox_mark with a fence updates only such a
 * row. */
typedef struct {
  int64_t attempts;
  double lease_end;
} store_fence;

enum { STORE_EDB = -1, STORE_EUNAVAIL = -2 };
/* (the values appear in the backends' SQL: keep them) */
enum { STORE_MARK_KEEP = 0, STORE_MARK_RETRY = 1, STORE_MARK_RELEASE = 2 };

typedef struct {
  unsigned char *p;
  size_t n;
} store_bytes;

typedef struct {
  const void *p;
  size_t n;
} store_cbytes;

/* Every backend connection starts with this header. */
typedef struct store_conn {
  const struct store_backend *be;
  char err[256];
} store_conn;

/* The meta row: sealing format, current key id, HKDF salt, sealed key check. */
typedef struct {
  int64_t format, kid, schema_version;
  unsigned char salt[STORE_SALT_LEN];
  store_bytes check;
} store_meta;

/* One inbox row as read back. ns is filled only by inbox_scan (rekey). */
typedef struct {
  int64_t id, kid, attempts;
  double next_at, created_at, updated_at;
  char state[12];
  int has_reason;
  store_bytes ebox, pbox, rbox;
  char ns[STORE_MAX_NS + 1];
} store_event;

/* One key/value row. ns is filled only by kv_scan with ns == NULL (rekey). */
typedef struct {
  int64_t id, kid;
  store_bytes kbox, vbox;
  char ns[STORE_MAX_NS + 1];
} store_kv_row;

/* A done mark for inbox_done_many: the event's index, fenced by a claim or
 * not. */
typedef struct {
  unsigned char idx[STORE_IDX_LEN];
  int fenced;
  store_fence fence;
} store_mark;

/* A new inbox row for inbox_add. */
typedef struct {
  unsigned char idx[STORE_IDX_LEN];
  store_cbytes ebox, pbox;
  const char *state; /* "pending" or "claimed" (inserted leased to the caller) */
  double next_at, now;
} store_new_event;

/* Options a backend's open reads (url for PostgreSQL, path for SQLite). */
typedef struct {
  const char *path;
  const char *url;
  const char *sync; /* SQLite: "NORMAL" | "FULL" */
  long busy_ms;     /* SQLite: wait for the write lock */
  long connect_timeout_s; /* PostgreSQL */
  int create;
  long statement_ms; /* PostgreSQL: statement_timeout (0: none) */
  int bg_checkpoint; /* SQLite: checkpoint the WAL in a thread of the
                        connection's own, not inside its commits (the group
                        committer's connection) */
} store_open_opts;

typedef struct store_backend {
  const char *name; /* "sqlite" | "postgresql" */
  /* One write lock for the whole database (SQLite), rather than row locks
   * (PostgreSQL): claims look before they write, and the group committer's
   * connection serves the tick's claims too (store_api.c). */
  int single_writer;

  /* Opens a connection (PostgreSQL: connects lazily, on first use); NULL
   * with a message in err on failure. */
  store_conn *(*open)(const store_open_opts *o, char *err, size_t errlen);
  void (*close)(store_conn *c);
  /* Optional (NULL): called by the group committer between two batches,
   * with no transaction open (SQLite: the rest of a background checkpoint). */
  void (*after_batch)(store_conn *c);
  /* Optional (NULL: 0): background checkpoint passes done for this
   * connection (SQLite's checkpointer thread, bg_checkpoint). */
  long (*bg_checkpoints)(store_conn *c);
  /* Library and server version text for info(), into buf. */
  void (*version)(store_conn *c, char *buf, size_t len);

  /* Creates the schema (create != 0) and the meta row from init if missing,
   * migrates an older schema, then reads the meta row into out. Returns 1,
   * 0 when there is no store and create == 0, or an error. A schema newer
   * than STORE_SCHEMA_VERSION is an error (STORE_EDB, say so in err). */
  int (*meta_load)(store_conn *c, int create, const store_meta *init, store_meta *out);
  /* The current key id (for the stale-handle check). */
  int (*meta_kid)(store_conn *c, int64_t *kid);
  /* Sets the key id and key check (rekey, inside its transaction). */
  int (*meta_set)(store_conn *c, int64_t kid, store_cbytes check);

  /* flags, for the outermost level:
   * STORE_TX_EXCLUSIVE (s:transaction): it also excludes every other
   * exclusive transaction on the database, as SQLite's BEGIN IMMEDIATE
   * does, so a read-modify-write in Lua is never a lost update
   * (PostgreSQL: an advisory lock; READ COMMITTED alone would allow it).
   * STORE_TX_RELAXED: its commit need not wait for the disk, for writes a
   * crash may lose as a crash of the process could (done marks: their
   * events run again once their lease ends, an expiry counting as an
   * attempt). PostgreSQL: synchronous_commit off for it (what it commits
   * is still never seen before what was committed before it); SQLite:
   * nothing (with synchronous=NORMAL, the default, no commit waits for the
   * disk anyway; with FULL these wait too). */
  int (*tx_begin)(store_conn *c, int flags);
  int (*tx_commit)(store_conn *c);
  int (*tx_rollback)(store_conn *c);
  int (*tx_depth)(store_conn *c);

  /* 1 found (row filled), 0 absent. */
  int (*kv_get)(store_conn *c, const char *ns, const unsigned char *idx, store_kv_row *row);
  /* Insert or replace, only if kid is the current key id: 1 written, 0 not
   * (stale handle). */
  int (*kv_put)(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                store_cbytes kbox, store_cbytes vbox);
  /* 1 deleted, 0 absent or stale. */
  int (*kv_delete)(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid);
  /* Up to max rows with id > after in id order (one namespace, or every
   * namespace with ns == NULL); *n rows filled. An index on (ns, id) keeps
   * this O(rows returned). */
  int (*kv_scan)(store_conn *c, const char *ns, int64_t after, int max, store_kv_row *rows,
                 int *n);
  int (*kv_reseal)(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                   store_cbytes kbox, store_cbytes vbox);

  /* Inserts n rows in one transaction (all or nothing on an error), each
   * only if its index is new in ns and kid is current: inserted[i] = 1 new,
   * 0 duplicate (or stale handle: the caller checks the key id). */
  int (*inbox_add)(store_conn *c, const char *ns, int64_t kid, const store_new_event *ev, int n,
                   int *inserted);
  /* Inside a transaction: up to max rows that are pending or claimed with
   * next_at <= now, oldest due first, locked against other claimers
   * (PostgreSQL: FOR UPDATE SKIP LOCKED). Fills id, kid, ebox, pbox,
   * attempts, state. */
  int (*inbox_due)(store_conn *c, const char *ns, double now, int max, store_event *rows,
                   int *n);
  /* The row of an event id (locked when inside a transaction) and the
   * current key id: 1 found, 0 absent (*meta_kid set in both cases). */
  int (*inbox_find)(store_conn *c, const char *ns, const unsigned char *idx, int64_t *meta_kid,
                    store_event *row);
  /* The fast path of done/retry/release, one statement: sets the state of
   * the event with this index if the row and the store are both under key
   * id kid; reset: STORE_MARK_KEEP (attempts and due time kept),
   * STORE_MARK_RETRY (attempts 0, due now) or STORE_MARK_RELEASE (due now,
   * attempts kept). 1 updated, 0 not (absent, or another key id: the
   * caller looks closer through inbox_find). */
  int (*inbox_mark)(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                    const char *state, int reset, double now, const store_fence *fence);
  /* Optional (NULL: inbox_mark for each): inbox_mark(..., "done",
   * STORE_MARK_KEEP, now, fence) for n events in one statement (a backend
   * where each statement is a round trip); *applied = how many changed. */
  int (*inbox_done_many)(store_conn *c, const char *ns, int64_t kid, const store_mark *m, int n,
                         double now, int64_t *applied);
  /* Sets state, attempts, next_at, updated_at and (if rbox.p) the reason. */
  int (*inbox_set)(store_conn *c, int64_t id, const char *state, int64_t attempts,
                   double next_at, store_cbytes rbox, double now);
  /* Up to max rows in a state (NULL: any) with id > after, id order. */
  int (*inbox_list)(store_conn *c, const char *ns, const char *state, int64_t after, int max,
                    store_event *rows, int *n);
  /* counts[0..3]: pending, claimed, done, dead. */
  int (*inbox_stats)(store_conn *c, const char *ns, int64_t counts[4]);
  /* Deletes done rows with updated_at < before; *n deleted. */
  int (*inbox_prune)(store_conn *c, const char *ns, double before, int64_t *n);
  /* Every namespace, id > after (rekey). */
  int (*inbox_scan)(store_conn *c, int64_t after, int max, store_event *rows, int *n);
  int (*inbox_reseal)(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                      store_cbytes ebox, store_cbytes pbox, store_cbytes rbox);

  /* Optional hooks around rekey (SQLite: secure_delete on, then a WAL
   * checkpoint so old ciphertexts do not linger). after: ok != 0 if it
   * committed. */
  void (*rekey_before)(store_conn *c);
  void (*rekey_after)(store_conn *c, int ok);
} store_backend;

extern const store_backend store_sqlite_backend;
extern const store_backend store_pg_backend;

/* A PostgreSQL URL's label for messages, tostring and info(): parsed the way
 * libpq parses it (PQconninfoParse), rebuilt from user, host, port and dbname
 * only, so the password (in userinfo, percent-encoded or in the query) never
 * shows. Always writes a NUL-terminated text into buf. */
void store_pg_label(const char *url, char *buf, size_t len);

/* Helpers shared by backends and the API (store_backend.c is not needed:
 * these are static inline). */
#include <stdlib.h>
#include <string.h>

static inline int store_bytes_set(store_bytes *b, const void *p, size_t n) {
  b->p = malloc(n > 0 ? n : 1);
  if (b->p == NULL) {
    b->n = 0;
    return -1;
  }
  if (n > 0) memcpy(b->p, p, n);
  b->n = n;
  return 0;
}

void store_bytes_free(store_bytes *b);
void store_event_clear(store_event *e);
void store_kv_row_clear(store_kv_row *r);

#endif
