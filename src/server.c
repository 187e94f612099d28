/*
 * server.c: oflua.server, an HTTP/1.1 server on libmicrohttpd (MHD)
 * whose requests are answered by Lua handlers.
 *
 * How the pieces fit:
 *  - server.listen{script=...} creates one lua_State per worker ("worker
 *    VM") in the calling thread, loads the script into each (so a script
 *    error is reported by listen itself), then starts MHD with a thread pool
 *    of the same size. The first request a pool thread serves binds it to a
 *    free worker VM (thread-local pointer); from then on that thread, and
 *    only it, runs that VM. Handlers never share a VM and take no locks.
 *  - A request is collected per connection: the raw request target from the
 *    URI log callback (the only place MHD shows it before unescaping), the
 *    body in a buffer bounded by max_body. Limits are checked before the
 *    handler runs: a request target over max_header -> 414; target plus
 *    headers over max_header -> 431; a Content-Length over max_body -> 413
 *    without reading the body (the connection is closed after it); a
 *    chunked body growing past it -> 413 once it ends (the excess is read
 *    and discarded). Each connection gets max_header + 16 KiB of MHD
 *    memory: requests far beyond the limit never reach us and MHD answers
 *    them itself (431 for headers, 414 for the request line, as of 0.9.75).
 *    Idle and slow connections are closed after timeout_s.
 *  - oflua__dispatch turns a C request into the Lua req table, calls the
 *    handler (function, router, or {handler=, shutdown=}) and converts its
 *    results back to C. The embedding API (oflua_handle_http) uses the same
 *    function, so both paths behave identically, including the generic 500
 *    when a handler throws or returns something that is not a response.
 *  - srv:stop(grace) quiesces the listen socket, waits (at most grace
 *    seconds) until requests in flight are done, stops MHD (joining its
 *    threads), then runs each VM's shutdown hook and closes the VMs.
 *  - server.shared(name) is a process-wide dictionary protected by a mutex,
 *    shared by every VM of the process (like OpenResty's lua_shared_dict,
 *    without eviction: a full dictionary answers nil, "no memory").
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

/* The worker VM bound to the current MHD thread. */
static _Thread_local worker *tls_worker = NULL;

/* Per request, from the URI log callback to the completion callback. */
typedef struct request {
  char *body;
  size_t body_len, body_cap;
  int started, too_large, no_memory;
  const char *query; /* into uri, after '?', or NULL */
  char uri[];        /* raw request target */
} request;

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  server *s = cls;
  (void)conn;
  size_t n = strlen(uri);
  request *r = malloc(sizeof *r + n + 1);
  if (r == NULL) return NULL;
  memset(r, 0, sizeof *r);
  memcpy(r->uri, uri, n + 1);
  char *q = strchr(r->uri, '?');
  if (q != NULL) {
    *q = '\0';
    r->query = q + 1;
  }
  atomic_fetch_add(&s->inflight, 1);
  return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  server *s = cls;
  (void)conn, (void)toe;
  request *r = *con_cls;
  if (r == NULL) return;
  free(r->body);
  free(r);
  *con_cls = NULL;
  atomic_fetch_sub(&s->inflight, 1);
}

static enum MHD_Result queue_static(struct MHD_Connection *conn, unsigned status,
                                    struct MHD_Response *resp) {
  return MHD_queue_response(conn, status, resp);
}

typedef struct header_vec {
  oflua_header *items;
  size_t n, cap;
  size_t bytes;
} header_vec;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value) {
  header_vec *v = cls;
  (void)kind;
  v->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
  if (v->items != NULL && v->n < v->cap) {
    v->items[v->n].name = key;
    v->items[v->n].value = value != NULL ? value : "";
    v->n++;
  }
  return MHD_YES;
}

static size_t header_bytes(struct MHD_Connection *conn) {
  header_vec v = {NULL, 0, 0, 0};
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, &v);
  return v.bytes;
}

