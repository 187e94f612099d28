/*
 * server.c: oflua.server, an HTTP/1.1 server on libmicrohttpd (MHD) whose
 * requests are answered by Lua handlers. This file is the I/O side: MHD,
 * connection discipline, limits, listen/stop. Lua runs elsewhere
 * (server_worker.c); see docs/architecture.md for the whole picture.
 *
 *  - MHD's threads (io_threads, epoll) only read, check and write. A
 *    complete request is copied into a job, its connection suspended
 *    (MHD_suspend_connection) and the job queued for the worker VMs; the
 *    worker answers by storing an MHD response in the job and resuming the
 *    connection, and MHD's thread queues it. A slow handler therefore holds
 *    only its own connection.
 *  - Connection discipline, with defaults safe for the internet: at most
 *    per_ip_connections per client address and max_connections in all
 *    (MHD); the whole request head must arrive within head_timeout of the
 *    connection's start (or of the end of the previous request on a kept-
 *    alive connection), the body within body_timeout of the head: a monitor
 *    thread shuts down connections past their deadline (MHD's own timeout
 *    only counts inactivity). Bodies are buffered up to max_body each,
 *    body_budget bytes for the whole process and body_budget_per_ip for
 *    one client address (503 beyond). A body over
 *    max_body, announced or chunked, is answered 413 as soon as it is
 *    passed and the connection closed.
 *  - Strict parsing, our own checks on top of MHD's parser:
 *    Content-Length with Transfer-Encoding, more than one or a malformed
 *    Content-Length, a Transfer-Encoding other than chunked, HTTP/1.1
 *    without Host, NUL bytes in the head, a header name that is not a
 *    token, a folded line or %00 in the path: one 400 and the connection
 *    is closed. Handlers see the raw (undecoded) path.
 *  - The request target comes from the URI log callback, the only place
 *    MHD shows it before unescaping it. A target over max_header -> 414,
 *    target plus headers over max_header -> 431. Each connection gets
 *    max_header + 16 KiB of MHD memory: requests far beyond the limit never
 *    reach us and MHD answers them itself.
 *  - The monitor thread also answers 503 for requests whose handler is
 *    past handler_timeout but cannot be interrupted (stuck in a C call),
 *    also when it runs inline on an I/O thread (written to the socket).
 *  - srv:stop(grace) asks the tick to stop, refuses new connections (on_accept),
 *    waits (at most grace seconds) for requests in flight, answers 503 to
 *    those left, stops MHD, waits for the tick (until the same deadline),
 *    then stops the workers (handlers still running are cut) and runs each
 *    VM's shutdown hook (at most 2 s of Lua each). A worker stuck in a C call is abandoned (its
 *    memory is kept) so that stop always returns; so is MHD when one of its
 *    I/O threads is still inside an inline handler.
 *  - Errors are logged to stderr as one JSON line each. Request headers,
 *    bodies, paths and queries are never logged: they carry secrets.
 */
#include "server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char GENERIC_500[] = "Internal Server Error\n";

/* Bytes of request bodies buffered by every server of the process. */
static atomic_llong g_body_used = 0;

static long long now_ms(void) { return (long long)(oflua__mono_now() * 1000.0); }

static void set_phase(conn_track *t, int phase, double secs) {
  if (t == NULL) return;
  atomic_store(&t->phase, phase);
  atomic_store(&t->deadline_ms, phase == PHASE_NONE ? 0 : now_ms() + (long long)(secs * 1000.0));
}

/* ---- connections ---------------------------------------------------------- */

_Static_assert(sizeof(((conn_track *)0)->addr) >= INET6_ADDRSTRLEN, "conn_track.addr is too short");

/* The client's address of conn as text into addr ("" if unknown). */
static void addr_text(struct MHD_Connection *conn, char addr[static INET6_ADDRSTRLEN]) {
  addr[0] = '\0';
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci == NULL || ci->client_addr == NULL) return;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, addr,
              INET6_ADDRSTRLEN);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, addr,
              INET6_ADDRSTRLEN);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  server *s = cls;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    conn_track *t = calloc(1, sizeof *t);
    if (t == NULL) return; /* untracked: MHD's inactivity timeout only */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    t->fd = ci != NULL ? (int)ci->connect_fd : -1;
    addr_text(conn, t->addr); /* once, not per request on a kept-alive connection */
    set_phase(t, PHASE_HEAD, s->head_timeout);
    pthread_mutex_lock(&s->conn_mu);
    t->next = s->conns;
    if (s->conns != NULL) s->conns->prev = t;
    s->conns = t;
    pthread_mutex_unlock(&s->conn_mu);
    *socket_context = t;
  } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    conn_track *t = *socket_context;
    if (t == NULL) return;
    /* MHD closes the socket after this: the monitor never shuts down a
     * descriptor that was reused */
    pthread_mutex_lock(&s->conn_mu);
    if (t->prev != NULL) t->prev->next = t->next;
    else s->conns = t->next;
    if (t->next != NULL) t->next->prev = t->prev;
    pthread_mutex_unlock(&s->conn_mu);
    free(t);
    *socket_context = NULL;
  }
}

static conn_track *conn_of(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci != NULL ? ci->socket_context : NULL;
}

/* ---- jobs ------------------------------------------------------------------ */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  server *s = cls;
  size_t n = strlen(uri);
  job *r = malloc(sizeof *r + n + 1);
  if (r == NULL) return NULL;
  memset(r, 0, sizeof *r);
  atomic_init(&r->refs, 1);
  r->srv = s;
  r->conn = conn;
  r->ct = conn_of(conn);
  memcpy(r->uri, uri, n + 1);
  r->uri_end = uri + n; /* in MHD's buffer: see line_has_nul */
  char *q = strchr(r->uri, '?');
  if (q != NULL) {
    *q = '\0';
    r->query = q + 1;
  }
  atomic_fetch_add(&s->inflight, 1);
  return r;
}

/* ---- body budget: process-wide, and a share per client address ---------- */

