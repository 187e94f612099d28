/*
 * store_pg.c: the PostgreSQL backend of oflua.store (store_backend.h),
 * through libpq. Many hosts share one database; everything in it is sealed
 * by store_api.c before it gets here, so the server, its dumps and its
 * replicas never see a key, a value, an event id or a payload in clear.
 *
 * Connection. One libpq connection per handle (so per worker VM and for the
 * tick), opened on first use with a bounded connect timeout. The URL (and so
 * its password) is kept only to reconnect; every message from libpq passes
 * through scrub() so the password cannot reach an error text. PGPASSFILE,
 * PGSSLMODE and the other libpq environment variables apply as usual.
 *
 * A lost connection (server restarted) is re-established on the next
 * statement; a statement that failed because the connection was lost is
 * retried once when no transaction is open (every single statement here is
 * safe to repeat: upserts, ON CONFLICT DO NOTHING, updates by id). Inside a
 * transaction the loss is reported (STORE_EUNAVAIL) and every statement
 * fails until the caller has rolled the transaction back.
 *
 * Concurrency. Inserts dedupe in one statement (INSERT ... ON CONFLICT DO
 * NOTHING); claimers lock due rows with FOR UPDATE SKIP LOCKED, so any number
 * of receivers claim disjoint events. Writes check the key id with a FOR KEY
 * SHARE lock on the meta row, which rekey locks FOR UPDATE: a write either
 * lands before the rekey (and is re-sealed by it) or sees the new key id and
 * writes nothing.
 */
#include "store_backend.h"

#include <endian.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS oflua_meta ("
    "  one integer PRIMARY KEY CHECK (one = 1),"
    "  format bigint NOT NULL,"
    "  kid bigint NOT NULL,"
    "  salt bytea NOT NULL,"
    "  check_box bytea NOT NULL);"
    "CREATE TABLE IF NOT EXISTS oflua_schema ("
    "  one integer PRIMARY KEY CHECK (one = 1),"
    "  version bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS oflua_kv ("
    "  id bigserial PRIMARY KEY,"
    "  ns text NOT NULL,"
    "  kidx bytea NOT NULL,"
    "  kid bigint NOT NULL,"
    "  kbox bytea NOT NULL,"
    "  vbox bytea NOT NULL,"
    "  UNIQUE (ns, kidx));"
    "CREATE INDEX IF NOT EXISTS oflua_kv_ns_id ON oflua_kv (ns, id);"
    "CREATE TABLE IF NOT EXISTS oflua_inbox ("
    "  id bigserial PRIMARY KEY,"
    "  ns text NOT NULL,"
    "  eidx bytea NOT NULL,"
    "  kid bigint NOT NULL,"
    "  ebox bytea NOT NULL,"
    "  pbox bytea NOT NULL,"
    "  rbox bytea,"
    "  state text NOT NULL,"
    "  attempts bigint NOT NULL,"
    "  next_at double precision NOT NULL,"
    "  created_at double precision NOT NULL,"
    "  updated_at double precision NOT NULL,"
    "  UNIQUE (ns, eidx));"
    "CREATE INDEX IF NOT EXISTS oflua_inbox_due ON oflua_inbox (ns, state, next_at);"
    "CREATE INDEX IF NOT EXISTS oflua_inbox_ns_id ON oflua_inbox (ns, state, id);";

/* Serialises schema creation between hosts opening a new database at once
 * (CREATE TABLE IF NOT EXISTS alone races on the catalog). */
#define SCHEMA_LOCK "SELECT pg_advisory_xact_lock(7020349591834206561)"