static worker *current_worker(server *s) {
  worker *w = tls_worker;
  if (w != NULL && w->srv == s) return w;
  int i = atomic_fetch_add(&s->next_worker, 1);
  if (i >= s->nworkers) return NULL; /* more MHD threads than VMs: never expected */
  tls_worker = &s->workers[i];
  return tls_worker;
}

static enum MHD_Result run_handler(server *s, struct MHD_Connection *conn, request *r,
                                   const char *url, const char *method) {
  worker *w = current_worker(s);
  if (w == NULL) {
    srv_log("error", "no_worker_vm", 0, NULL, NULL, NULL, NULL);
    return queue_static(conn, 500, s->r500);
  }
  oflua_header small[32];
  header_vec hv = {small, 0, 32, 0};
  unsigned nh = (unsigned)MHD_get_connection_values(conn, MHD_HEADER_KIND, NULL, NULL);
  oflua_header *heap = NULL;
  if (nh > hv.cap) {
    heap = malloc(nh * sizeof *heap);
    if (heap == NULL) return queue_static(conn, 500, s->r500);
    hv.items = heap;
    hv.cap = nh;
  }
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, &hv);

  char addr[INET6_ADDRSTRLEN] = "";
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci != NULL && ci->client_addr != NULL) {
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
      inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, addr,
                sizeof addr);
    else if (sa->sa_family == AF_INET6)
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, addr,
                sizeof addr);
  }

  oflua_http_request req = {method, url, r->query, hv.items, hv.n,
                            r->body, r->body_len, addr};
  oflua_http_response resp;
  char err[4096];
  oflua__dispatch(w->L, 1, &req, &resp, err, sizeof err);
  lua_settop(w->L, 2);
  free(heap);
  if (err[0] != '\0') srv_log("error", "handler_error", w->id, "method", method, "error", err);
  if (resp.status == DROP_STATUS) { /* server.DROP: close without an answer */
    oflua_http_response_free(&resp);
    return MHD_NO;
  }

  if (resp.status == 204 || resp.status == 304) { /* no body allowed */
    free(resp.body);
    resp.body = NULL;
    resp.body_len = 0;
  }
  struct MHD_Response *mr =
      MHD_create_response_from_buffer_with_free_callback(resp.body_len, resp.body, free);
  if (mr == NULL) {
    oflua_http_response_free(&resp);
    return queue_static(conn, 500, s->r500);
  }
  resp.body = NULL; /* owned by mr now */
  for (size_t i = 0; i < resp.nheaders; i++) {
    /* framing is MHD's: a handler's Content-Length / Transfer-Encoding is dropped */
    if (strcasecmp(resp.headers[i].name, "Content-Length") == 0 ||
        strcasecmp(resp.headers[i].name, "Transfer-Encoding") == 0)
      continue;
    if (MHD_add_response_header(mr, resp.headers[i].name, resp.headers[i].value) != MHD_YES)
      srv_log("warn", "header_refused", w->id, "header", resp.headers[i].name, NULL, NULL);
  }
  if (atomic_load(&s->stopping)) MHD_add_response_header(mr, "Connection", "close");
  enum MHD_Result ret = MHD_queue_response(conn, (unsigned)resp.status, mr);
  MHD_destroy_response(mr);
  oflua_http_response_free(&resp);
  return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size,
                                  void **con_cls) {
  server *s = cls;
  request *r = *con_cls;
  (void)version;
  if (r == NULL) return MHD_NO; /* out of memory in on_uri: drop the connection */
  if (!r->started) {
    r->started = 1;
    size_t ulen = strlen(r->uri) + (r->query != NULL ? strlen(r->query) + 1 : 0);
    if (ulen > s->max_header) return queue_static(conn, MHD_HTTP_URI_TOO_LONG, s->r414);
    if (ulen + header_bytes(conn) > s->max_header)
      return queue_static(conn, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, s->r431);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    unsigned long long len = 0;
    if (cl != NULL) {
      char *end;
      errno = 0;
      len = strtoull(cl, &end, 10);
      if (errno != 0 || len > s->max_body)
        return queue_static(conn, MHD_HTTP_CONTENT_TOO_LARGE, s->r413);
    }
    /* The handler runs on a later call, even without a body: a response
     * queued on this first call makes MHD close the connection. */
    if (len > 0) { /* reserve up front, but not more than 64 KiB before data arrives */
      size_t cap = len < 65536 ? (size_t)len : 65536;
      r->body = malloc(cap);
      if (r->body != NULL) r->body_cap = cap;
    }
    return MHD_YES;
  }
  if (*upload_size > 0) {
    size_t n = *upload_size;
    *upload_size = 0;
    if (r->too_large || r->no_memory) return MHD_YES; /* discard the rest */
    if (n > s->max_body - r->body_len) {
      r->too_large = 1;
      free(r->body);
      r->body = NULL;
      r->body_len = r->body_cap = 0;
      return MHD_YES;
    }
    if (r->body_len + n > r->body_cap) {
      size_t cap = r->body_cap ? r->body_cap : 4096;
      while (cap < r->body_len + n) cap *= 2;
      if (cap > s->max_body) cap = s->max_body;
      char *b = realloc(r->body, cap);
      if (b == NULL) {
        r->no_memory = 1;
        return MHD_YES;
      }
      r->body = b;
      r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, upload_data, n);
    r->body_len += n;
    return MHD_YES;
  }
  if (r->too_large) return queue_static(conn, MHD_HTTP_CONTENT_TOO_LARGE, s->r413);
  if (r->no_memory) return queue_static(conn, 500, s->r500);
  return run_handler(s, conn, r, url, method);
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

static void server_stop(server *s, double grace) {
  if (s->stopped) return;
  atomic_store(&s->stopping, 1);
  srv_tick_stop(s);
  MHD_socket lsock = MHD_INVALID_SOCKET;
  if (s->daemon != NULL) {
    lsock = MHD_quiesce_daemon(s->daemon);
    double deadline = oflua__mono_now() + grace;
    while (atomic_load(&s->inflight) > 0 && oflua__mono_now() < deadline) oflua__sleep(0.005);
    MHD_stop_daemon(s->daemon); /* joins the threads: no VM is in use after this */
    s->daemon = NULL;
    if (lsock != MHD_INVALID_SOCKET) close(lsock);
  }
  srv_close_workers(s);
  if (s->handle_signals) {
    sigaction(SIGINT, &s->old_int, NULL);
    sigaction(SIGTERM, &s->old_term, NULL);
    s->handle_signals = 0;
    atomic_store(&sig_owner, 0);
  }
  s->stopped = 1;
}

static void server_free(server *s) {
  server_stop(s, s->grace);
  if (s->r413) MHD_destroy_response(s->r413);
  if (s->r414) MHD_destroy_response(s->r414);
  if (s->r431) MHD_destroy_response(s->r431);
  if (s->r500) MHD_destroy_response(s->r500);
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
  lua_createtable(L, 0, 4);
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

/* MHD's own messages: the last one is kept as the reason while the daemon
 * starts; later ones are dropped (they may quote request data). */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  if (start_errbuf != NULL) {
    vsnprintf(start_errbuf, start_errlen, fmt, ap);
    size_t n = strlen(start_errbuf);
    while (n > 0 && (start_errbuf[n - 1] == '\n' || start_errbuf[n - 1] == '\r'))
      start_errbuf[--n] = '\0';
  }
}

typedef struct listen_opts {
  const char *host, *script;
  lua_Integer port, workers, max_body, max_header, max_connections;
  lua_Number timeout_s, grace_s;
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
    "host",      "port",      "workers",         "script",         "args",    "max_body",
    "max_header", "timeout_s", "max_connections", "handle_signals", "grace_s", NULL};

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
  lua_getfield(L, 1, "script");
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "server.listen: script (a path) is required");
  o->script = lua_tostring(L, -1); /* kept alive by the options table */
  lua_pop(L, 1);
  lua_getfield(L, 1, "host");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "server.listen: host must be a string");
  o->host = lua_isnil(L, -1) ? "127.0.0.1" : lua_tostring(L, -1);
  lua_pop(L, 1);
  o->port = opt_int(L, "port", 0, 0, 65535);
  o->workers = opt_int(L, "workers", 2, 1, 256);
  o->max_body = opt_int(L, "max_body", 1048576, 0, (lua_Integer)1 << 40);
  o->max_header = opt_int(L, "max_header", 16384, 1024, 1 << 20);
  o->max_connections = opt_int(L, "max_connections", 1024, 1, 1 << 20);
  o->timeout_s = opt_num(L, "timeout_s", 10, 0.001, 86400);
  o->grace_s = opt_num(L, "grace_s", 5, 0, 3600);
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