static int client_addr(struct MHD_Connection *conn, unsigned char addr[16], int *family) {
  memset(addr, 0, 16);
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci == NULL || ci->client_addr == NULL) return -1;
  const struct sockaddr *sa = ci->client_addr;
  *family = sa->sa_family;
  if (sa->sa_family == AF_INET)
    memcpy(addr, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
  else if (sa->sa_family == AF_INET6)
    memcpy(addr, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
  else return -1;
  return 0;
}

static unsigned ip_bucket(const unsigned char addr[16]) {
  uint32_t h = 2166136261u; /* FNV-1a: entries are bounded by max_connections */
  for (int i = 0; i < 16; i++) h = (h ^ addr[i]) * 16777619u;
  return h % IP_BUCKETS;
}

/* Reserves `more` bytes of body for r: within body_budget (process) and
 * body_budget_per_ip (its client address). 0, or -1 when over either. */
static int body_reserve(server *s, struct MHD_Connection *conn, job *r, size_t more) {
  long long used = atomic_fetch_add(&g_body_used, (long long)more) + (long long)more;
  if (used > (long long)s->body_budget) {
    atomic_fetch_sub(&g_body_used, (long long)more);
    return -1;
  }
  pthread_mutex_lock(&s->ip_mu);
  ip_share *e = r->ip;
  if (e == NULL) {
    unsigned char addr[16];
    int family = 0;
    if (client_addr(conn, addr, &family) == 0) {
      unsigned b = ip_bucket(addr);
      for (e = s->ip_table[b]; e != NULL; e = e->next)
        if (e->family == family && memcmp(e->addr, addr, 16) == 0) break;
      if (e == NULL && (e = calloc(1, sizeof *e)) != NULL) {
        memcpy(e->addr, addr, 16);
        e->family = family;
        e->next = s->ip_table[b];
        s->ip_table[b] = e;
      }
    }
    if (e == NULL) { /* no address or out of memory: refuse */
      pthread_mutex_unlock(&s->ip_mu);
      atomic_fetch_sub(&g_body_used, (long long)more);
      return -1;
    }
    e->refs++;
    r->ip = e;
  }
  if (more > s->body_budget_per_ip - e->used) {
    pthread_mutex_unlock(&s->ip_mu);
    atomic_fetch_sub(&g_body_used, (long long)more);
    return -1;
  }
  e->used += more;
  pthread_mutex_unlock(&s->ip_mu);
  r->reserved += more;
  return 0;
}

static void body_release(job *r) {
  if (r->reserved > 0) atomic_fetch_sub(&g_body_used, (long long)r->reserved);
  if (r->ip != NULL) {
    server *s = r->srv;
    pthread_mutex_lock(&s->ip_mu);
    ip_share *e = r->ip;
    e->used -= r->reserved;
    if (--e->refs == 0) {
      ip_share **pp = &s->ip_table[ip_bucket(e->addr)];
      while (*pp != e) pp = &(*pp)->next;
      *pp = e->next;
      free(e);
    }
    pthread_mutex_unlock(&s->ip_mu);
    r->ip = NULL;
  }
  r->reserved = 0;
  free(r->body);
  r->body = NULL;
  r->body_len = r->body_cap = 0;
}

void srv_job_unref(job *r) {
  if (atomic_fetch_sub(&r->refs, 1) != 1) return;
  body_release(r);
  if (r->mr != NULL && r->mr_owned) MHD_destroy_response(r->mr);
  if (r->prep != NULL) srv_prepared_unref(r->prep);
  oflua_http_response_free(&r->resp);
  free(r->mem);
  free(r);
}

static void list_unlink(job **head, job *r) {
  if (r->prev != NULL) r->prev->next = r->next;
  else if (*head == r) *head = r->next;
  if (r->next != NULL) r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void list_push(job **head, job *r) {
  r->next = *head;
  r->prev = NULL;
  if (*head != NULL) (*head)->prev = r;
  *head = r;
}

static void inflight_unlink(server *s, job *r) { list_unlink(&s->inflight_head, r); }

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  server *s = cls;
  (void)toe;
  job *r = *con_cls;
  if (r == NULL) return;
  *con_cls = NULL;
  pthread_mutex_lock(&s->mu);
  if (r->queued_inflight && !r->answered) { /* the connection died while suspended */
    r->answered = 1;
    inflight_unlink(s, r);
  }
  pthread_mutex_unlock(&s->mu);
  /* a kept-alive connection: the next head is due within head_timeout */
  set_phase(conn_of(conn), PHASE_HEAD, s->head_timeout);
  atomic_fetch_sub(&s->inflight, 1);
  srv_job_unref(r);
}

static atomic_int g_resuming = 0;

int srv_answer(job *r, unsigned status, struct MHD_Response *mr, int owned) {
  server *s = r->srv;
  pthread_mutex_lock(&s->mu);
  if (r->answered) {
    pthread_mutex_unlock(&s->mu);
    if (mr != NULL && owned) MHD_destroy_response(mr);
    return 0;
  }
  r->answered = 1;
  r->status = status;
  r->mr = mr;
  r->mr_owned = owned;
  if (r->inline_run) { /* on the I/O thread, not suspended: it queues the answer */
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  inflight_unlink(s, r);
  atomic_fetch_add(&g_resuming, 1);
  pthread_mutex_unlock(&s->mu);
  MHD_resume_connection(r->conn);
  atomic_fetch_sub(&g_resuming, 1);
  return 1;
}

/* ---- prepared answers (server.answer) -------------------------------------- */

#define ANSWER_MT OFLUA_ANSWER_MT

struct srv_prepared {
  atomic_int refs;
  unsigned status;
  struct MHD_Response *mr; /* shared: never changed once made (MHD counts its own uses) */
};

void *srv_prepared_ref(lua_State *L, int idx) {
  srv_prepared **ud = luaL_testudata(L, idx, ANSWER_MT);
  if (ud == NULL || *ud == NULL) return NULL;
  atomic_fetch_add(&(*ud)->refs, 1);
  return *ud;
}

void srv_prepared_unref(void *ptr) {
  srv_prepared *p = ptr;
  if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1) return;
  MHD_destroy_response(p->mr); /* freed once no connection still sends it */
  free(p);
}

void srv_answer_early(job *r, void *ptr) {
  srv_prepared *p = ptr;
  server *s = r->srv;
  if (atomic_load(&s->stopping)) return; /* answers then say Connection: close */
  pthread_mutex_lock(&s->mu);
  /* only a suspended connection (not while its handler still runs on an I/O
   * thread, which queues what it answers itself), answered by nobody yet */
  int ok = !r->answered && !r->inline_run && r->queued_inflight && r->prep == NULL;
  if (ok) {
    atomic_fetch_add(&p->refs, 1);
    r->prep = p;
  }
  pthread_mutex_unlock(&s->mu);
  if (!ok) return;
  atomic_fetch_add(&s->early_running, 1); /* before the answer: stop() waits for it */
  /* counted before the answer can reach the client (a client that reads
   * srv:stats() after its answer sees it counted) */
  atomic_fetch_add(&s->n_answered_early, 1);
  if (srv_answer(r, p->status, p->mr, 0)) return;
  atomic_fetch_sub(&s->n_answered_early, 1);
  atomic_fetch_sub(&s->early_running, 1);
  /* the monitor answered meanwhile (503): the handler is dropped as usual */
  pthread_mutex_lock(&s->mu);
  r->prep = NULL;
  pthread_mutex_unlock(&s->mu);
  srv_prepared_unref(p);
}

static int answer_take(lua_State *L) {
  srv_take_response(L, 1, (oflua_http_response *)lua_touserdata(L, 4));
  return 0;
}

/* server.answer(status[, body[, headers]]) -> a prepared answer: checked as
 * a handler's return values are, made into a response once. Given to
 * s:inbox_add_grouped (oflua.store), it answers the request as soon as the
 * row is committed, before the handler resumes. */
static int server_answer(lua_State *L) {
  luaL_checkinteger(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TSTRING);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  srv_prepared **ud = lua_newuserdatauv(L, sizeof *ud, 0); /* [4] (may raise: nothing to free) */
  *ud = NULL;
  luaL_setmetatable(L, ANSWER_MT);
  oflua_http_response resp;
  memset(&resp, 0, sizeof resp);
  lua_pushcfunction(L, answer_take);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_pushlightuserdata(L, &resp);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    oflua_http_response_free(&resp);
    return lua_error(L); /* the message of srv_take_response */
  }
  srv_prepared *p = calloc(1, sizeof *p);
  struct MHD_Response *mr = p != NULL ? srv_build_response(NULL, &resp, 0) : NULL;
  unsigned status = (unsigned)resp.status;
  oflua_http_response_free(&resp);
  if (mr == NULL) {
    free(p);
    return luaL_error(L, "out of memory");
  }
  atomic_init(&p->refs, 1);
  p->status = status;
  p->mr = mr;
  *ud = p;
  return 1;
}

static int answer_gc(lua_State *L) {
  srv_prepared **ud = luaL_checkudata(L, 1, ANSWER_MT);
  srv_prepared_unref(*ud);
  *ud = NULL;
  return 0;
}

static int answer_tostring(lua_State *L) {
  srv_prepared **ud = luaL_checkudata(L, 1, ANSWER_MT);
  lua_pushfstring(L, "oflua.server.answer (%d)", *ud != NULL ? (int)(*ud)->status : 0);
  return 1;
}

int srv_answer_status(job *r, unsigned status) {
  server *s = r->srv;
  return srv_answer(r, status, status == 503 ? s->r503 : s->r500, 0);
}

struct MHD_Response *srv_build_response(server *s, oflua_http_response *resp, int worker_id) {
  if (resp->status == 204 || resp->status == 304) { /* no body allowed */
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
  }
  struct MHD_Response *mr =
      MHD_create_response_from_buffer_with_free_callback(resp->body_len, resp->body, free);
  if (mr == NULL) return NULL;
  resp->body = NULL; /* owned by mr now */
  resp->body_len = 0;
  for (size_t i = 0; i < resp->nheaders; i++) {
    /* framing is MHD's: a handler's Content-Length / Transfer-Encoding is dropped */
    if (strcasecmp(resp->headers[i].name, "Content-Length") == 0 ||
        strcasecmp(resp->headers[i].name, "Transfer-Encoding") == 0)
      continue;
    if (MHD_add_response_header(mr, resp->headers[i].name, resp->headers[i].value) != MHD_YES)
      srv_log("warn", "header_refused", worker_id, "header", resp->headers[i].name, NULL, NULL);
  }
  if (s != NULL && atomic_load(&s->stopping)) MHD_add_response_header(mr, "Connection", "close");
  return mr;
}