enum {
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
  ST_IN_FIND_LOCK,
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

#define KID_GUARD "(SELECT kid FROM oflua_meta WHERE one = 1 FOR KEY SHARE)"
#define EVENT_COLS "id, kid, ebox, pbox, attempts, state, rbox, next_at, created_at, updated_at, ns"

static const char *const SQL[ST_COUNT] = {
    [ST_META_KID] = "SELECT kid FROM oflua_meta WHERE one = 1 FOR KEY SHARE",
    [ST_META_SET] = "UPDATE oflua_meta SET kid = $1::bigint, check_box = $2::bytea WHERE one = 1",
    [ST_KV_GET] = "SELECT id, kid, vbox FROM oflua_kv WHERE ns = $1::text AND kidx = $2::bytea",
    [ST_KV_PUT] = "INSERT INTO oflua_kv (ns, kidx, kid, kbox, vbox)"
                  " SELECT $1::text, $2::bytea, $3::bigint, $4::bytea, $5::bytea"
                  " WHERE " KID_GUARD " = $3::bigint"
                  " ON CONFLICT (ns, kidx) DO UPDATE SET"
                  " kid = excluded.kid, kbox = excluded.kbox, vbox = excluded.vbox",
    [ST_KV_DEL] = "DELETE FROM oflua_kv WHERE ns = $1::text AND kidx = $2::bytea"
                  " AND " KID_GUARD " = $3::bigint",
    [ST_KV_SCAN] = "SELECT id, kid, kbox, vbox, ns FROM oflua_kv"
                   " WHERE ns = $1::text AND id > $2::bigint ORDER BY id LIMIT $3::int",
    [ST_KV_SCAN_ALL] = "SELECT id, kid, kbox, vbox, ns FROM oflua_kv WHERE id > $1::bigint"
                       " ORDER BY id LIMIT $2::int FOR UPDATE",
    [ST_KV_RESEAL] = "UPDATE oflua_kv SET kidx = $2::bytea, kid = $3::bigint, kbox = $4::bytea,"
                     " vbox = $5::bytea WHERE id = $1::bigint",
    [ST_IN_ADD] = "INSERT INTO oflua_inbox (ns, eidx, kid, ebox, pbox, state, attempts, next_at,"
                  " created_at, updated_at)"
                  " SELECT $1::text, $2::bytea, $3::bigint, $4::bytea, $5::bytea, $7::text, 0,"
                  " $8::float8, $6::float8, $6::float8 WHERE " KID_GUARD " = $3::bigint"
                  " ON CONFLICT (ns, eidx) DO NOTHING",
    [ST_IN_DUE] = "SELECT " EVENT_COLS " FROM oflua_inbox"
                  " WHERE ns = $1::text AND state IN ('pending', 'claimed')"
                  " AND next_at <= $2::float8 ORDER BY next_at, id LIMIT $3::int"
                  " FOR UPDATE SKIP LOCKED",
    [ST_IN_FIND] = "SELECT " EVENT_COLS " FROM oflua_inbox WHERE ns = $1::text AND eidx = $2::bytea",
    [ST_IN_FIND_LOCK] = "SELECT " EVENT_COLS " FROM oflua_inbox"
                        " WHERE ns = $1::text AND eidx = $2::bytea FOR UPDATE",
    [ST_IN_SET] = "UPDATE oflua_inbox SET state = $2::text, attempts = $3::bigint,"
                  " next_at = $4::float8, rbox = coalesce($5::bytea, rbox),"
                  " updated_at = $6::float8 WHERE id = $1::bigint",
    [ST_IN_MARK] = "UPDATE oflua_inbox SET state = $4::text,"
                   " attempts = CASE WHEN $5::int = 1 THEN 0 ELSE attempts END,"
                   " next_at = CASE WHEN $5::int <> 0 THEN $6::float8 ELSE next_at END,"
                   " updated_at = $6::float8 WHERE ns = $1::text AND eidx = $2::bytea"
                   " AND kid = $3::bigint AND " KID_GUARD " = $3::bigint"
                   " AND ($7::int = 0 OR (state = 'claimed' AND attempts = $8::bigint"
                   " AND next_at = $9::float8))"
                   " AND ($5::int <> 2 OR state = 'claimed')", /* a release: claimed only */
    [ST_IN_LIST] = "SELECT " EVENT_COLS " FROM oflua_inbox WHERE ns = $1::text"
                   " AND state = $2::text AND id > $3::bigint ORDER BY id LIMIT $4::int",
    [ST_IN_LIST_ANY] = "SELECT " EVENT_COLS " FROM oflua_inbox WHERE ns = $1::text"
                       " AND id > $2::bigint ORDER BY id LIMIT $3::int",
    [ST_IN_STATS] = "SELECT state, count(*) FROM oflua_inbox WHERE ns = $1::text GROUP BY state",
    [ST_IN_PRUNE] = "DELETE FROM oflua_inbox WHERE ns = $1::text AND state = 'done'"
                    " AND updated_at < $2::float8",
    [ST_IN_SCAN] = "SELECT " EVENT_COLS " FROM oflua_inbox WHERE id > $1::bigint"
                   " ORDER BY id LIMIT $2::int FOR UPDATE",
    [ST_IN_RESEAL] = "UPDATE oflua_inbox SET eidx = $2::bytea, kid = $3::bigint,"
                     " ebox = $4::bytea, pbox = $5::bytea, rbox = $6::bytea WHERE id = $1::bigint",
};

typedef struct {
  store_conn base;
  PGconn *pg;
  char *url;      /* secret (may hold a password): wiped on close */
  char *password; /* the URL's password, to scrub from messages; NULL if none */
  long timeout_s;
  long lock_ms; /* lock_timeout: how long a statement waits for a lock */
  long statement_ms; /* statement_timeout (0: none) */
  int depth;  /* transaction nesting */
  int broken; /* the connection was lost inside a transaction */
  unsigned prepared; /* bit i: statement i is prepared on this connection */
} pg_conn;

#define PG(c) ((pg_conn *)(c))

/* Copies a message into err with the password (if any) replaced. */
static void scrub(pg_conn *q, const char *msg) {
  char *e = q->base.err;
  size_t cap = sizeof q->base.err, o = 0;
  size_t pl = q->password ? strlen(q->password) : 0;
  for (const char *p = msg; *p != '\0' && o + 1 < cap;) {
    if (pl > 0 && strncmp(p, q->password, pl) == 0) {
      const char *r = "***";
      for (; *r != '\0' && o + 1 < cap; r++) e[o++] = *r;
      p += pl;
    } else {
      e[o++] = (*p == '\n' || *p == '\t') ? ' ' : *p;
      p++;
    }
  }
  while (o > 0 && e[o - 1] == ' ') o--;
  e[o] = '\0';
}

static void wipe_free(char *p) {
  if (p == NULL) return;
  volatile char *v = p;
  while (*v != '\0') *v++ = '\0';
  free(p);
}

static void quiet_notice(void *arg, const char *message) {
  (void)arg;
  (void)message; /* "relation ... already exists, skipping" and friends */
}

static void pg_drop(pg_conn *q) {
  if (q->pg != NULL) PQfinish(q->pg);
  q->pg = NULL;
  q->prepared = 0;
}

/* Connects if there is no live connection: 0 or STORE_EUNAVAIL. */
static int ensure(pg_conn *q) {
  if (q->broken) {
    snprintf(q->base.err, sizeof q->base.err,
             "the connection to PostgreSQL was lost inside a transaction");
    return STORE_EUNAVAIL;
  }
  if (q->pg != NULL && PQstatus(q->pg) == CONNECTION_OK) return 0;
  pg_drop(q);
  char timeout[24];
  snprintf(timeout, sizeof timeout, "%ld", q->timeout_s);
  /* Ours first: what the URL sets wins. Keepalives notice a server that
   * vanished (partition, dead host) while a query waits in ~11 s (5 s idle,
   * then 3 probes 2 s apart) instead of hours; tcp_user_timeout bounds
   * data the server never acknowledges to 10 s. */
  const char *const keys[] = {"connect_timeout", "application_name", "keepalives_idle",
                              "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                              "dbname", NULL};
  const char *const vals[] = {timeout, "oflua", "5", "2", "3", "10000", q->url, NULL};
  q->pg = PQconnectdbParams(keys, vals, 1);
  if (q->pg == NULL) {
    snprintf(q->base.err, sizeof q->base.err, "out of memory");
    return STORE_EUNAVAIL;
  }
  if (PQstatus(q->pg) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "cannot connect to PostgreSQL: %s", PQerrorMessage(q->pg));
    scrub(q, msg);
    pg_drop(q);
    /* Down (no answer, or starting up / shutting down) is an outage; a
     * server that answers but refuses us (password, database name) is a
     * configuration error that waiting will not fix. A connect that timed
     * out is an outage without asking again; otherwise one ping, bounded
     * to 2 s (libpq's minimum), tells them apart: it answers at once when
     * the server is up, fails at once when the port is closed. */
    if (strstr(msg, "timeout expired") != NULL) return STORE_EUNAVAIL;
    const char *pvals[] = {"2", "oflua", "5", "2", "3", "10000", q->url, NULL};
    return PQpingParams(keys, pvals, 1) == PQPING_OK ? STORE_EDB : STORE_EUNAVAIL;
  }
  PQsetNoticeProcessor(q->pg, quiet_notice, NULL);
  /* A lock wait is bounded like SQLite's busy timeout (busy_timeout_ms):
   * two transactions waiting on each other from one process fail instead of
   * hanging. */
  char set[96];
  snprintf(set, sizeof set, "SET lock_timeout = %ld; SET statement_timeout = %ld",
           q->lock_ms > 0 ? q->lock_ms : 1, q->statement_ms);
  PGresult *r = PQexec(q->pg, set);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) scrub(q, PQresultErrorMessage(r));
  PQclear(r);
  if (!ok) {
    pg_drop(q);
    return STORE_EUNAVAIL;
  }
  return 0;
}