static int listen_fail(lua_State *L, server *s, const char *msg) {
  if (s != NULL) server_free(s);
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
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
    return listen_fail(L, NULL, err);
  }
  int ipv6 = ai->ai_family == AF_INET6;
  memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (ipv6) ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)o.port);
  else ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)o.port);

  if (o.handle_signals) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&sig_owner, &expected, 1))
      return listen_fail(L, NULL, "another server already handles signals");
    pthread_once(&sig_pipe_once, make_sig_pipe);
    if (sig_pipe[0] < 0) {
      atomic_store(&sig_owner, 0);
      return listen_fail(L, NULL, "cannot create the signal pipe");
    }
  }

  /* userdata first, so nothing below can leak on a Lua error */
  srv_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  luaL_setmetatable(L, SERVER_MT);
  int ud_idx = lua_gettop(L);

  server *s = calloc(1, sizeof *s);
  if (s == NULL) {
    if (o.handle_signals) atomic_store(&sig_owner, 0);
    return listen_fail(L, NULL, "out of memory");
  }
  s->max_body = (size_t)o.max_body;
  s->max_header = (size_t)o.max_header;
  s->grace = o.grace_s;
  s->r413 = static_response("Payload Too Large\n");
  s->r414 = static_response("URI Too Long\n");
  s->r431 = static_response("Request Header Fields Too Large\n");
  s->r500 = static_response(GENERIC_500);
  s->workers = calloc((size_t)o.workers, sizeof *s->workers);
  if (s->workers == NULL || s->r413 == NULL || s->r414 == NULL || s->r431 == NULL || s->r500 == NULL) {
    if (o.handle_signals) atomic_store(&sig_owner, 0);
    return listen_fail(L, s, "out of memory");
  }
  s->nworkers = (int)o.workers;

  const char *lua_dir = oflua__state_lua_dir(L);
  for (int i = 0; i < s->nworkers; i++) {
    worker *w = &s->workers[i];
    w->srv = s;
    w->id = i + 1;
    w->L = oflua__state_new(lua_dir, err, sizeof err);
    if (w->L == NULL) break;
    lua_gc(w->L, LUA_GCGEN, 0, 0);
    /* no traceback: the message names the file and line, and is shown to
     * users of `oflua serve` as one line */
    load_ctx c = {L, o.args_idx, o.script, w->id};
    lua_pushcfunction(w->L, srv_load_worker);
    lua_pushlightuserdata(w->L, &c);
    if (lua_pcall(w->L, 1, 4, 0) != LUA_OK) {
      const char *m = lua_tostring(w->L, -1);
      snprintf(err, sizeof err, "%s", m != NULL ? m : "error loading the script");
      break;
    }
    /* stack: [1] handler, [2] shutdown hook or nil, [3] tick or nil, [4] interval */
    if (i == 0 && lua_isfunction(w->L, 3))
      s->tick_interval = lua_isnil(w->L, 4) ? 1.0 : (double)lua_tonumber(w->L, 4);
    lua_settop(w->L, 2);
  }
  if (err[0] == '\0' && s->tick_interval > 0) {
    /* The tick VM: worker id 0, same script and args. */
    s->tickL = oflua__state_new(lua_dir, err, sizeof err);
    if (s->tickL != NULL) {
      lua_gc(s->tickL, LUA_GCGEN, 0, 0);
      load_ctx c = {L, o.args_idx, o.script, 0};
      lua_pushcfunction(s->tickL, srv_load_worker);
      lua_pushlightuserdata(s->tickL, &c);
      if (lua_pcall(s->tickL, 1, 4, 0) != LUA_OK) {
        const char *m = lua_tostring(s->tickL, -1);
        snprintf(err, sizeof err, "%s", m != NULL ? m : "error loading the script");
      } else if (!lua_isfunction(s->tickL, 3)) {
        snprintf(err, sizeof err, "%s: tick is not a function in every VM", o.script);
      } else {
        lua_settop(s->tickL, 3);
        pthread_mutex_init(&s->tick_mu, NULL);
        pthread_condattr_t ca; /* a wall-clock step must not stretch or skip ticks */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->tick_cv, &ca);
        pthread_condattr_destroy(&ca);
      }
      if (err[0] != '\0') {
        lua_close(s->tickL);
        s->tickL = NULL;
      }
    }
  }
  if (err[0] != '\0') {
    if (o.handle_signals) atomic_store(&sig_owner, 0);
    return listen_fail(L, s, err);
  }

  /* MHD's threads inherit this mask: signals are handled by the Lua thread. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  start_errbuf = err;
  start_errlen = sizeof err;
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  if (ipv6) flags |= MHD_USE_IPv6;
  /* Per-connection memory: headers up to max_header plus room for the
   * response headers and read buffer; oversized headers beyond that make
   * MHD itself answer 431. */
  size_t pool = s->max_header + 16384;
  unsigned timeout = (unsigned)ceil(o.timeout_s);
  s->daemon = MHD_start_daemon(
      flags, (uint16_t)o.port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
      MHD_OPTION_CONNECTION_TIMEOUT, timeout, MHD_OPTION_CONNECTION_LIMIT,
      (unsigned)o.max_connections,
      /* one worker: MHD's single internal thread (a pool of 1 draws a warning) */
      s->nworkers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, (unsigned)s->nworkers,
      MHD_OPTION_END);
  start_errbuf = NULL;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (s->daemon == NULL) {
    if (o.handle_signals) atomic_store(&sig_owner, 0);
    char msg[1200];
    snprintf(msg, sizeof msg, "cannot listen on %s:%d: %s", o.host, (int)o.port,
             err[0] ? err : "libmicrohttpd refused to start");
    return listen_fail(L, s, msg);
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di != NULL ? di->port : (int)o.port;
  snprintf(s->url, sizeof s->url, ipv6 ? "http://[%s]:%d" : "http://%s:%d", o.host, s->port);

  if (s->tickL != NULL) {
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&s->tick_thread, NULL, srv_tick_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
      if (o.handle_signals) atomic_store(&sig_owner, 0);
      return listen_fail(L, s, "cannot start the tick thread");
    }
    s->tick_started = 1;
  }

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
  u->s = s;
  lua_pushvalue(L, ud_idx);
  return 1;
}

/* server.worker_id() -> this worker VM's number (1..workers), nil outside. */
static int server_worker_id(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, REG_WORKER_ID);
  return 1;
}

int luaopen_oflua_server(lua_State *L) {
  static const luaL_Reg srv_methods[] = {
      {"port", srv_port}, {"url", srv_url},     {"stop", srv_stop},
      {"wait", srv_wait}, {"close", srv_close}, {"stats", srv_stats}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"listen", server_listen},
                                   {"shared", srv_shared},
                                   {"worker_id", server_worker_id},
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
  srv_shared_methods(L);
  luaL_newlib(L, funcs);
  lua_pushstring(L, MHD_get_version());
  lua_setfield(L, -2, "mhd_version");
  lua_pushlightuserdata(L, (void *)&srv_drop_sentinel);
  lua_setfield(L, -2, "DROP");
  return 1;
}