/* ---- the head: checks and the request copy --------------------------------- */

typedef struct head_scan {
  int n_cl, n_te, n_host, nul, bad_name, te_not_chunked;
  int eol;              /* bytes of a line end seen in the head (1: LF, 2: CRLF) */
  int moved;            /* a gap could not be measured: no check of the last line */
  const char *prev_end; /* end of the previous header's value (or of the version) */
  const char *cl;
  size_t bytes, count;
  /* copy pass */
  oflua_header *items;
  char *out;
} head_scan;

static int is_eol(char c) { return c == '\0' || c == '\r' || c == '\n'; }

/* MHD 0.9.75 cuts a value at a NUL byte and reports the rest of the line
 * nowhere, and ends a line at CR, LF or CRLF, overwriting them with NULs in
 * its read buffer, where the head stays in order. Between one value's end
 * (or the request line's version) and the next name there may thus be only
 * white space and one line end (1 or 2 bytes). Anything else hid behind a
 * NUL; white space after the line end starts a folded line (obs-fold, which
 * RFC 9112 5.2 lets a server refuse). */
static void scan_gap(head_scan *h, const char *from, const char *to) {
  const char *p = from;
  while (p < to && (*p == ' ' || *p == '\t')) p++;
  int n = 0;
  while (p < to && is_eol(*p)) p++, n++;
  if (p != to || n == 0 || n > 2) h->nul = 1;
  else if (n > h->eol) h->eol = n;
}

/* After the last header: its line end and the empty line (2 to 4 bytes
 * with the line ends seen so far). A byte that is not a line end before
 * that many means a NUL hid the rest of the last line. (A NUL at the very
 * end of it hides nothing and is not seen: the bytes after the head are
 * the body's or stale.) */
static void scan_last(head_scan *h) {
  if (h->prev_end == NULL) return;
  const char *p = h->prev_end;
  for (int i = 0; i < 256 && (*p == ' ' || *p == '\t'); i++) p++;
  int want = 2 * (h->eol > 0 ? h->eol : 2);
  for (int n = 0; n < want; n++, p++)
    if (!is_eol(*p)) {
      h->nul = 1;
      return;
    }
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size) {
  head_scan *h = cls;
  (void)kind;
  const char *in_buf = value; /* NULL: no value in MHD's buffer to measure from */
  if (value == NULL) {
    value = "";
    value_size = 0;
  }
  if (strlen(key) != key_size || strlen(value) != value_size) h->nul = 1;
  /* a name with white space ("Content-Length : 3") or what MHD makes of a
   * folded line is not a token: 400 (RFC 9112 5.1) */
  if (!oflua__is_token(key, key_size)) h->bad_name = 1;
  /* a value follows its name on the same line (the colon, now a NUL, and
   * white space between): MHD copies a value continued on a folded line
   * elsewhere */
  if (in_buf != NULL) {
    const char *p = key + key_size + 1;
    if (value < p || value - p > 256) h->bad_name = 1;
    else
      for (; p < value; p++)
        if (*p != ' ' && *p != '\t') h->bad_name = 1;
  }
  if (h->prev_end != NULL && key > h->prev_end && key - h->prev_end < 256)
    scan_gap(h, h->prev_end, key);
  else
    h->moved = 1; /* not in order in MHD's buffer (it moved): not checked */
  h->prev_end = in_buf != NULL ? value + value_size : NULL;
  if (strcasecmp(key, "Content-Length") == 0) {
    h->n_cl++;
    h->cl = value;
  } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
    h->n_te++;
    if (strcasecmp(value, "chunked") != 0) h->te_not_chunked = 1;
  } else if (strcasecmp(key, "Host") == 0) {
    h->n_host++;
  }
  h->bytes += key_size + value_size + 4;
  h->count++;
  return MHD_YES;
}

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size) {
  head_scan *h = cls;
  (void)kind;
  if (value == NULL) {
    value = "";
    value_size = 0;
  }
  if (h->count >= (size_t)h->n_cl) return MHD_NO; /* n_cl holds the capacity here */
  oflua_header *it = &h->items[h->count++];
  memcpy(h->out, key, key_size);
  h->out[key_size] = '\0';
  it->name = h->out;
  h->out += key_size + 1;
  memcpy(h->out, value, value_size);
  h->out[value_size] = '\0';
  it->value = h->out;
  h->out += value_size + 1;
  return MHD_YES;
}

/* 1 if s is a valid Content-Length: 1 to 18 digits, nothing else. */
static int valid_content_length(const char *v, unsigned long long *out) {
  size_t n = strlen(v);
  if (n == 0 || n > 18) return 0;
  unsigned long long x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return 0;
    x = x * 10 + (unsigned)(v[i] - '0');
  }
  *out = x;
  return 1;
}

/* A NUL in the request target cuts what MHD shows us (uri) short of the
 * version that follows it on the same line in MHD's read buffer: only the
 * separating space (now a NUL) may lie between them. */
static int line_has_nul(const job *r, const char *version) {
  if (version <= r->uri_end || version - r->uri_end > 8192) return 0; /* elsewhere */
  return version != r->uri_end + 1;
}

static int path_has_nul(const char *p) {
  for (; *p != '\0'; p++)
    if (p[0] == '%' && p[1] == '0' && p[2] == '0') return 1;
  return 0;
}

static enum MHD_Result reject(server *s, struct MHD_Connection *conn, atomic_long *counter,
                              unsigned status, struct MHD_Response *resp) {
  atomic_fetch_add(counter, 1);
  return MHD_queue_response(conn, status, resp);
}

/* Copies what the handler needs out of MHD's connection memory. */
static int build_request(job *r, struct MHD_Connection *conn, const char *method) {
  char own[INET6_ADDRSTRLEN];
  const char *addr = own;
  if (r->ct != NULL) addr = r->ct->addr;
  else addr_text(conn, own); /* (an untracked connection) */
  /* the head is as on_head measured it (copy_header stops at count) */
  size_t mlen = strlen(method), alen = strlen(addr), count = r->head_count;
  size_t total = count * sizeof(oflua_header) + r->head_bytes + mlen + alen + 2;
  r->mem = malloc(total);
  if (r->mem == NULL) return -1;
  head_scan c;
  memset(&c, 0, sizeof c);
  c.items = (oflua_header *)(void *)r->mem;
  c.out = r->mem + count * sizeof(oflua_header);
  c.n_cl = (int)count;
  MHD_get_connection_values_n(conn, MHD_HEADER_KIND, copy_header, &c);
  memcpy(c.out, method, mlen + 1);
  r->req.method = c.out;
  c.out += mlen + 1;
  memcpy(c.out, addr, alen + 1);
  r->req.remote_addr = c.out;
  r->req.headers = c.items;
  r->req.nheaders = c.count;
  r->req.path = r->uri;
  r->req.query = r->query;
  r->req.body = r->body;
  r->req.body_len = r->body_len;
  return 0;
}