/* Whether a failed result means the server went away. */
static int lost(pg_conn *q, const PGresult *r) {
  if (q->pg == NULL || PQstatus(q->pg) == CONNECTION_BAD) return 1;
  const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  /* 08: connection exception; 57P01-03: shutdown / cannot connect now. */
  return code != NULL && (strncmp(code, "08", 2) == 0 || strncmp(code, "57P0", 4) == 0);
}

/* Runs one statement: a prepared one (id >= 0) or plain SQL (id < 0, sql).
 * Returns the result, or NULL with *rc set and the message in err. */
static PGresult *run(pg_conn *q, int id, const char *sql, int n, const char *const *vals,
                     const int *lens, const int *fmts, int *rc) {
  for (int attempt = 0;; attempt++) {
    *rc = ensure(q);
    if (*rc != 0) return NULL;
    PGresult *r = NULL;
    if (id >= 0 && !(q->prepared & (1u << id))) {
      char name[24];
      snprintf(name, sizeof name, "oflua_%d", id);
      r = PQprepare(q->pg, name, SQL[id], n, NULL);
      if (PQresultStatus(r) == PGRES_COMMAND_OK) {
        q->prepared |= 1u << id;
        PQclear(r);
        r = NULL;
      }
    }
    if (r == NULL) {
      if (id >= 0) {
        char name[24];
        snprintf(name, sizeof name, "oflua_%d", id);
        r = PQexecPrepared(q->pg, name, n, vals, lens, fmts, 1);
      } else if (fmts != NULL) { /* binary results */
        r = PQexecParams(q->pg, sql, n, NULL, vals, lens, fmts, 1);
      } else {
        r = PQexec(q->pg, sql);
      }
    }
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) return r;
    if (lost(q, r)) {
      char msg[512];
      snprintf(msg, sizeof msg, "PostgreSQL connection lost: %s",
               r ? PQresultErrorMessage(r) : PQerrorMessage(q->pg));
      PQclear(r);
      pg_drop(q);
      if (q->depth > 0) {
        q->broken = 1;
        scrub(q, msg);
        *rc = STORE_EUNAVAIL;
        return NULL;
      }
      if (attempt == 0) continue;
      scrub(q, msg);
      *rc = STORE_EUNAVAIL;
      return NULL;
    }
    /* 57014: statement_timeout_ms ran out (an overloaded or stuck server):
     * an outage for the caller (503, retry later), not a bad request. */
    const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    int canceled = code != NULL && strcmp(code, "57014") == 0;
    scrub(q, r ? PQresultErrorMessage(r) : PQerrorMessage(q->pg));
    PQclear(r);
    *rc = canceled ? STORE_EUNAVAIL : STORE_EDB;
    return NULL;
  }
}

static int run_void(pg_conn *q, int id, const char *sql, int n, const char *const *vals,
                    const int *lens, const int *fmts, int64_t *changed) {
  int rc;
  PGresult *r = run(q, id, sql, n, vals, lens, fmts, &rc);
  if (r == NULL) return rc;
  if (changed != NULL) *changed = strtoll(PQcmdTuples(r), NULL, 10);
  PQclear(r);
  return 0;
}

/* ---- parameters and binary results ------------------------------------------ */

typedef struct {
  int n;
  const char *v[10];
  int len[10];
  int fmt[10];
  char num[10][32];
} params;

static void p_text(params *p, const char *s) {
  p->v[p->n] = s;
  p->len[p->n] = 0;
  p->fmt[p->n] = 0;
  p->n++;
}
static void p_int(params *p, int64_t x) {
  snprintf(p->num[p->n], sizeof p->num[0], "%lld", (long long)x);
  p_text(p, p->num[p->n]);
}
static void p_real(params *p, double x) {
  snprintf(p->num[p->n], sizeof p->num[0], "%.17g", x);
  p_text(p, p->num[p->n]);
}
static void p_bytes(params *p, const void *b, size_t n) {
  p->v[p->n] = b == NULL ? NULL : (n > 0 ? b : "");
  p->len[p->n] = (int)n;
  p->fmt[p->n] = 1;
  p->n++;
}

#define RUN(q, id, p, rc) run(q, id, NULL, (p).n, (p).v, (p).len, (p).fmt, rc)

static int64_t g_int(const PGresult *r, int row, int col) {
  const char *v = PQgetvalue(r, row, col);
  int n = PQgetlength(r, row, col);
  uint64_t x = 0;
  if (n == 8) {
    memcpy(&x, v, 8);
    return (int64_t)be64toh(x);
  }
  if (n == 4) {
    uint32_t y;
    memcpy(&y, v, 4);
    return (int32_t)be32toh(y);
  }
  return 0;
}

static double g_real(const PGresult *r, int row, int col) {
  uint64_t x = 0;
  double d = 0;
  if (PQgetlength(r, row, col) == 8) {
    memcpy(&x, PQgetvalue(r, row, col), 8);
    x = be64toh(x);
    memcpy(&d, &x, 8);
  }
  return d;
}