/* First call: the head is complete. Checks it; 0 to go on. */
static enum MHD_Result on_head(server *s, struct MHD_Connection *conn, job *r,
                               const char *version, int *done) {
  *done = 1;
  size_t ulen = strlen(r->uri) + (r->query != NULL ? strlen(r->query) + 1 : 0);
  if (ulen > s->max_header)
    return reject(s, conn, &s->n_bad_requests, MHD_HTTP_URI_TOO_LONG, s->r414);
  head_scan h;
  memset(&h, 0, sizeof h);
  h.prev_end = version + strlen(version); /* the request line's end, in MHD's buffer */
  MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_header, &h);
  if (!h.nul && !h.bad_name && !h.moved && h.count > 0) scan_last(&h);
  if (ulen + h.bytes > s->max_header)
    return reject(s, conn, &s->n_bad_requests, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE,
                  s->r431);
  r->head_count = h.count;
  r->head_bytes = h.bytes;
  unsigned long long len = 0;
  if (h.nul || h.bad_name || line_has_nul(r, version) || h.n_cl > 1 || h.n_te > 1 || (h.n_cl > 0 && h.n_te > 0) || h.te_not_chunked ||
      (h.n_cl == 1 && !valid_content_length(h.cl, &len)) || path_has_nul(r->uri) ||
      (strcmp(version, MHD_HTTP_VERSION_1_1) != 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0) ||
      (strcmp(version, MHD_HTTP_VERSION_1_1) == 0 && h.n_host != 1))
    return reject(s, conn, &s->n_bad_requests, MHD_HTTP_BAD_REQUEST, s->r400);
  if (len > s->max_body)
    return reject(s, conn, &s->n_too_large, MHD_HTTP_CONTENT_TOO_LARGE, s->r413);
  if (len > 0 || h.n_te > 0) {
    set_phase(r->ct, PHASE_BODY, s->body_timeout);
    if (len > 0) { /* reserve up front, but not more than 64 KiB before data arrives */
      size_t cap = len < 65536 ? (size_t)len : 65536;
      if (body_reserve(s, conn, r, cap) != 0)
        return reject(s, conn, &s->n_budget, MHD_HTTP_SERVICE_UNAVAILABLE, s->r503);
      r->body = malloc(cap);
      if (r->body == NULL) {
        body_release(r);
        return reject(s, conn, &s->n_budget, MHD_HTTP_SERVICE_UNAVAILABLE, s->r503);
      }
      r->body_cap = cap;
      r->body_want = (size_t)len;
    }
  } else {
    set_phase(r->ct, PHASE_NONE, 0);
  }
  *done = 0;
  return MHD_YES;
}

/* Seconds a connection refused in the middle of its body may stay open
 * (reading and discarding) so that the client sees the answer before the
 * close: a reset right away could destroy it in the client's buffers. */
#define LINGER_S 1.0

/* Refuses the request while its body is being read. MHD 0.9.75 accepts a
 * response only before the body or after its end, so the answer is written
 * to the socket here (nothing else is being written on it at this point),
 * the sending side shut, and the rest discarded until LINGER_S. */
static enum MHD_Result refuse_mid_body(server *s, job *r, atomic_long *counter, const char *raw) {
  atomic_fetch_add(counter, 1);
  body_release(r);
  r->state = JOB_DISCARD;
  if (r->ct != NULL && r->ct->fd >= 0) {
    size_t len = strlen(raw), off = 0;
    while (off < len) {
      ssize_t w = send(r->ct->fd, raw + off, len - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += (size_t)w;
    }
    shutdown(r->ct->fd, SHUT_WR);
    set_phase(r->ct, PHASE_BODY, LINGER_S);
  }
  return MHD_YES;
}

static const char RAW_413[] =
    "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Type: text/plain; "
    "charset=utf-8\r\nContent-Length: 18\r\n\r\nPayload Too Large\n";
static const char RAW_503[] =
    "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain; "
    "charset=utf-8\r\nContent-Length: 20\r\n\r\nService Unavailable\n";

/* A piece of the body: 0 to go on, else the request was refused. */
static enum MHD_Result on_body(server *s, struct MHD_Connection *conn, job *r, const char *data,
                               size_t n, int *done) {
  *done = 1;
  if (n > s->max_body - r->body_len) return refuse_mid_body(s, r, &s->n_too_large, RAW_413);
  if (r->body_len + n > r->body_cap) {
    /* grow by an eighth (at least 64 KiB), not by doubling: what is
     * reserved stays close to what was received (and never past an
     * announced length) */
    size_t need = r->body_len + n, step = r->body_cap / 8;
    size_t cap = r->body_cap + (step > 65536 ? step : 65536);
    if (cap < need) cap = need;
    if (r->body_want > 0 && cap > r->body_want) cap = r->body_want;
    if (cap > s->max_body) cap = s->max_body;
    if (cap < need) cap = need;
    size_t more = cap - r->body_cap;
    if (body_reserve(s, conn, r, more) != 0) return refuse_mid_body(s, r, &s->n_budget, RAW_503);
    char *b = realloc(r->body, cap);
    if (b == NULL) return refuse_mid_body(s, r, &s->n_budget, RAW_503); /* releases it all */
    r->body = b;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, data, n);
  r->body_len += n;
  *done = 0;
  return MHD_YES;
}

/* Queues the answer stored in the job (by a worker, or inline). */
static enum MHD_Result queue_answer(server *s, struct MHD_Connection *conn, job *r) {
  pthread_mutex_lock(&s->mu);
  struct MHD_Response *mr = r->mr;
  unsigned status = r->status;
  int owned = r->mr_owned;
  r->mr = NULL;
  pthread_mutex_unlock(&s->mu);
  r->state = JOB_DONE;
  if (mr == NULL) return MHD_NO; /* server.DROP: close without an answer */
  enum MHD_Result ret = MHD_queue_response(conn, status, mr);
  if (owned) MHD_destroy_response(mr);
  return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size,
                                  void **con_cls) {
  server *s = cls;
  job *r = *con_cls;
  (void)url;
  if (r == NULL) return MHD_NO; /* out of memory in on_uri: drop the connection */
  int done;
  if (r->state == JOB_HEAD) {
    r->state = JOB_BODY;
    enum MHD_Result ret = on_head(s, conn, r, version, &done);
    if (done) r->state = JOB_DONE; /* answered: ignore the rest */
    /* The handler runs on a later call, even without a body: a response
     * queued on this first call makes MHD close the connection. */
    return ret;
  }
  if (r->state == JOB_BODY) {
    if (*upload_size > 0) {
      size_t n = *upload_size;
      *upload_size = 0;
      return on_body(s, conn, r, upload_data, n, &done);
    }
    /* complete: hand it to the workers, the connection waits suspended */
    set_phase(r->ct, PHASE_NONE, 0);
    if (build_request(r, conn, method) != 0) {
      r->state = JOB_DONE;
      return MHD_queue_response(conn, 500, s->r500);
    }
    atomic_fetch_add(&s->n_requests, 1);
    r->state = JOB_QUEUED;
    r->deadline = oflua__mono_now() + s->handler_timeout;
    worker *w = s->inline_slice > 0 && !atomic_load(&s->stopping) ? srv_borrow_vm(s) : NULL;
    if (w != NULL) { /* the fast path: run here for at most inline_slice */
      pthread_mutex_lock(&s->mu); /* seen by the monitor while it runs */
      r->inline_run = 1;
      list_push(&s->inline_head, r);
      pthread_mutex_unlock(&s->mu);
      if (srv_run_inline(w, r, s->inline_slice)) {
        pthread_mutex_lock(&s->mu);
        list_unlink(&s->inline_head, r);
        pthread_mutex_unlock(&s->mu);
        srv_release_vm(w);
        return queue_answer(s, conn, r); /* after a monitor 503: closes */
      }
    }
    MHD_suspend_connection(conn);
    pthread_mutex_lock(&s->mu);
    if (r->inline_run) list_unlink(&s->inline_head, r);
    r->inline_run = 0;
    int closing = s->closing;
    if (!closing) {
      r->queued_inflight = 1;
      list_push(&s->inflight_head, r);
    }
    pthread_mutex_unlock(&s->mu);
    if (w != NULL) srv_release_vm(w); /* its worker continues the handler */
    if (closing) srv_answer_status(r, 503);
    else if (w == NULL) srv_enqueue(s, r);
    return MHD_YES;
  }
  if (r->state == JOB_QUEUED) return queue_answer(s, conn, r); /* resumed */
  if (r->state == JOB_DISCARD) { /* refused mid-body: discard, close at the end */
    if (*upload_size == 0) return MHD_NO;
    *upload_size = 0;
    return MHD_YES;
  }
  *upload_size = 0; /* answered early: discard */
  return MHD_YES;
}

/* ---- the monitor thread ------------------------------------------------------ */

static void *monitor_main(void *arg) {
  oflua__thread_name("oflua-monitor");
  server *s = arg;
  pthread_mutex_lock(&s->conn_mu);
  while (!s->monitor_stop) {
    struct timespec ts;
    oflua__mono_deadline(&ts, 0.1);
    pthread_cond_timedwait(&s->monitor_cv, &s->conn_mu, &ts);
    if (s->monitor_stop) break;
    long long now = now_ms();
    for (conn_track *t = s->conns; t != NULL; t = t->next) {
      long long dl = atomic_load(&t->deadline_ms);
      if (dl == 0 || now < dl || t->killed || t->fd < 0) continue;
      t->killed = 1;
      shutdown(t->fd, SHUT_RDWR); /* MHD sees the end and closes it */
      atomic_fetch_add(atomic_load(&t->phase) == PHASE_BODY ? &s->n_body_timeouts
                                                             : &s->n_head_timeouts,
                       1);
    }
    pthread_mutex_unlock(&s->conn_mu);
    /* handlers past their time limit that the hook could not stop (a C call)
     * or requests still queued: 503 now; the margin lets the hook act first */
    double dnow = oflua__mono_now();
    for (;;) {
      job *late = NULL;
      pthread_mutex_lock(&s->mu);
      for (job *r = s->inflight_head; r != NULL; r = r->next)
        if (dnow > r->deadline + 0.25) {
          late = r;
          atomic_fetch_add(&r->refs, 1);
          break;
        }
      pthread_mutex_unlock(&s->mu);
      if (late == NULL) break;
      if (srv_answer(late, 503, s->r503, 0)) {
        atomic_fetch_add(&s->n_handler_timeouts, 1);
        srv_log("error", "handler_timeout", 0, "reason", "no answer in time (worker busy or blocked)",
                NULL, NULL);
      }
      srv_job_unref(late);
    }
    /* late handlers running inline on an I/O thread (stuck where the hook
     * cannot stop them, in a callback called from C): that thread cannot
     * queue an answer, so the 503 is written to the socket here, under mu so
     * that the I/O thread (which takes mu before it touches the connection
     * again, then closes it) cannot write or close meanwhile */
    int ncut = 0;
    pthread_mutex_lock(&s->mu);
    for (job *r = s->inline_head; r != NULL; r = r->next) {
      if (!(dnow > r->deadline + 0.25) || r->answered || r->inline_cut) continue;
      r->answered = 1; /* the handler's answer is dropped, the connection closed */
      r->status = 0;
      r->mr = NULL;
      r->inline_cut = 1;
      if (r->ct != NULL && r->ct->fd >= 0) {
        ssize_t wr = send(r->ct->fd, RAW_503, sizeof RAW_503 - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)wr;
        shutdown(r->ct->fd, SHUT_WR);
      }
      ncut++;
    }
    pthread_mutex_unlock(&s->mu);
    for (; ncut > 0; ncut--) {
      atomic_fetch_add(&s->n_handler_timeouts, 1);
      srv_log("error", "handler_timeout", 0, "reason",
              "no answer in time (inline handler stuck in a C callback)", NULL, NULL);
    }
    pthread_mutex_lock(&s->conn_mu);
  }
  pthread_mutex_unlock(&s->conn_mu);
  return NULL;
}

/* ---- signals ------------------------------------------------------------- */

static volatile sig_atomic_t sig_caught = 0;
static int sig_pipe[2] = {-1, -1};
static pthread_once_t sig_pipe_once = PTHREAD_ONCE_INIT;
static atomic_int sig_owner = 0; /* a server handles signals */

static void make_sig_pipe(void) {
  if (pipe(sig_pipe) != 0) {
    sig_pipe[0] = sig_pipe[1] = -1;
    return;
  }
  for (int i = 0; i < 2; i++) {
    fcntl(sig_pipe[i], F_SETFL, fcntl(sig_pipe[i], F_GETFL) | O_NONBLOCK);
    fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC);
  }
}

static void on_signal(int sig) {
  int saved = errno;
  sig_caught = sig;
  if (sig_pipe[1] >= 0) {
    ssize_t w = write(sig_pipe[1], "s", 1);
    (void)w;
  }
  errno = saved;
}

static void drain_sig_pipe(void) {
  char buf[64];
  while (sig_pipe[0] >= 0 && read(sig_pipe[0], buf, sizeof buf) > 0) {
  }
}

/* ---- lifecycle ----------------------------------------------------------- */

/* Answers 503 to every request still waiting for its handler. */
static void answer_all(server *s) {
  for (;;) {
    pthread_mutex_lock(&s->mu);
    job *r = s->inflight_head;
    if (r != NULL) atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&s->mu);
    if (r == NULL) break;
    srv_answer(r, 503, s->r503, 0);
    srv_job_unref(r);
  }
}

/* MHD's accept policy: once the server stops, a new connection is closed
 * as soon as it is accepted (stop() drains the ones it has). */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
  (void)addr;
  (void)addrlen;
  return atomic_load(&((server *)cls)->stopping) ? MHD_NO : MHD_YES;
}

static void server_stop(server *s, double grace) {
  if (s->stopped) return;
  atomic_store(&s->stopping, 1);
  double deadline = oflua__mono_now() + grace;
  int stuck = 0;
  /* the tick finishes the one in progress while requests drain; it is
   * waited for (until the same deadline) once they are answered */
  srv_tick_signal(s);
  if (s->daemon != NULL) {
    /* No MHD_quiesce_daemon: with epoll and its own threads MHD 0.9.75 can
     * race itself removing the listen socket from a worker's epoll set and
     * abort the process (MHD_PANIC "Failed to remove listen FD from epoll
     * set", seen when a server stops right after it started). New
     * connections are refused by on_accept instead (accepted, closed at
     * once), and MHD_stop_daemon closes the listen socket. */
    /* (a handler answered early is no longer in flight but still runs) */
    while ((atomic_load(&s->inflight) > 0 || atomic_load(&s->early_running) > 0) &&
           oflua__mono_now() < deadline)
      oflua__sleep(0.005);
    /* grace is over: handlers still running are cut, requests left get 503 */
    atomic_store(&s->abort_handlers, 1);
    pthread_mutex_lock(&s->mu);
    s->closing = 1;
    pthread_mutex_unlock(&s->mu);
    answer_all(s);
    double flush = oflua__mono_now() + 0.2; /* let those answers go out */
    while (atomic_load(&s->inflight) > 0 && oflua__mono_now() < flush) oflua__sleep(0.005);
    while (atomic_load(&g_resuming) > 0) oflua__sleep(0.001);
    /* a handler running inline holds its I/O thread: MHD_stop_daemon would
     * wait for it forever. Cut (above), it has until 1 s past the grace */
    double io_deadline = (deadline > oflua__mono_now() ? deadline : oflua__mono_now()) + 1.0;
    for (;;) {
      pthread_mutex_lock(&s->mu);
      int busy = s->inline_head != NULL;
      pthread_mutex_unlock(&s->mu);
      if (!busy) break;
      if (oflua__mono_now() >= io_deadline) {
        s->io_stuck = 1;
        break;
      }
      oflua__sleep(0.005);
    }
    if (s->io_stuck) {
      /* keep the daemon and everything it uses: the process is to exit */
      srv_log("error", "io_thread_stuck", 0, "detail",
              "a handler running on an I/O thread does not return: that thread is abandoned",
              NULL, NULL);
      stuck = 1;
    } else {
      MHD_stop_daemon(s->daemon); /* joins the I/O threads */
      s->daemon = NULL;
    }
  }
  if (srv_tick_stop(s, deadline) != 0) stuck = 1;
  if (s->monitor_started) {
    pthread_mutex_lock(&s->conn_mu);
    s->monitor_stop = 1;
    pthread_cond_signal(&s->monitor_cv);
    pthread_mutex_unlock(&s->conn_mu);
    pthread_join(s->monitor, NULL);
    s->monitor_started = 0;
  }
  atomic_store(&s->abort_handlers, 1);
  double now = oflua__mono_now();
  /* the VM of a stuck I/O thread stays borrowed: its worker cannot exit */
  double wdl = s->io_stuck ? now : (deadline > now ? deadline : now) + 1.0;
  if (s->workers != NULL && srv_workers_stop(s, wdl) != 0) stuck = 1;
  if (stuck) s->leaked = 1;
  if (s->handle_signals) {
    sigaction(SIGINT, &s->old_int, NULL);
    sigaction(SIGTERM, &s->old_term, NULL);
    s->handle_signals = 0;
    atomic_store(&sig_owner, 0);
  }
  s->stopped = 1;
}