static int g_bytes(const PGresult *r, int row, int col, store_bytes *out) {
  return store_bytes_set(out, PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

static void g_str(const PGresult *r, int row, int col, char *out, size_t cap) {
  size_t n = (size_t)PQgetlength(r, row, col);
  if (n >= cap) n = cap - 1;
  memcpy(out, PQgetvalue(r, row, col), n);
  out[n] = '\0';
}

static int oom(pg_conn *q) {
  snprintf(q->base.err, sizeof q->base.err, "out of memory");
  return STORE_EDB;
}

/* ---- open and close -------------------------------------------------------- */

void store_pg_label(const char *url, char *buf, size_t len) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(url, &perr);
  PQfreemem(perr);
  if (opts == NULL) {
    snprintf(buf, len, "postgresql://(invalid URL)");
    return;
  }
  const char *user = NULL, *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL;
  for (PQconninfoOption *p = opts; p->keyword != NULL; p++) {
    const char *v = p->val != NULL && p->val[0] != '\0' ? p->val : NULL;
    if (strcmp(p->keyword, "user") == 0) user = v;
    else if (strcmp(p->keyword, "host") == 0) host = v;
    else if (strcmp(p->keyword, "hostaddr") == 0) hostaddr = v;
    else if (strcmp(p->keyword, "port") == 0) port = v;
    else if (strcmp(p->keyword, "dbname") == 0) db = v;
  }
  if (host == NULL) host = hostaddr;
  snprintf(buf, len, "postgresql://%s%s%s%s%s/%s", user ? user : "", user ? "@" : "",
           host ? host : "", port ? ":" : "", port ? port : "", db ? db : "");
  PQconninfoFree(opts);
}

static void pg_close(store_conn *c) {
  pg_conn *q = PG(c);
  if (q == NULL) return;
  pg_drop(q);
  wipe_free(q->url);
  wipe_free(q->password);
  free(q);
}

static store_conn *pg_open(const store_open_opts *o, char *err, size_t errlen) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(o->url, &perr);
  if (opts == NULL) {
    /* libpq's message names the bad part of the URL, which may be the
     * password: say only that it did not parse. */
    PQfreemem(perr);
    snprintf(err, errlen, "not a valid PostgreSQL connection URL");
    return NULL;
  }
  pg_conn *q = calloc(1, sizeof *q);
  if (q == NULL || (q->url = strdup(o->url)) == NULL) {
    PQconninfoFree(opts);
    free(q);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  q->base.be = &store_pg_backend;
  for (PQconninfoOption *p = opts; p->keyword != NULL; p++)
    if (strcmp(p->keyword, "password") == 0 && p->val != NULL && p->val[0] != '\0')
      q->password = strdup(p->val);
  PQconninfoFree(opts);
  q->timeout_s = o->connect_timeout_s > 0 ? o->connect_timeout_s : 5;
  q->lock_ms = o->busy_ms;
  q->statement_ms = o->statement_ms;
  return &q->base;
}

static void pg_version(store_conn *c, char *buf, size_t len) {
  pg_conn *q = PG(c);
  int lib = PQlibVersion();
  int srv = q->pg ? PQserverVersion(q->pg) : 0;
  snprintf(buf, len, "libpq %d.%d, server %d.%d", lib / 10000, lib % 10000, srv / 10000,
           srv % 10000);
}

/* ---- transactions ---------------------------------------------------------- */

#define TX_LOCK "SELECT pg_advisory_xact_lock(7020349591834206562)"

static int pg_tx_begin(store_conn *c, int flags) {
  pg_conn *q = PG(c);
  char sql[160];
  if (q->depth == 0)
    snprintf(sql, sizeof sql, "BEGIN%s%s", flags & STORE_TX_EXCLUSIVE ? "; " TX_LOCK : "",
             flags & STORE_TX_RELAXED ? "; SET LOCAL synchronous_commit TO OFF" : "");
  else snprintf(sql, sizeof sql, "SAVEPOINT oflua_%d", q->depth);
  int rc = run_void(q, -1, sql, 0, NULL, NULL, NULL, NULL);
  if (rc == 0) q->depth++;
  else if (q->depth == 0 && q->pg != NULL && PQtransactionStatus(q->pg) != PQTRANS_IDLE) {
    /* BEGIN went through but the lock did not: end that transaction */
    PGresult *r = PQexec(q->pg, "ROLLBACK");
    PQclear(r);
  }
  return rc;
}

static int pg_tx_rollback(store_conn *c) {
  pg_conn *q = PG(c);
  if (q->depth == 0) return 0;
  char keep[sizeof q->base.err];
  memcpy(keep, q->base.err, sizeof keep);
  q->depth--;
  if (!q->broken && q->pg != NULL) {
    char sql[80];
    if (q->depth == 0) snprintf(sql, sizeof sql, "ROLLBACK");
    else snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT oflua_%d; RELEASE SAVEPOINT oflua_%d",
                  q->depth, q->depth);
    PGresult *r = PQexec(q->pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && q->depth > 0) q->broken = 1;
    PQclear(r);
  }
  if (q->depth == 0) q->broken = 0;
  memcpy(q->base.err, keep, sizeof keep);
  return 0;
}

static int pg_tx_commit(store_conn *c) {
  pg_conn *q = PG(c);
  char sql[48];
  if (q->depth == 1) snprintf(sql, sizeof sql, "COMMIT");
  else snprintf(sql, sizeof sql, "RELEASE SAVEPOINT oflua_%d", q->depth - 1);
  int rc;
  PGresult *r = run(q, -1, sql, 0, NULL, NULL, NULL, &rc);
  if (r != NULL && q->depth == 1 && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
    /* COMMIT of a failed transaction answers ROLLBACK */
    snprintf(q->base.err, sizeof q->base.err, "the transaction was rolled back");
    rc = STORE_EDB;
  }
  PQclear(r);
  if (rc != 0) {
    if (q->depth == 1) {
      q->depth = 0;
      q->broken = 0;
    } else {
      pg_tx_rollback(c);
    }
    return rc;
  }
  q->depth--;
  return 0;
}

static int pg_tx_depth(store_conn *c) {
  return PG(c)->depth;
}

/* ---- meta ------------------------------------------------------------------ */

static int meta_read(pg_conn *q, store_meta *out) {
  int rc;
  PGresult *r = run(q, -1,
                    "SELECT m.format, m.kid, m.salt, m.check_box, coalesce(s.version, 1)"
                    " FROM oflua_meta AS m LEFT JOIN oflua_schema AS s ON s.one = 1"
                    " WHERE m.one = 1",
                    0, NULL, NULL, (const int[]){0}, &rc);
  if (r == NULL) return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    return 0;
  }
  out->format = g_int(r, 0, 0);
  out->kid = g_int(r, 0, 1);
  out->schema_version = g_int(r, 0, 4);
  int ok = PQgetlength(r, 0, 2) == STORE_SALT_LEN;
  if (ok) memcpy(out->salt, PQgetvalue(r, 0, 2), STORE_SALT_LEN);
  ok = ok && g_bytes(r, 0, 3, &out->check) == 0;
  PQclear(r);
  if (!ok) {
    snprintf(q->base.err, sizeof q->base.err, "oflua_meta is damaged");
    return STORE_EDB;
  }
  return 1;
}

static int pg_meta_load(store_conn *c, int create, const store_meta *init, store_meta *out) {
  pg_conn *q = PG(c);
  int rc;
  if (q->depth != 0) {
    snprintf(q->base.err, sizeof q->base.err, "cannot open the store inside a transaction");
    return STORE_EDB;
  }
  if ((rc = pg_tx_begin(c, 0)) != 0) return rc;
  if ((rc = run_void(q, -1, SCHEMA_LOCK, 0, NULL, NULL, NULL, NULL)) != 0) goto fail;
  PGresult *r = run(q, -1, "SELECT to_regclass('oflua_meta') IS NOT NULL, to_regclass('oflua_schema') IS NOT NULL",
          0, NULL, NULL, NULL, &rc);
  if (r == NULL) goto fail;
  int has_meta = PQgetvalue(r, 0, 0)[0] == 't', has_schema = PQgetvalue(r, 0, 1)[0] == 't';
  PQclear(r);
  long long v = 0;
  if (has_schema) {
    r = run(q, -1, "SELECT version FROM oflua_schema WHERE one = 1", 0, NULL, NULL, NULL, &rc);
    if (r == NULL) goto fail;
    v = PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    if (v > STORE_SCHEMA_VERSION) {
      snprintf(q->base.err, sizeof q->base.err,
               "the store has schema version %lld, newer than this oflua's (%d): upgrade oflua",
               v, STORE_SCHEMA_VERSION);
      rc = STORE_EDB;
      goto fail;
    }
  }
  if (!has_meta && !create) {
    pg_tx_rollback(c);
    return 0;
  }
  if (has_meta && v == STORE_SCHEMA_VERSION) {
    /* Current: no DDL, so a role without CREATE rights can use the store. */
    pg_tx_rollback(c);
    return meta_read(q, out);
  }
  if ((rc = run_void(q, -1, SCHEMA, 0, NULL, NULL, NULL, NULL)) != 0) goto fail;
  char version[32];
  snprintf(version, sizeof version, "%d", STORE_SCHEMA_VERSION);
  const char *vv[] = {version};
  if ((rc = run_void(q, -1,
                     "INSERT INTO oflua_schema (one, version) VALUES (1, $1::bigint)"
                     " ON CONFLICT (one) DO UPDATE SET version = excluded.version"
                     " WHERE oflua_schema.version < excluded.version",
                     1, vv, (const int[]){0}, (const int[]){0}, NULL)) != 0)
    goto fail;
  if (init != NULL) {
    params p = {0};
    p_int(&p, init->format);
    p_bytes(&p, init->salt, STORE_SALT_LEN);
    p_bytes(&p, init->check.p, init->check.n);
    if ((rc = run_void(q, -1,
                       "INSERT INTO oflua_meta (one, format, kid, salt, check_box)"
                       " VALUES (1, $1::bigint, 1, $2::bytea, $3::bytea) ON CONFLICT (one) DO NOTHING",
                       p.n, p.v, p.len, p.fmt, NULL)) != 0)
      goto fail;
  }
  if ((rc = pg_tx_commit(c)) != 0) return rc;
  rc = meta_read(q, out);
  return rc;
fail:
  pg_tx_rollback(c);
  return rc;
}

static int pg_meta_kid(store_conn *c, int64_t *kid) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  PGresult *r = RUN(q, ST_META_KID, p, &rc);
  if (r == NULL) return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    snprintf(q->base.err, sizeof q->base.err, "oflua_meta is empty");
    return STORE_EDB;
  }
  *kid = g_int(r, 0, 0);
  PQclear(r);
  return 0;
}

static int pg_meta_set(store_conn *c, int64_t kid, store_cbytes check) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  p_int(&p, kid);
  p_bytes(&p, check.p, check.n);
  /* Lock the meta row first: writers hold FOR KEY SHARE on it. */
  PGresult *r = run(q, -1, "SELECT kid FROM oflua_meta WHERE one = 1 FOR UPDATE", 0, NULL, NULL,
                    NULL, &rc);
  if (r == NULL) return rc;
  PQclear(r);
  return run_void(q, ST_META_SET, NULL, p.n, p.v, p.len, p.fmt, NULL);
}

/* ---- key/value ------------------------------------------------------------- */

static int pg_kv_get(store_conn *c, const char *ns, const unsigned char *idx, store_kv_row *row) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  p_text(&p, ns);
  p_bytes(&p, idx, STORE_IDX_LEN);
  PGresult *r = RUN(q, ST_KV_GET, p, &rc);
  if (r == NULL) return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    return 0;
  }
  row->id = g_int(r, 0, 0);
  row->kid = g_int(r, 0, 1);
  int ok = g_bytes(r, 0, 2, &row->vbox) == 0;
  PQclear(r);
  return ok ? 1 : oom(q);
}

static int pg_kv_put(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                     store_cbytes kbox, store_cbytes vbox) {
  pg_conn *q = PG(c);
  params p = {0};
  p_text(&p, ns);
  p_bytes(&p, idx, STORE_IDX_LEN);
  p_int(&p, kid);
  p_bytes(&p, kbox.p, kbox.n);
  p_bytes(&p, vbox.p, vbox.n);
  int64_t changed = 0;
  int rc = run_void(q, ST_KV_PUT, NULL, p.n, p.v, p.len, p.fmt, &changed);
  return rc != 0 ? rc : changed > 0;
}

static int pg_kv_delete(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid) {
  pg_conn *q = PG(c);
  params p = {0};
  p_text(&p, ns);
  p_bytes(&p, idx, STORE_IDX_LEN);
  p_int(&p, kid);
  int64_t changed = 0;
  int rc = run_void(q, ST_KV_DEL, NULL, p.n, p.v, p.len, p.fmt, &changed);
  return rc != 0 ? rc : changed > 0;
}