/* Servers with a thread that would not stop: kept reachable, never freed
 * (that thread may still touch them; the process is about to exit). */
static pthread_mutex_t leaked_mu = PTHREAD_MUTEX_INITIALIZER;
static server *leaked_servers[16];
static int n_leaked = 0;

static void server_free(server *s) {
  server_stop(s, s->grace);
  if (s->leaked) {
    pthread_mutex_lock(&leaked_mu);
    if (n_leaked < 16) leaked_servers[n_leaked++] = s;
    pthread_mutex_unlock(&leaked_mu);
    return;
  }
  struct MHD_Response *rs[] = {s->r400, s->r413, s->r414, s->r431, s->r500, s->r503};
  for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++)
    if (rs[i] != NULL) MHD_destroy_response(rs[i]);
  if (s->sync_ready) {
    /* a committer ending its batch may still wake the (stopped) workers */
    while (atomic_load(&s->deferred_wakes) > 0) oflua__sleep(0.001);
    pthread_mutex_destroy(&s->qmu);
    pthread_mutex_destroy(&s->ip_mu);
    pthread_cond_destroy(&s->qcv);
    pthread_cond_destroy(&s->exit_cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->conn_mu);
    pthread_cond_destroy(&s->monitor_cv);
  }
  for (int i = 0; i < s->nworkers; i++)
    if (s->workers[i].L != NULL) oflua__state_close(s->workers[i].L); /* never started */
  free(s->workers);
  free(s);
}

typedef struct srv_ud {
  server *s;
} srv_ud;

static srv_ud *check_srv(lua_State *L) { return luaL_checkudata(L, 1, SERVER_MT); }

static server *check_open(lua_State *L) {
  srv_ud *u = check_srv(L);
  if (u->s == NULL) luaL_error(L, "server is closed");
  return u->s;
}

static int srv_port(lua_State *L) {
  lua_pushinteger(L, check_open(L)->port);
  return 1;
}

static int srv_url(lua_State *L) {
  lua_pushstring(L, check_open(L)->url);
  return 1;
}

static double opt_grace(lua_State *L, int idx, double dflt) {
  lua_Number g = luaL_optnumber(L, idx, dflt);
  luaL_argcheck(L, g >= 0 && g <= 3600, idx, "grace must be within [0, 3600] seconds");
  return (double)g;
}

/* srv:stop([grace_s]) -> true; drains requests in flight for at most grace. */
static int srv_stop(lua_State *L) {
  srv_ud *u = check_srv(L);
  if (u->s != NULL) server_stop(u->s, opt_grace(L, 2, u->s->grace));
  lua_pushboolean(L, 1);
  return 1;
}

/* srv:wait([timeout_s]) -> true once stopped (stop() or, with
 * handle_signals, SIGINT/SIGTERM, which stops it), false on timeout or when
 * interrupted by a signal the server does not handle. */
static int srv_wait(lua_State *L) {
  srv_ud *u = check_srv(L);
  lua_Number timeout = luaL_optnumber(L, 2, -1);
  server *s = u->s;
  if (s == NULL || s->stopped) {
    lua_pushboolean(L, 1);
    return 1;
  }
  double deadline = timeout >= 0 ? oflua__mono_now() + timeout : 0;
  for (;;) {
    if (s->handle_signals && sig_caught != 0) {
      sig_caught = 0;
      drain_sig_pipe();
      server_stop(s, s->grace);
      lua_pushboolean(L, 1);
      return 1;
    }
    int ms = 1000;
    if (timeout >= 0) {
      double left = deadline - oflua__mono_now();
      if (left <= 0) break;
      ms = left < 1.0 ? (int)(left * 1000) + 1 : 1000;
    }
    struct pollfd p = {s->handle_signals ? sig_pipe[0] : -1, POLLIN, 0};
    if (poll(&p, 1, ms) < 0 && errno == EINTR && !s->handle_signals) break;
  }
  lua_pushboolean(L, 0);
  return 1;
}

/* srv:stats() -> {inflight = requests being received or answered,
 * connections = open connections, workers = n, stopped = bool} */
static int srv_stats(lua_State *L) {
  srv_ud *u = check_srv(L);
  server *s = u->s;
  lua_createtable(L, 0, 16);
  lua_pushboolean(L, s == NULL || s->stopped);
  lua_setfield(L, -2, "stopped");
  if (s == NULL) return 1;
  lua_pushinteger(L, (lua_Integer)atomic_load(&s->inflight));
  lua_setfield(L, -2, "inflight");
  lua_pushinteger(L, s->nworkers);
  lua_setfield(L, -2, "workers");
  unsigned conns = 0;
  if (s->daemon != NULL) {
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    if (di != NULL) conns = di->num_connections;
  }
  lua_pushinteger(L, (lua_Integer)conns);
  lua_setfield(L, -2, "connections");
  const struct {
    const char *name;
    atomic_long *v;
  } counters[] = {{"requests", &s->n_requests},
                  {"head_timeouts", &s->n_head_timeouts},
                  {"body_timeouts", &s->n_body_timeouts},
                  {"bad_requests", &s->n_bad_requests},
                  {"too_large", &s->n_too_large},
                  {"body_budget_exhausted", &s->n_budget},
                  {"handler_timeouts", &s->n_handler_timeouts},
                  {"answered_early", &s->n_answered_early},
                  {"mhd_warnings", &s->n_mhd_warnings}};
  for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
    lua_pushinteger(L, (lua_Integer)atomic_load(counters[i].v));
    lua_setfield(L, -2, counters[i].name);
  }
  lua_pushinteger(L, (lua_Integer)atomic_load(&g_body_used));
  lua_setfield(L, -2, "body_bytes_buffered");
  return 1;
}

static int srv_close(lua_State *L) {
  srv_ud *u = check_srv(L);
  if (u->s != NULL) {
    server_free(u->s);
    u->s = NULL;
  }
  return 0;
}

static int srv_tostring(lua_State *L) {
  srv_ud *u = check_srv(L);
  if (u->s == NULL) lua_pushliteral(L, "oflua.server (closed)");
  else lua_pushfstring(L, "oflua.server (%s)", u->s->url);
  return 1;
}

/* ---- listen -------------------------------------------------------------- */

static _Thread_local char *start_errbuf = NULL;
static _Thread_local size_t start_errlen = 0;
static atomic_llong mhd_log_second = 0;
static atomic_long mhd_log_suppressed = 0;

/* MHD's own messages: while the daemon starts, the last one is kept as the
 * reason; afterwards each is counted (stats().mhd_warnings) and at most one
 * line a second is logged. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  server *s = cls;
  if (start_errbuf != NULL) {
    vsnprintf(start_errbuf, start_errlen, fmt, ap);
    size_t n = strlen(start_errbuf);
    while (n > 0 && (start_errbuf[n - 1] == '\n' || start_errbuf[n - 1] == '\r'))
      start_errbuf[--n] = '\0';
    return;
  }
  if (s != NULL) atomic_fetch_add(&s->n_mhd_warnings, 1);
  long long sec = (long long)oflua__mono_now();
  long long last = atomic_load(&mhd_log_second);
  if (sec == last || !atomic_compare_exchange_strong(&mhd_log_second, &last, sec)) {
    atomic_fetch_add(&mhd_log_suppressed, 1);
    return;
  }
  char msg[256], sup[32];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
  snprintf(sup, sizeof sup, "%ld", atomic_exchange(&mhd_log_suppressed, 0));
  srv_log("warn", "mhd", 0, "message", msg, "suppressed", sup);
}

typedef struct listen_opts {
  const char *host, *script;
  lua_Integer port, workers, io_threads, max_body, max_header, max_connections, per_ip,
      body_budget, body_budget_per_ip;
  lua_Number timeout_s, grace_s, head_timeout, body_timeout, handler_timeout, inline_slice;
  int handle_signals;
  int args_idx;
} listen_opts;

static lua_Integer opt_int(lua_State *L, const char *k, lua_Integer dflt, lua_Integer lo,
                           lua_Integer hi) {
  lua_getfield(L, 1, k);
  lua_Integer v = dflt;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "server.listen: %s must be an integer", k);
  }
  lua_pop(L, 1);
  if (v < lo || v > hi)
    luaL_error(L, "server.listen: %s must be within [%I, %I]", k, (LUAI_UACINT)lo,
               (LUAI_UACINT)hi);
  return v;
}

static lua_Number opt_num(lua_State *L, const char *k, lua_Number dflt, lua_Number lo,
                          lua_Number hi) {
  lua_getfield(L, 1, k);
  lua_Number v = dflt;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "server.listen: %s must be a number", k);
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  if (!(v >= lo && v <= hi)) luaL_error(L, "server.listen: %s must be within [%f, %f]", k, lo, hi);
  return v;
}

static const char *const listen_keys[] = {
    "host",         "port",           "workers",         "io_threads",      "script",
    "args",         "max_body",       "max_header",      "timeout_s",       "max_connections",
    "per_ip_connections", "head_timeout", "body_timeout", "handler_timeout", "body_budget",
    "handle_signals", "grace_s",      "inline_slice", "body_budget_per_ip", NULL};

/* Defaults: safe for a server exposed to the internet (docs/operations.md). */
#define DEF_MAX_CONNECTIONS 1024
#define DEF_PER_IP 128
#define DEF_HEAD_TIMEOUT 10.0
#define DEF_BODY_TIMEOUT 30.0
#define DEF_HANDLER_TIMEOUT 30.0
#define DEF_BODY_BUDGET ((lua_Integer)64 << 20)
#define DEF_IO_THREADS 2
#define DEF_INLINE_SLICE 0.002

static void parse_listen_opts(lua_State *L, listen_opts *o) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    int known = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (int i = 0; listen_keys[i] != NULL; i++)
        if (strcmp(lua_tostring(L, -2), listen_keys[i]) == 0) known = 1;
    if (!known) {
      lua_pushvalue(L, -2);
      luaL_error(L, "server.listen: unknown option '%s'", luaL_tolstring(L, -1, NULL));
    }
    lua_pop(L, 1);
  }
  /* script and host stay on the stack while they are used: an __index
   * metamethod may hand out strings that nothing else keeps alive */
  lua_getfield(L, 1, "script");
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "server.listen: script (a path) is required");
  o->script = lua_tostring(L, -1);
  lua_getfield(L, 1, "host");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "server.listen: host must be a string");
  o->host = lua_isnil(L, -1) ? "127.0.0.1" : lua_tostring(L, -1);
  o->port = opt_int(L, "port", 0, 0, 65535);
  o->workers = opt_int(L, "workers", 2, 1, 256);
  o->io_threads = opt_int(L, "io_threads", DEF_IO_THREADS, 1, 64);
  o->max_body = opt_int(L, "max_body", 1048576, 0, (lua_Integer)1 << 40);
  o->max_header = opt_int(L, "max_header", 16384, 1024, 1 << 20);
  o->max_connections = opt_int(L, "max_connections", DEF_MAX_CONNECTIONS, 1, 1 << 20);
  o->per_ip = opt_int(L, "per_ip_connections", DEF_PER_IP, 1, 1 << 20);
  o->body_budget = opt_int(L, "body_budget", DEF_BODY_BUDGET, 0, (lua_Integer)1 << 44);
  o->timeout_s = opt_num(L, "timeout_s", 10, 0.001, 86400);
  o->head_timeout = opt_num(L, "head_timeout", DEF_HEAD_TIMEOUT, 0.05, 86400);
  o->body_timeout = opt_num(L, "body_timeout", DEF_BODY_TIMEOUT, 0.05, 86400);
  o->handler_timeout = opt_num(L, "handler_timeout", DEF_HANDLER_TIMEOUT, 0.01, 86400);
  o->grace_s = opt_num(L, "grace_s", 5, 0, 3600);
  o->inline_slice = opt_num(L, "inline_slice", DEF_INLINE_SLICE, 0, 1);
  if (o->per_ip > o->max_connections)
    luaL_error(L, "server.listen: per_ip_connections must not exceed max_connections");
  if (o->body_budget < o->max_body)
    luaL_error(L, "server.listen: body_budget must be at least max_body");
  /* default: a quarter of the budget, but room for one max_body */
  lua_Integer per_ip = o->body_budget / 4 > o->max_body ? o->body_budget / 4 : o->max_body;
  o->body_budget_per_ip = opt_int(L, "body_budget_per_ip", per_ip, 0, (lua_Integer)1 << 44);
  if (o->body_budget_per_ip < o->max_body || o->body_budget_per_ip > o->body_budget)
    luaL_error(L, "server.listen: body_budget_per_ip must be within [max_body, body_budget]");
  lua_getfield(L, 1, "handle_signals");
  o->handle_signals = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "args"); /* left on the stack for copy_value */
  if (!lua_isnil(L, -1) && !lua_istable(L, -1))
    luaL_error(L, "server.listen: args must be a table");
  o->args_idx = lua_isnil(L, -1) ? 0 : lua_gettop(L);
}

static struct MHD_Response *static_response(const char *text) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
  if (r != NULL) {
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    MHD_add_response_header(r, "Connection", "close");
  }
  return r;
}