static int pg_kv_scan(store_conn *c, const char *ns, int64_t after, int max, store_kv_row *rows,
                      int *n) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  if (ns) p_text(&p, ns);
  p_int(&p, after);
  p_int(&p, max);
  *n = 0;
  PGresult *r = RUN(q, ns ? ST_KV_SCAN : ST_KV_SCAN_ALL, p, &rc);
  if (r == NULL) return rc;
  int rows_n = PQntuples(r);
  for (int i = 0; i < rows_n && i < max; i++) {
    store_kv_row *k = &rows[i];
    memset(k, 0, sizeof *k);
    k->id = g_int(r, i, 0);
    k->kid = g_int(r, i, 1);
    if (g_bytes(r, i, 2, &k->kbox) != 0 || g_bytes(r, i, 3, &k->vbox) != 0) {
      store_kv_row_clear(k);
      for (int j = 0; j < i; j++) store_kv_row_clear(&rows[j]);
      *n = 0;
      PQclear(r);
      return oom(q);
    }
    g_str(r, i, 4, k->ns, sizeof k->ns);
    (*n)++;
  }
  PQclear(r);
  return 0;
}

static int pg_kv_reseal(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                        store_cbytes kbox, store_cbytes vbox) {
  pg_conn *q = PG(c);
  params p = {0};
  p_int(&p, id);
  p_bytes(&p, idx, STORE_IDX_LEN);
  p_int(&p, kid);
  p_bytes(&p, kbox.p, kbox.n);
  p_bytes(&p, vbox.p, vbox.n);
  return run_void(q, ST_KV_RESEAL, NULL, p.n, p.v, p.len, p.fmt, NULL);
}

/* ---- inbox ----------------------------------------------------------------- */

/* Several rows in one statement (one round trip, atomic without a
 * transaction of its own: the group commit's batches). RETURNING names the
 * new rows' indexes; of two rows with one index, the first is the new one.
 * Rows go in blind-index order: two processes inserting overlapping batches
 * (a delivery and its retry at two receivers) then wait for each other's
 * uncommitted keys in one order, never in a cycle (a deadlock would fail
 * both batches). */
#define MULTI_COLS 6
/* The buffers of a statement with one VALUES tuple per row (the multi-row
 * insert, the done marks): its text, its np parameters, nnum number texts,
 * and rows_bytes of the caller's per-row scratch (its rows' order). */
typedef struct {
  char *sql;
  size_t cap;
  const char **vals;
  int *lens, *fmts;
  char (*num)[32];
  void *rows;
} multi_buf;

static void multi_free(multi_buf *b) {
  free(b->sql);
  free(b->vals);
  free(b->lens);
  free(b->fmts);
  free(b->num);
  free(b->rows);
}

/* 0, or an error (nothing left allocated). */
static int multi_alloc(pg_conn *q, multi_buf *b, int np, size_t cap, size_t nnum,
                       size_t rows_bytes) {
  b->cap = cap;
  b->sql = malloc(cap);
  b->vals = calloc((size_t)np, sizeof *b->vals);
  b->lens = calloc((size_t)np, sizeof *b->lens);
  b->fmts = calloc((size_t)np, sizeof *b->fmts);
  b->num = calloc(nnum, sizeof *b->num);
  b->rows = malloc(rows_bytes > 0 ? rows_bytes : 1);
  if (b->sql != NULL && b->vals != NULL && b->lens != NULL && b->fmts != NULL && b->num != NULL &&
      b->rows != NULL)
    return 0;
  multi_free(b);
  return oom(q);
}

static const store_new_event *sort_ev;
static int by_idx(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  int c = memcmp(sort_ev[x].idx, sort_ev[y].idx, STORE_IDX_LEN);
  return c != 0 ? c : (x > y) - (x < y);
}
static int pg_inbox_add_multi(pg_conn *q, const char *ns, int64_t kid, const store_new_event *ev,
                              int n, int *inserted) {
  int np = 2 + MULTI_COLS * n;
  multi_buf mb;
  int rc = multi_alloc(q, &mb, np, 512 + (size_t)n * 128, (size_t)n * 2 + 1, (size_t)n * sizeof(int));
  if (rc != 0) return rc;
  int *order = mb.rows;
  for (int i = 0; i < n; i++) order[i] = i;
  static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER; /* qsort has no context argument */
  pthread_mutex_lock(&sort_mu);
  sort_ev = ev;
  qsort(order, (size_t)n, sizeof *order, by_idx);
  sort_ev = NULL;
  pthread_mutex_unlock(&sort_mu);
  size_t o = (size_t)snprintf(mb.sql, mb.cap,
                              "INSERT INTO oflua_inbox (ns, eidx, kid, ebox, pbox, state, attempts,"
                              " next_at, created_at, updated_at)"
                              " SELECT $1::text, v.e, $2::bigint, v.b, v.p, v.s, 0, v.x, v.t, v.t"
                              " FROM (VALUES ");
  mb.vals[0] = ns;
  snprintf(mb.num[0], sizeof mb.num[0], "%lld", (long long)kid);
  mb.vals[1] = mb.num[0];
  for (int r = 0; r < n; r++) {
    int i = order[r], b = 3 + MULTI_COLS * r;
    o += (size_t)snprintf(mb.sql + o, mb.cap - o,
                          "%s($%d::bytea, $%d::bytea, $%d::bytea, $%d::float8, $%d::text, $%d::float8)",
                          r ? ", " : "", b, b + 1, b + 2, b + 3, b + 4, b + 5);
    int k = b - 1;
    mb.vals[k] = (const char *)ev[i].idx;
    mb.lens[k] = STORE_IDX_LEN;
    mb.fmts[k] = 1;
    mb.vals[k + 1] = ev[i].ebox.n > 0 ? (const char *)ev[i].ebox.p : "";
    mb.lens[k + 1] = (int)ev[i].ebox.n;
    mb.fmts[k + 1] = 1;
    mb.vals[k + 2] = ev[i].pbox.n > 0 ? (const char *)ev[i].pbox.p : "";
    mb.lens[k + 2] = (int)ev[i].pbox.n;
    mb.fmts[k + 2] = 1;
    snprintf(mb.num[1 + 2 * r], sizeof mb.num[0], "%.17g", ev[i].now);
    mb.vals[k + 3] = mb.num[1 + 2 * r];
    mb.vals[k + 4] = ev[i].state;
    snprintf(mb.num[2 + 2 * r], sizeof mb.num[0], "%.17g", ev[i].next_at);
    mb.vals[k + 5] = mb.num[2 + 2 * r];
  }
  snprintf(mb.sql + o, mb.cap - o,
           ") AS v(e, b, p, t, s, x) WHERE " KID_GUARD " = $2::bigint"
           " ON CONFLICT (ns, eidx) DO NOTHING RETURNING eidx");
  PGresult *r = run(q, -1, mb.sql, np, mb.vals, mb.lens, mb.fmts, &rc);
  if (r == NULL) goto out;
  for (int i = 0; i < n; i++) inserted[i] = 0;
  int rows = PQntuples(r);
  for (int j = 0; j < rows; j++) {
    if (PQgetlength(r, j, 0) != STORE_IDX_LEN) continue;
    const char *idx = PQgetvalue(r, j, 0);
    for (int i = 0; i < n; i++)
      if (memcmp(ev[i].idx, idx, STORE_IDX_LEN) == 0) {
        inserted[i] = 1;
        break;
      }
  }
  PQclear(r);
out:
  multi_free(&mb);
  return rc;
}