/* Frees the server (the userdata forgets it) and returns nil, msg. */
static int listen_fail(lua_State *L, srv_ud *u, int handle_signals, const char *msg) {
  if (u != NULL && u->s != NULL) {
    server_free(u->s);
    u->s = NULL;
  }
  if (handle_signals) atomic_store(&sig_owner, 0);
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

static int init_sync(server *s) {
  pthread_condattr_t ca; /* timed waits on the monotonic clock */
  if (pthread_condattr_init(&ca) != 0) return -1;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int rc = pthread_mutex_init(&s->qmu, NULL) | pthread_mutex_init(&s->ip_mu, NULL) |
           pthread_cond_init(&s->qcv, &ca) |
           pthread_cond_init(&s->exit_cv, &ca) | pthread_mutex_init(&s->mu, NULL) |
           pthread_mutex_init(&s->conn_mu, NULL) | pthread_cond_init(&s->monitor_cv, &ca);
  pthread_condattr_destroy(&ca);
  return rc == 0 ? 0 : -1;
}

/* Loads the script into a new VM for worker `id` (0: the tick VM). */
static lua_State *load_vm(server *s, lua_State *L, const listen_opts *o, int id, char *err,
                          size_t errlen) {
  lua_State *V = oflua__state_new(oflua__state_lua_dir(L), err, errlen);
  if (V == NULL) return NULL;
  lua_gc(V, LUA_GCGEN, 0, 0);
  srv_install_wait_api(V);
  lua_pushlightuserdata(V, &s->stopping); /* server.stopping() (the VM closes first) */
  lua_setfield(V, LUA_REGISTRYINDEX, REG_STOPPING);
  /* no traceback: the message names the file and line, and is shown to
   * users of `oflua serve` as one line */
  load_ctx c = {L, o->args_idx, o->script, id};
  lua_pushcfunction(V, srv_load_worker);
  lua_pushlightuserdata(V, &c);
  if (lua_pcall(V, 1, 4, 0) != LUA_OK) {
    oflua__filter_error(V, err, errlen);
    oflua__state_close(V);
    return NULL;
  }
  /* stack: [1] handler, [2] shutdown hook or nil, [3] tick or nil, [4] interval */
  return V;
}

/* server.listen{...} -> srv | nil, err */
static int server_listen(lua_State *L) {
  listen_opts o;
  parse_listen_opts(L, &o);
  char err[1024] = "";

  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int gai = getaddrinfo(o.host, NULL, &hints, &ai);
  if (gai != 0 || ai == NULL) {
    snprintf(err, sizeof err, "cannot resolve host '%s': %s", o.host, gai_strerror(gai));
    return listen_fail(L, NULL, 0, err);
  }
  int ipv6 = ai->ai_family == AF_INET6;
  memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (ipv6) ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)o.port);
  else ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)o.port);

  /* userdata first: from here on its __gc owns the server, so nothing
   * below can leak on a Lua error */
  srv_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, SERVER_MT);
  int ud_idx = lua_gettop(L);

  if (o.handle_signals) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&sig_owner, &expected, 1))
      return listen_fail(L, NULL, 0, "another server already handles signals");
    pthread_once(&sig_pipe_once, make_sig_pipe);
    if (sig_pipe[0] < 0) return listen_fail(L, NULL, 1, "cannot create the signal pipe");
  }

  server *s = calloc(1, sizeof *s);
  if (s == NULL) return listen_fail(L, NULL, o.handle_signals, "out of memory");
  if (init_sync(s) != 0) {
    free(s);
    return listen_fail(L, NULL, o.handle_signals, "cannot create mutexes");
  }
  s->sync_ready = 1;
  u->s = s;
  s->max_body = (size_t)o.max_body;
  s->max_header = (size_t)o.max_header;
  s->body_budget = (size_t)o.body_budget;
  s->body_budget_per_ip = (size_t)o.body_budget_per_ip;
  s->grace = o.grace_s;
  s->head_timeout = o.head_timeout;
  s->body_timeout = o.body_timeout;
  s->handler_timeout = o.handler_timeout;
  s->inline_slice = o.inline_slice;
  s->r400 = static_response("Bad Request\n");
  s->r413 = static_response("Payload Too Large\n");
  s->r414 = static_response("URI Too Long\n");
  s->r431 = static_response("Request Header Fields Too Large\n");
  s->r500 = static_response(GENERIC_500);
  s->r503 = static_response("Service Unavailable\n");
  s->workers = calloc((size_t)o.workers, sizeof *s->workers);
  if (s->workers == NULL || s->r400 == NULL || s->r413 == NULL || s->r414 == NULL ||
      s->r431 == NULL || s->r500 == NULL || s->r503 == NULL)
    return listen_fail(L, u, o.handle_signals, "out of memory");
  s->nworkers = (int)o.workers;

  for (int i = 0; i < s->nworkers && err[0] == '\0'; i++) {
    worker *w = &s->workers[i];
    w->srv = s;
    w->id = i + 1;
    w->L = load_vm(s, L, &o, w->id, err, sizeof err);
    if (w->L == NULL) break;
    if (i == 0 && lua_isfunction(w->L, 3))
      s->tick_interval = lua_isnil(w->L, 4) ? 1.0 : (double)lua_tonumber(w->L, 4);
    lua_settop(w->L, 2);
  }
  if (err[0] == '\0' && s->tick_interval > 0) {
    /* The tick VM: worker id 0, same script and args. */
    s->tickL = load_vm(s, L, &o, 0, err, sizeof err);
    if (s->tickL != NULL && !lua_isfunction(s->tickL, 3)) {
      snprintf(err, sizeof err, "%s: tick is not a function in every VM", o.script);
      oflua__state_close(s->tickL);
      s->tickL = NULL;
    }
    if (s->tickL != NULL) {
      lua_settop(s->tickL, 3);
      pthread_mutex_init(&s->tick_mu, NULL);
      pthread_condattr_t ca; /* a wall-clock step must not stretch or skip ticks */
      pthread_condattr_init(&ca);
      pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
      pthread_cond_init(&s->tick_cv, &ca);
      pthread_condattr_destroy(&ca);
      s->tick_ring.ring = srv_tick_ring;
      s->tick_ring.ctx = s;
      lua_pushlightuserdata(s->tickL, &s->tick_ring);
      lua_setfield(s->tickL, LUA_REGISTRYINDEX, OFLUA_REG_TICK_RING);
    }
  }
  if (err[0] != '\0') return listen_fail(L, u, o.handle_signals, err);
  if (srv_workers_start(s, err, sizeof err) != 0)
    return listen_fail(L, u, o.handle_signals, err);

  /* MHD's threads inherit this mask: signals are handled by the Lua thread. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  start_errbuf = err;
  start_errlen = sizeof err;
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  if (ipv6) flags |= MHD_USE_IPv6;
  /* Per-connection memory: headers up to max_header plus room for the
   * response headers and read buffer; oversized headers beyond that make
   * MHD itself answer 431. */
  size_t pool = s->max_header + 16384;
  unsigned timeout = (unsigned)ceil(o.timeout_s);
  s->daemon = MHD_start_daemon(
      flags, (uint16_t)o.port, on_accept, s, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
      s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
      s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_CONNECTION_TIMEOUT, timeout,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)o.max_connections,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o.per_ip,
      /* MHD's strict mode (and its other own 400s) send the status line and
       * headers twice in 0.9.75: our checks (on_head) do it instead */
      MHD_OPTION_STRICT_FOR_CLIENT, (int)0,
      /* one I/O thread: MHD's single internal thread (a pool of 1 draws a warning) */
      o.io_threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (unsigned)o.io_threads,
      MHD_OPTION_END);
  start_errbuf = NULL;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (s->daemon == NULL) {
    char msg[1200];
    snprintf(msg, sizeof msg, "cannot listen on %s:%d: %s", o.host, (int)o.port,
             err[0] ? err : "libmicrohttpd refused to start");
    return listen_fail(L, u, o.handle_signals, msg);
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di != NULL ? di->port : (int)o.port;
  snprintf(s->url, sizeof s->url, ipv6 ? "http://[%s]:%d" : "http://%s:%d", o.host, s->port);

  int rc = oflua__thread_start(&s->monitor, monitor_main, s);
  if (rc == 0) s->monitor_started = 1;
  if (rc == 0 && s->tickL != NULL) {
    rc = oflua__thread_start(&s->tick_thread, srv_tick_main, s);
    if (rc == 0) s->tick_started = 1;
  }
  if (rc != 0) return listen_fail(L, u, o.handle_signals, "cannot start the monitor or tick thread");

  if (o.handle_signals) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sig_caught = 0;
    drain_sig_pipe();
    sigaction(SIGINT, &sa, &s->old_int);
    sigaction(SIGTERM, &sa, &s->old_term);
    s->handle_signals = 1;
  }
  lua_pushvalue(L, ud_idx);
  return 1;
}

/* server.worker_id() -> this worker VM's number (1..workers), nil outside. */
static int server_worker_id(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REG_WORKER_ID);
  return 1;
}

/* server.stopping() -> true once the server running this VM began to stop
 * (false outside a server VM): a long tick can end early. */
static int server_stopping(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REG_STOPPING);
  const atomic_int *stopping = lua_touserdata(L, -1);
  lua_pushboolean(L, stopping != NULL && atomic_load(stopping));
  return 1;
}

int luaopen_oflua_server(lua_State *L) {
  static const luaL_Reg srv_methods[] = {
      {"port", srv_port}, {"url", srv_url},     {"stop", srv_stop},
      {"wait", srv_wait}, {"close", srv_close}, {"stats", srv_stats}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"listen", server_listen},
                                   {"shared", srv_shared},
                                   {"sleep", srv_sleep},
                                   {"worker_id", server_worker_id},
                                   {"stopping", server_stopping},
                                   {"answer", server_answer},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_newlib(L, srv_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, srv_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, srv_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, srv_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, ANSWER_MT)) {
    lua_pushcfunction(L, answer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, answer_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  srv_shared_methods(L);
  luaL_newlib(L, funcs);
  lua_pushstring(L, MHD_get_version());
  lua_setfield(L, -2, "mhd_version");
  lua_pushlightuserdata(L, (void *)&srv_drop_sentinel);
  lua_setfield(L, -2, "DROP");
  return 1;
}