static int pg_inbox_add(store_conn *c, const char *ns, int64_t kid, const store_new_event *ev,
                        int n, int *inserted) {
  pg_conn *q = PG(c);
  if (n > 1) return pg_inbox_add_multi(q, ns, kid, ev, n, inserted);
  int tx = n > 1, rc;
  if (tx && (rc = pg_tx_begin(c, 0)) != 0) return rc;
  for (int i = 0; i < n; i++) {
    params p = {0};
    p_text(&p, ns);
    p_bytes(&p, ev[i].idx, STORE_IDX_LEN);
    p_int(&p, kid);
    p_bytes(&p, ev[i].ebox.p, ev[i].ebox.n);
    p_bytes(&p, ev[i].pbox.p, ev[i].pbox.n);
    p_real(&p, ev[i].now);
    p_text(&p, ev[i].state);
    p_real(&p, ev[i].next_at);
    int64_t changed = 0;
    if ((rc = run_void(q, ST_IN_ADD, NULL, p.n, p.v, p.len, p.fmt, &changed)) != 0) {
      if (tx) pg_tx_rollback(c);
      return rc;
    }
    inserted[i] = changed > 0;
  }
  if (tx && (rc = pg_tx_commit(c)) != 0) return rc;
  return 0;
}

/* Columns as EVENT_COLS. */
static int events(pg_conn *q, PGresult *r, int max, store_event *rows, int *n) {
  *n = 0;
  int count = PQntuples(r);
  for (int i = 0; i < count && i < max; i++) {
    store_event *e = &rows[i];
    memset(e, 0, sizeof *e);
    e->id = g_int(r, i, 0);
    e->kid = g_int(r, i, 1);
    e->attempts = g_int(r, i, 4);
    g_str(r, i, 5, e->state, sizeof e->state);
    e->has_reason = !PQgetisnull(r, i, 6);
    e->next_at = g_real(r, i, 7);
    e->created_at = g_real(r, i, 8);
    e->updated_at = g_real(r, i, 9);
    g_str(r, i, 10, e->ns, sizeof e->ns);
    if (g_bytes(r, i, 2, &e->ebox) != 0 || g_bytes(r, i, 3, &e->pbox) != 0 ||
        (e->has_reason && g_bytes(r, i, 6, &e->rbox) != 0)) {
      store_event_clear(e);
      for (int j = 0; j < i; j++) store_event_clear(&rows[j]);
      *n = 0;
      PQclear(r);
      return oom(q);
    }
    (*n)++;
  }
  PQclear(r);
  return 0;
}

static int pg_inbox_due(store_conn *c, const char *ns, double now, int max, store_event *rows,
                        int *n) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  p_text(&p, ns);
  p_real(&p, now);
  p_int(&p, max);
  PGresult *r = RUN(q, ST_IN_DUE, p, &rc);
  if (r == NULL) return rc;
  return events(q, r, max, rows, n);
}

static int pg_inbox_find(store_conn *c, const char *ns, const unsigned char *idx,
                         int64_t *meta_kid, store_event *row) {
  pg_conn *q = PG(c);
  int rc = pg_meta_kid(c, meta_kid);
  if (rc != 0) return rc;
  params p = {0};
  p_text(&p, ns);
  p_bytes(&p, idx, STORE_IDX_LEN);
  PGresult *r = RUN(q, q->depth > 0 ? ST_IN_FIND_LOCK : ST_IN_FIND, p, &rc);
  if (r == NULL) return rc;
  int n = 0;
  if ((rc = events(q, r, 1, row, &n)) != 0) return rc;
  return n > 0;
}

static int pg_inbox_set(store_conn *c, int64_t id, const char *state, int64_t attempts,
                        double next_at, store_cbytes rbox, double now) {
  pg_conn *q = PG(c);
  params p = {0};
  p_int(&p, id);
  p_text(&p, state);
  p_int(&p, attempts);
  p_real(&p, next_at);
  p_bytes(&p, rbox.p, rbox.n);
  p_real(&p, now);
  return run_void(q, ST_IN_SET, NULL, p.n, p.v, p.len, p.fmt, NULL);
}

static int pg_inbox_mark(store_conn *c, const char *ns, const unsigned char *idx, int64_t kid,
                         const char *state, int reset, double now, const store_fence *fence) {
  pg_conn *q = PG(c);
  params p = {0};
  p_text(&p, ns);
  p_bytes(&p, idx, STORE_IDX_LEN);
  p_int(&p, kid);
  p_text(&p, state);
  p_int(&p, reset); /* STORE_MARK_* */
  p_real(&p, now);
  p_int(&p, fence != NULL);
  p_int(&p, fence ? fence->attempts : 0);
  p_real(&p, fence ? fence->lease_end : 0);
  int64_t changed = 0;
  int rc = run_void(q, ST_IN_MARK, NULL, p.n, p.v, p.len, p.fmt, &changed);
  return rc != 0 ? rc : changed > 0;
}

/* Done marks in one statement: an UPDATE joined with a VALUES list, the
 * same conditions as ST_IN_MARK's with state 'done' and STORE_MARK_KEEP
 * (updated_at: the newest mark's time). The list is sorted by index, but
 * the join decides the order in which rows are locked: two markers of the
 * same events could deadlock, which PostgreSQL detects (the marks then
 * fail: the claim's own transaction, or the lease, settles them). */
#define MARK_COLS 4
static int mark_cmp(const void *a, const void *b) {
  return memcmp(((const store_mark *)a)->idx, ((const store_mark *)b)->idx, STORE_IDX_LEN);
}

static int pg_inbox_done_many(store_conn *c, const char *ns, int64_t kid, const store_mark *m,
                              int n, double now, int64_t *applied) {
  pg_conn *q = PG(c);
  *applied = 0;
  if (n <= 0) return 0;
  int np = 3 + MARK_COLS * n;
  multi_buf mb;
  int rc = multi_alloc(q, &mb, np, 512 + (size_t)n * 96, (size_t)n * 2 + 2,
                       (size_t)n * sizeof(store_mark));
  if (rc != 0) return rc;
  store_mark *sorted = mb.rows;
  memcpy(sorted, m, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, mark_cmp);
  size_t o = (size_t)snprintf(mb.sql, mb.cap,
                              "UPDATE oflua_inbox AS i SET state = 'done', updated_at = $3::float8"
                              " FROM (VALUES ");
  mb.vals[0] = ns;
  snprintf(mb.num[0], sizeof mb.num[0], "%lld", (long long)kid);
  mb.vals[1] = mb.num[0];
  snprintf(mb.num[1], sizeof mb.num[0], "%.17g", now);
  mb.vals[2] = mb.num[1];
  for (int r = 0; r < n; r++) {
    int b = 4 + MARK_COLS * r, k = b - 1;
    o += (size_t)snprintf(mb.sql + o, mb.cap - o, "%s($%d::bytea, $%d::int, $%d::bigint, $%d::float8)",
                          r ? ", " : "", b, b + 1, b + 2, b + 3);
    mb.vals[k] = (const char *)sorted[r].idx;
    mb.lens[k] = STORE_IDX_LEN;
    mb.fmts[k] = 1;
    mb.vals[k + 1] = sorted[r].fenced ? "1" : "0";
    snprintf(mb.num[2 + 2 * r], sizeof mb.num[0], "%lld",
             (long long)(sorted[r].fenced ? sorted[r].fence.attempts : 0));
    mb.vals[k + 2] = mb.num[2 + 2 * r];
    snprintf(mb.num[3 + 2 * r], sizeof mb.num[0], "%.17g", sorted[r].fenced ? sorted[r].fence.lease_end : 0);
    mb.vals[k + 3] = mb.num[3 + 2 * r];
  }
  snprintf(mb.sql + o, mb.cap - o,
           ") AS v(e, f, a, l) WHERE i.ns = $1::text AND i.eidx = v.e AND i.kid = $2::bigint"
           " AND " KID_GUARD " = $2::bigint"
           " AND (v.f = 0 OR (i.state = 'claimed' AND i.attempts = v.a AND i.next_at = v.l))");
  rc = run_void(q, -1, mb.sql, np, mb.vals, mb.lens, mb.fmts, applied);
  multi_free(&mb);
  return rc;
}

static int pg_inbox_list(store_conn *c, const char *ns, const char *state, int64_t after, int max,
                         store_event *rows, int *n) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  p_text(&p, ns);
  if (state) p_text(&p, state);
  p_int(&p, after);
  p_int(&p, max);
  PGresult *r = RUN(q, state ? ST_IN_LIST : ST_IN_LIST_ANY, p, &rc);
  if (r == NULL) return rc;
  return events(q, r, max, rows, n);
}

static int pg_inbox_stats(store_conn *c, const char *ns, int64_t counts[4]) {
  pg_conn *q = PG(c);
  static const char *const states[] = {"pending", "claimed", "done", "dead"};
  int rc;
  params p = {0};
  p_text(&p, ns);
  PGresult *r = RUN(q, ST_IN_STATS, p, &rc);
  if (r == NULL) return rc;
  memset(counts, 0, 4 * sizeof *counts);
  for (int i = 0; i < PQntuples(r); i++) {
    char state[16];
    g_str(r, i, 0, state, sizeof state);
    for (int j = 0; j < 4; j++)
      if (strcmp(state, states[j]) == 0) counts[j] = g_int(r, i, 1);
  }
  PQclear(r);
  return 0;
}

static int pg_inbox_prune(store_conn *c, const char *ns, double before, int64_t *n) {
  pg_conn *q = PG(c);
  params p = {0};
  p_text(&p, ns);
  p_real(&p, before);
  return run_void(q, ST_IN_PRUNE, NULL, p.n, p.v, p.len, p.fmt, n);
}

static int pg_inbox_scan(store_conn *c, int64_t after, int max, store_event *rows, int *n) {
  pg_conn *q = PG(c);
  int rc;
  params p = {0};
  p_int(&p, after);
  p_int(&p, max);
  PGresult *r = RUN(q, ST_IN_SCAN, p, &rc);
  if (r == NULL) return rc;
  return events(q, r, max, rows, n);
}

static int pg_inbox_reseal(store_conn *c, int64_t id, const unsigned char *idx, int64_t kid,
                           store_cbytes ebox, store_cbytes pbox, store_cbytes rbox) {
  pg_conn *q = PG(c);
  params p = {0};
  p_int(&p, id);
  p_bytes(&p, idx, STORE_IDX_LEN);
  p_int(&p, kid);
  p_bytes(&p, ebox.p, ebox.n);
  p_bytes(&p, pbox.p, pbox.n);
  p_bytes(&p, rbox.p, rbox.n);
  return run_void(q, ST_IN_RESEAL, NULL, p.n, p.v, p.len, p.fmt, NULL);
}

const store_backend store_pg_backend = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .version = pg_version,
    .meta_load = pg_meta_load,
    .meta_kid = pg_meta_kid,
    .meta_set = pg_meta_set,
    .tx_begin = pg_tx_begin,
    .tx_commit = pg_tx_commit,
    .tx_rollback = pg_tx_rollback,
    .tx_depth = pg_tx_depth,
    .kv_get = pg_kv_get,
    .kv_put = pg_kv_put,
    .kv_delete = pg_kv_delete,
    .kv_scan = pg_kv_scan,
    .kv_reseal = pg_kv_reseal,
    .inbox_add = pg_inbox_add,
    .inbox_due = pg_inbox_due,
    .inbox_find = pg_inbox_find,
    .inbox_mark = pg_inbox_mark,
    .inbox_done_many = pg_inbox_done_many,
    .inbox_set = pg_inbox_set,
    .inbox_list = pg_inbox_list,
    .inbox_stats = pg_inbox_stats,
    .inbox_prune = pg_inbox_prune,
    .inbox_scan = pg_inbox_scan,
    .inbox_reseal = pg_inbox_reseal,
    .rekey_before = NULL,
    .rekey_after = NULL,
};
