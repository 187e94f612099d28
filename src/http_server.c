/*
 * http_server.c: oflua.server, an HTTP/1.1 server on libmicrohttpd (MHD)
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
#include "internal.h"
#include "oflua.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#define SERVER_MT "oflua.server"
#define SHARED_MT "oflua.shared_dict"
#define REG_WORKER_ID "oflua.server.worker_id"

static const char GENERIC_500[] = "Internal Server Error\n";

/* ---- small helpers -------------------------------------------------------- */

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Appends s as a JSON string body (no quotes) to buf at *pos, truncating. */
static void json_escape(char *buf, size_t cap, size_t *pos, const char *s) {
  static const char hex[] = "0123456789abcdef";
  for (; *s != '\0' && *pos + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = (char)c;
    } else if (c == '\n') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = 'n';
    } else if (c == '\t') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = 't';
    } else if (c < 0x20 || c == 0x7f) {
      memcpy(buf + *pos, "\\u00", 4);
      buf[*pos + 4] = hex[c >> 4];
      buf[*pos + 5] = hex[c & 15];
      *pos += 6;
    } else {
      buf[(*pos)++] = (char)c;
    }
  }
}

/* One JSON line on stderr, written with a single write(2) so lines from
 * several threads do not interleave. Fields are (name, value) pairs. */
static void log_json(const char *level, const char *event, int worker, const char *k1,
                     const char *v1, const char *k2, const char *v2) {
  char buf[8192];
  size_t pos = 0;
  int n = snprintf(buf, sizeof buf, "{\"ts\":%.3f,\"level\":\"%s\",\"event\":\"%s\"", wall_now(),
                   level, event);
  if (n < 0) return;
  pos = (size_t)n;
  if (worker > 0 && pos < sizeof buf) {
    n = snprintf(buf + pos, sizeof buf - pos, ",\"worker\":%d", worker);
    if (n > 0) pos += (size_t)n;
  }
  const char *keys[2] = {k1, k2}, *vals[2] = {v1, v2};
  for (int i = 0; i < 2; i++) {
    if (keys[i] == NULL || vals[i] == NULL || pos + 16 >= sizeof buf) continue;
    buf[pos++] = ',';
    buf[pos++] = '"';
    json_escape(buf, sizeof buf - 8, &pos, keys[i]);
    buf[pos++] = '"';
    buf[pos++] = ':';
    buf[pos++] = '"';
    json_escape(buf, sizeof buf - 8, &pos, vals[i]);
    buf[pos++] = '"';
  }
  if (pos + 3 > sizeof buf) pos = sizeof buf - 3;
  buf[pos++] = '}';
  buf[pos++] = '\n';
  size_t off = 0;
  while (off < pos) {
    ssize_t w = write(2, buf + off, pos - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
}

/* ==== request/response conversion (shared with oflua_handle_http) ========= */

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Pushes s[0..n) percent-decoded, '+' as a space (form encoding). */
static void push_form_decoded(lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '+') {
      out[o++] = ' ';
    } else if (c == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
               hexval((unsigned char)s[i + 2]) >= 0) {
      out[o++] = (char)(hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]));
      i += 2;
    } else {
      out[o++] = (char)c;
    }
  }
  luaL_pushresultsize(&b, o);
}

/* Pushes the query table for a raw query string: k=v pairs separated by
 * '&', decoded; a key without '=' maps to ""; repeated keys: last wins. */
static void push_query(lua_State *L, const char *q, size_t len) {
  lua_createtable(L, 0, 4);
  size_t i = 0;
  while (i < len) {
    size_t start = i;
    while (i < len && q[i] != '&') i++;
    size_t end = i++;
    if (end == start) continue;
    const char *eq = memchr(q + start, '=', end - start);
    size_t klen = eq ? (size_t)(eq - (q + start)) : end - start;
    if (klen == 0) continue;
    push_form_decoded(L, q + start, klen);
    if (eq) push_form_decoded(L, eq + 1, end - start - klen - 1);
    else lua_pushliteral(L, "");
    lua_rawset(L, -3);
  }
}

/* Pushes the headers table: lower-case names, repeated headers joined with
 * ", " in arrival order. */
static void push_headers(lua_State *L, const oflua_header *h, size_t n) {
  lua_createtable(L, 0, (int)(n < 64 ? n : 64));
  char small[64];
  for (size_t i = 0; i < n; i++) {
    if (h[i].name == NULL) continue;
    size_t len = strlen(h[i].name);
    char *low = small;
    luaL_Buffer b;
    int boxed = len > sizeof small;
    if (boxed) low = luaL_buffinitsize(L, &b, len);
    for (size_t j = 0; j < len; j++) {
      unsigned char c = (unsigned char)h[i].name[j];
      low[j] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    if (boxed) luaL_pushresultsize(&b, len);
    else lua_pushlstring(L, low, len);
    const char *v = h[i].value != NULL ? h[i].value : "";
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: old .. ", " .. new */
      lua_pushliteral(L, ", ");
      lua_pushstring(L, v);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, v);
    }
    lua_rawset(L, -3);
  }
}

static void push_request(lua_State *L, const oflua_http_request *r) {
  lua_createtable(L, 0, 9);
  lua_pushstring(L, r->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, r->path);
  lua_setfield(L, -2, "path");
  const char *q = r->query != NULL ? r->query : "";
  size_t qlen = strlen(q);
  lua_pushlstring(L, q, qlen);
  lua_setfield(L, -2, "raw_query");
  push_query(L, q, qlen);
  lua_setfield(L, -2, "query");
  push_headers(L, r->headers, r->headers != NULL ? r->nheaders : 0);
  lua_setfield(L, -2, "headers");
  if (r->body != NULL) lua_pushlstring(L, r->body, r->body_len);
  else lua_pushliteral(L, "");
  lua_setfield(L, -2, "body");
  lua_pushstring(L, r->remote_addr != NULL ? r->remote_addr : "");
  lua_setfield(L, -2, "remote_addr");
  lua_newtable(L);
  lua_setfield(L, -2, "params");
}

/* Public (oflua.h); here rather than in embed_http.c because the server
 * workers free their responses with it too. */
void oflua_http_response_free(oflua_http_response *resp) {
  if (resp == NULL) return;
  for (size_t i = 0; i < resp->nheaders; i++) {
    free((char *)resp->headers[i].name);
    free((char *)resp->headers[i].value);
  }
  free(resp->headers);
  free(resp->body);
  memset(resp, 0, sizeof *resp);
}

static int valid_header_name(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    /* RFC 9110 token characters */
    if (c <= 32 || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c) != NULL) return 0;
  }
  return 1;
}

static int valid_header_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r' || c == '\n' || c == '\0') return 0;
  }
  return 1;
}

static char *dup_bytes(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p != NULL) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

/* Adds header name: value (value at stack top, a string or number) to resp. */
static void add_resp_header(lua_State *L, oflua_http_response *resp, size_t cap, const char *name,
                            size_t nlen) {
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_error(L, "handler returned a %s as the value of header '%s'", lua_typename(L, t), name);
  size_t vlen;
  const char *v = lua_tolstring(L, -1, &vlen);
  if (!valid_header_value(v, vlen))
    luaL_error(L, "handler returned header '%s' with CR, LF or NUL in its value", name);
  if (resp->nheaders >= cap) luaL_error(L, "too many response headers");
  char *n = dup_bytes(name, nlen), *val = dup_bytes(v, vlen);
  if (n == NULL || val == NULL) {
    free(n);
    free(val);
    luaL_error(L, "out of memory");
  }
  resp->headers[resp->nheaders].name = n;
  resp->headers[resp->nheaders].value = val;
  resp->nheaders++;
}

/* Converts status, body, headers at index base..base+2 into resp; raises
 * on a value that is not a valid response (the caller turns that into 500). */
/* server.DROP: a handler returning it as the status gets no answer at all:
 * the connection is closed (for fault injection, like a peer that dies). */
static const char drop_sentinel = 'D';
#define DROP_STATUS 0

static void take_response(lua_State *L, int base, oflua_http_response *resp) {
  if (lua_touserdata(L, base) == (void *)&drop_sentinel) {
    resp->status = DROP_STATUS;
    return;
  }
  int isint = 0;
  lua_Integer status = lua_tointegerx(L, base, &isint);
  if (!isint || lua_type(L, base) != LUA_TNUMBER) {
    luaL_error(L, "handler returned a %s as the status, not an integer",
               luaL_typename(L, base));
  }
  if (status < 200 || status > 599)
    luaL_error(L, "handler returned status %d, not within 200..599", (int)status);
  resp->status = (int)status;

  int bt = lua_type(L, base + 1);
  if (bt != LUA_TNIL && bt != LUA_TSTRING)
    luaL_error(L, "handler returned a %s as the body, not a string or nil", lua_typename(L, bt));

  int ht = lua_type(L, base + 2);
  if (ht != LUA_TNIL && ht != LUA_TTABLE)
    luaL_error(L, "handler returned a %s as the headers, not a table or nil",
               lua_typename(L, ht));
  if (ht == LUA_TTABLE) {
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, base + 2) != 0) {
      count += lua_type(L, -1) == LUA_TTABLE ? lua_rawlen(L, -1) : 1;
      lua_pop(L, 1);
    }
    if (count > 0) {
      if (count > 1024) luaL_error(L, "handler returned too many headers");
      resp->headers = calloc(count, sizeof *resp->headers);
      if (resp->headers == NULL) luaL_error(L, "out of memory");
      lua_pushnil(L);
      while (lua_next(L, base + 2) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING)
          luaL_error(L, "handler returned a header name that is a %s, not a string",
                     luaL_typename(L, -2));
        size_t nlen;
        const char *name = lua_tolstring(L, -2, &nlen);
        if (!valid_header_name(name, nlen))
          luaL_error(L, "handler returned an invalid header name");
        if (lua_type(L, -1) == LUA_TTABLE) { /* several values: one line each */
          lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
          for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            add_resp_header(L, resp, count, name, nlen);
            lua_pop(L, 1);
          }
        } else {
          add_resp_header(L, resp, count, name, nlen);
        }
        lua_pop(L, 1);
      }
    }
  }
  if (bt == LUA_TSTRING) {
    size_t len;
    const char *body = lua_tolstring(L, base + 1, &len);
    if (len > 0) {
      resp->body = malloc(len);
      if (resp->body == NULL) luaL_error(L, "out of memory");
      memcpy(resp->body, body, len);
      resp->body_len = len;
    }
  }
}

/* Pushes the callable for the handler value at index h (and its self when it
 * is an object with a handle method); returns the number of values pushed
 * before the request (1 or 2). Accepts a function, an object with a
 * `handle` method (a router) or a table {handler = <either>}. */
static int push_callable(lua_State *L, int h) {
  lua_pushvalue(L, h);
  for (int depth = 0; depth < 4; depth++) {
    if (lua_type(L, -1) == LUA_TFUNCTION) return 1;
    if (lua_type(L, -1) != LUA_TTABLE && lua_type(L, -1) != LUA_TUSERDATA) break;
    if (lua_getfield(L, -1, "handle") != LUA_TNIL) { /* obj.handle(obj, req) */
      lua_insert(L, -2);
      return 2;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "handler") == LUA_TNIL) {
      lua_pop(L, 1);
      break;
    }
    lua_remove(L, -2);
  }
  return luaL_error(L, "the handler is a %s, not a function, a router or {handler = ...}",
                    luaL_typename(L, -1));
}

/* The error message on top of L, passed through the error filter when one is
 * set (OFLUA_REG_ERROR_FILTER); replaces the top with the result and returns
 * it (never NULL). */
static const char *filtered_error(lua_State *L) {
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "(error object is not a string)");
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_ERROR_FILTER) == LUA_TFUNCTION) {
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
      lua_replace(L, -2); /* the filtered text replaces the original */
      return lua_tostring(L, -1);
    }
  }
  lua_pop(L, 1); /* the filter's result or error, or the non-function */
  return lua_tostring(L, -1);
}

typedef struct dispatch_ctx {
  const oflua_http_request *req;
  oflua_http_response *resp;
} dispatch_ctx;

static int dispatch_protected(lua_State *L) {
  dispatch_ctx *c = (dispatch_ctx *)lua_touserdata(L, 1);
  int base = lua_gettop(L);
  int nself = push_callable(L, 2);
  push_request(L, c->req);
  lua_call(L, nself, 3);
  take_response(L, base + 1, c->resp);
  return 0;
}

static void generic_500(oflua_http_response *resp) {
  oflua_http_response_free(resp);
  resp->status = 500;
  resp->body = dup_bytes(GENERIC_500, sizeof GENERIC_500 - 1);
  if (resp->body != NULL) resp->body_len = sizeof GENERIC_500 - 1;
  resp->headers = calloc(1, sizeof *resp->headers);
  if (resp->headers != NULL) {
    resp->headers[0].name = dup_bytes("Content-Type", 12);
    resp->headers[0].value = dup_bytes("text/plain; charset=utf-8", 25);
    if (resp->headers[0].name == NULL || resp->headers[0].value == NULL) {
      free((char *)resp->headers[0].name);
      free((char *)resp->headers[0].value);
      free(resp->headers);
      resp->headers = NULL;
    } else {
      resp->nheaders = 1;
    }
  }
}

int oflua__dispatch(lua_State *L, int handler, const struct oflua_http_request *req,
                    struct oflua_http_response *resp, char *errbuf, size_t errlen) {
  memset(resp, 0, sizeof *resp);
  if (errbuf != NULL && errlen > 0) errbuf[0] = '\0';
  handler = lua_absindex(L, handler);
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) {
    oflua__errf(errbuf, errlen, "oflua_handle_http: Lua stack overflow");
    generic_500(resp);
    return OFLUA_OK;
  }
  dispatch_ctx ctx = {req, resp};
  lua_pushcfunction(L, oflua__msgh);
  lua_pushcfunction(L, dispatch_protected);
  lua_pushlightuserdata(L, &ctx);
  lua_pushvalue(L, handler);
  if (lua_pcall(L, 2, 0, top + 1) != LUA_OK) {
    const char *msg = filtered_error(L);
    oflua__errf(errbuf, errlen, "%s", msg);
    if (errbuf != NULL && errlen > 0 && errbuf[0] == '\0') oflua__errf(errbuf, errlen, "error");
    generic_500(resp);
  }
  lua_settop(L, top);
  return OFLUA_OK;
}

/* ==== shared dictionaries ================================================= */

enum { SD_STR = 1, SD_INT, SD_NUM, SD_BOOL };

typedef struct sd_entry {
  struct sd_entry *next;
  uint32_t hash;
  int type;
  size_t klen, vlen; /* vlen: string values only */
  union {
    lua_Integer i;
    lua_Number n;
    int b;
  } v;
  char data[]; /* key bytes, then string value bytes */
} sd_entry;

typedef struct shared_dict {
  struct shared_dict *next;
  pthread_mutex_t mu;
  size_t limit, used, count, nbuckets;
  sd_entry **buckets;
  char name[];
} shared_dict;

/* Process-wide registry; dictionaries live until the process exits (and
 * stay reachable from here, so leak checkers do not report them). */
static pthread_mutex_t sd_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_dict *sd_registry = NULL;

#define SD_DEFAULT_SIZE ((size_t)1 << 20)

static uint32_t sd_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

static size_t sd_entry_cost(size_t klen, size_t vlen) { return sizeof(sd_entry) + klen + vlen; }

/* Finds the entry for key; *prevp gets the link pointing at it. Locked. */
static sd_entry *sd_find(shared_dict *d, const char *k, size_t klen, uint32_t h,
                         sd_entry ***linkp) {
  sd_entry **link = &d->buckets[h & (d->nbuckets - 1)];
  for (; *link != NULL; link = &(*link)->next) {
    sd_entry *e = *link;
    if (e->hash == h && e->klen == klen && memcmp(e->data, k, klen) == 0) {
      if (linkp) *linkp = link;
      return e;
    }
  }
  if (linkp) *linkp = link;
  return NULL;
}

static void sd_grow(shared_dict *d) {
  size_t nb = d->nbuckets * 2;
  sd_entry **b = calloc(nb, sizeof *b);
  if (b == NULL) return; /* keep the old table: only slower */
  for (size_t i = 0; i < d->nbuckets; i++) {
    sd_entry *e = d->buckets[i];
    while (e != NULL) {
      sd_entry *next = e->next;
      e->next = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
      e = next;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = nb;
}

static void sd_unlink(shared_dict *d, sd_entry **link) {
  sd_entry *e = *link;
  *link = e->next;
  d->used -= sd_entry_cost(e->klen, e->vlen);
  d->count--;
  free(e);
}

typedef struct sd_value {
  int type; /* 0: nil */
  lua_Integer i;
  lua_Number n;
  int b;
  const char *s;
  size_t len;
} sd_value;

static void sd_checkvalue(lua_State *L, int idx, sd_value *v) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
    case LUA_TNONE:
    case LUA_TNIL: break;
    case LUA_TBOOLEAN:
      v->type = SD_BOOL;
      v->b = lua_toboolean(L, idx);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        v->type = SD_INT;
        v->i = lua_tointeger(L, idx);
      } else {
        v->type = SD_NUM;
        v->n = lua_tonumber(L, idx);
      }
      break;
    case LUA_TSTRING:
      v->type = SD_STR;
      v->s = lua_tolstring(L, idx, &v->len);
      break;
    default:
      luaL_typeerror(L, idx, "string, number, boolean or nil");
  }
}

/* Makes an entry for key/value (not linked). NULL when out of memory. */
static sd_entry *sd_new_entry(const char *k, size_t klen, uint32_t h, const sd_value *v) {
  size_t vlen = v->type == SD_STR ? v->len : 0;
  sd_entry *e = malloc(sizeof *e + klen + vlen);
  if (e == NULL) return NULL;
  e->next = NULL;
  e->hash = h;
  e->type = v->type;
  e->klen = klen;
  e->vlen = vlen;
  memcpy(e->data, k, klen);
  if (vlen > 0) memcpy(e->data + klen, v->s, vlen);
  if (v->type == SD_INT) e->v.i = v->i;
  else if (v->type == SD_NUM) e->v.n = v->n;
  else if (v->type == SD_BOOL) e->v.b = v->b;
  return e;
}

/* Stores key = v (replacing); only_if_absent: add semantics. Locked.
 * Returns 1 stored, 0 exists (add), -1 no memory. */
static int sd_store(shared_dict *d, const char *k, size_t klen, const sd_value *v,
                    int only_if_absent) {
  uint32_t h = sd_hash(k, klen);
  sd_entry **link;
  sd_entry *old = sd_find(d, k, klen, h, &link);
  if (old != NULL && only_if_absent) return 0;
  if (v->type == 0) { /* delete */
    if (old != NULL) sd_unlink(d, link);
    return 1;
  }
  size_t cost = sd_entry_cost(klen, v->type == SD_STR ? v->len : 0);
  size_t freed = old != NULL ? sd_entry_cost(old->klen, old->vlen) : 0;
  if (d->used - freed + cost > d->limit) return -1;
  if (old != NULL && old->type != SD_STR && v->type != SD_STR) { /* in place */
    old->type = v->type;
    if (v->type == SD_INT) old->v.i = v->i;
    else if (v->type == SD_NUM) old->v.n = v->n;
    else old->v.b = v->b;
    return 1;
  }
  sd_entry *e = sd_new_entry(k, klen, h, v);
  if (e == NULL) return -1;
  if (old != NULL) {
    e->next = old->next;
    *link = e;
    d->used -= freed;
    free(old);
  } else {
    e->next = NULL;
    *link = e;
    d->count++;
  }
  d->used += cost;
  if (d->count > d->nbuckets * 2) sd_grow(d);
  return 1;
}

static shared_dict *sd_check(lua_State *L) {
  return *(shared_dict **)luaL_checkudata(L, 1, SHARED_MT);
}

static int sd_lua_get(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  uint32_t h = sd_hash(k, klen);
  /* Never raise while holding the lock: copy the value out, push after. */
  char small[256];
  char *buf = small;
  size_t cap = sizeof small;
  for (;;) {
    sd_value v;
    memset(&v, 0, sizeof v);
    size_t need = 0;
    pthread_mutex_lock(&d->mu);
    sd_entry *e = sd_find(d, k, klen, h, NULL);
    if (e != NULL) {
      v.type = e->type;
      v.i = e->v.i;
      v.n = e->v.n;
      v.b = e->v.b;
      if (e->type == SD_STR) {
        need = e->vlen;
        if (need <= cap) memcpy(buf, e->data + e->klen, need);
      }
    }
    pthread_mutex_unlock(&d->mu);
    if (v.type == SD_STR && need > cap) { /* grow (may raise: lock released) */
      buf = lua_newuserdatauv(L, need, 0);
      cap = need;
      continue;
    }
    switch (v.type) {
      case SD_STR: lua_pushlstring(L, buf, need); break;
      case SD_INT: lua_pushinteger(L, v.i); break;
      case SD_NUM: lua_pushnumber(L, v.n); break;
      case SD_BOOL: lua_pushboolean(L, v.b); break;
      default: lua_pushnil(L);
    }
    return 1;
  }
}

static int sd_result(lua_State *L, int rc) {
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "no memory");
    return 2;
  }
  lua_pushboolean(L, rc > 0);
  return 1;
}

static int sd_lua_set(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  sd_checkvalue(L, 3, &v);
  pthread_mutex_lock(&d->mu);
  int rc = sd_store(d, k, klen, &v, 0);
  pthread_mutex_unlock(&d->mu);
  return sd_result(L, rc);
}

static int sd_lua_add(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  sd_checkvalue(L, 3, &v);
  luaL_argcheck(L, v.type != 0, 3, "value expected");
  pthread_mutex_lock(&d->mu);
  int rc = sd_store(d, k, klen, &v, 1);
  pthread_mutex_unlock(&d->mu);
  return sd_result(L, rc);
}

static int sd_lua_delete(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  memset(&v, 0, sizeof v);
  pthread_mutex_lock(&d->mu);
  sd_store(d, k, klen, &v, 0);
  pthread_mutex_unlock(&d->mu);
  return 0;
}

/* incr(k, n = 1, init = 0) -> new value | nil, "not a number" | nil, "no memory" */
static int sd_lua_incr(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value by, init;
  memset(&by, 0, sizeof by);
  memset(&init, 0, sizeof init);
  by.type = SD_INT;
  by.i = 1;
  init.type = SD_INT;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checknumber(L, 3);
    sd_checkvalue(L, 3, &by);
  }
  if (!lua_isnoneornil(L, 4)) {
    luaL_checknumber(L, 4);
    sd_checkvalue(L, 4, &init);
  }
  uint32_t h = sd_hash(k, klen);
  sd_value out;
  memset(&out, 0, sizeof out);
  int rc = 1;
  pthread_mutex_lock(&d->mu);
  sd_entry *e = sd_find(d, k, klen, h, NULL);
  sd_value cur = init;
  if (e != NULL) {
    if (e->type == SD_INT) {
      cur.type = SD_INT;
      cur.i = e->v.i;
    } else if (e->type == SD_NUM) {
      cur.type = SD_NUM;
      cur.n = e->v.n;
    } else {
      rc = -2;
    }
  }
  if (rc == 1) {
    if (cur.type == SD_INT && by.type == SD_INT) {
      out.type = SD_INT; /* wraps around like Lua integers */
      out.i = (lua_Integer)((lua_Unsigned)cur.i + (lua_Unsigned)by.i);
    } else {
      out.type = SD_NUM;
      out.n = (cur.type == SD_INT ? (lua_Number)cur.i : cur.n) +
              (by.type == SD_INT ? (lua_Number)by.i : by.n);
    }
    if (e != NULL) {
      e->type = out.type;
      if (out.type == SD_INT) e->v.i = out.i;
      else e->v.n = out.n;
    } else {
      rc = sd_store(d, k, klen, &out, 0);
    }
  }
  pthread_mutex_unlock(&d->mu);
  if (rc < 0) {
    luaL_pushfail(L);
    if (rc == -2) lua_pushliteral(L, "not a number");
    else lua_pushliteral(L, "no memory");
    return 2;
  }
  if (out.type == SD_INT) lua_pushinteger(L, out.i);
  else lua_pushnumber(L, out.n);
  return 1;
}

/* keys() -> array of the keys (in no particular order) */
static int sd_lua_keys(lua_State *L) {
  shared_dict *d = sd_check(L);
  char *buf = NULL;
  size_t cap = 0;
  for (;;) {
    size_t need = 0, n = 0;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nbuckets; i++)
      for (sd_entry *e = d->buckets[i]; e != NULL; e = e->next) need += sizeof(size_t) + e->klen;
    if (need <= cap) {
      size_t pos = 0;
      for (size_t i = 0; i < d->nbuckets; i++)
        for (sd_entry *e = d->buckets[i]; e != NULL; e = e->next) {
          memcpy(buf + pos, &e->klen, sizeof(size_t));
          memcpy(buf + pos + sizeof(size_t), e->data, e->klen);
          pos += sizeof(size_t) + e->klen;
          n++;
        }
    }
    pthread_mutex_unlock(&d->mu);
    if (need > cap) {
      cap = need + 256;
      buf = lua_newuserdatauv(L, cap, 0); /* may raise: lock released */
      continue;
    }
    lua_createtable(L, (int)(n < 1000000 ? n : 1000000), 0);
    size_t pos = 0;
    for (size_t i = 1; i <= n; i++) {
      size_t klen;
      memcpy(&klen, buf + pos, sizeof klen);
      lua_pushlstring(L, buf + pos + sizeof klen, klen);
      lua_rawseti(L, -2, (lua_Integer)i);
      pos += sizeof klen + klen;
    }
    return 1;
  }
}

static int sd_lua_tostring(lua_State *L) {
  shared_dict *d = sd_check(L);
  lua_pushfstring(L, "oflua.shared_dict (%s)", d->name);
  return 1;
}

/* server.shared(name [, {size = bytes}]) -> dict; the size applies when the
 * dictionary is first created in the process (default 1 MiB). */
static int server_shared(lua_State *L) {
  size_t nlen;
  const char *name = luaL_checklstring(L, 1, &nlen);
  size_t limit = SD_DEFAULT_SIZE;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "size");
    if (!lua_isnil(L, -1)) {
      lua_Integer s = luaL_checkinteger(L, -1);
      luaL_argcheck(L, s >= 1024 && s <= ((lua_Integer)1 << 40), 2,
                    "size must be within [1024, 2^40] bytes");
      limit = (size_t)s;
    }
    lua_pop(L, 1);
  }
  shared_dict **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  pthread_mutex_lock(&sd_registry_mu);
  shared_dict *d = sd_registry;
  while (d != NULL && strcmp(d->name, name) != 0) d = d->next;
  if (d == NULL) {
    d = calloc(1, sizeof *d + nlen + 1);
    if (d != NULL) {
      d->nbuckets = 64;
      d->buckets = calloc(d->nbuckets, sizeof *d->buckets);
      if (d->buckets == NULL || pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d->buckets);
        free(d);
        d = NULL;
      } else {
        memcpy(d->name, name, nlen + 1);
        d->limit = limit;
        d->next = sd_registry;
        sd_registry = d;
      }
    }
  }
  pthread_mutex_unlock(&sd_registry_mu);
  if (d == NULL) return luaL_error(L, "server.shared: out of memory");
  *ud = d;
  luaL_setmetatable(L, SHARED_MT);
  return 1;
}

/* ==== the server ========================================================== */

typedef struct server server;

typedef struct worker {
  lua_State *L; /* stack: [1] handler, [2] shutdown hook or nil */
  server *srv;
  int id;
} worker;

struct server {
  struct MHD_Daemon *daemon;
  worker *workers;
  int nworkers;
  atomic_int next_worker;
  atomic_long inflight;
  atomic_int stopping;
  int stopped;
  int port;
  char url[128];
  size_t max_body, max_header;
  double grace;
  int handle_signals;
  struct sigaction old_int, old_term;
  struct MHD_Response *r413, *r414, *r431, *r500;
  /* Background VM running the script's tick() every tick_interval seconds
   * (loaded from the same script as the workers, on its own thread). */
  lua_State *tickL;
  pthread_t tick_thread;
  int tick_started;
  double tick_interval;
  int tick_stop;
  pthread_mutex_t tick_mu;
  pthread_cond_t tick_cv;
};

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
    log_json("error", "no_worker_vm", 0, NULL, NULL, NULL, NULL);
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
  if (err[0] != '\0') log_json("error", "handler_error", w->id, "method", method, "error", err);
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
      log_json("warn", "header_refused", w->id, "header", resp.headers[i].name, NULL, NULL);
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

/* ---- worker VMs ---------------------------------------------------------- */

/* Copies the value at src index i (of state `from`) onto `to`. Only plain
 * data crosses: nil, booleans, numbers (integer/float kept), strings, tables
 * of those (no cycles, nesting at most 32). */
static void copy_value(lua_State *from, int i, lua_State *to, int depth) {
  luaL_checkstack(to, 4, "args");
  switch (lua_type(from, i)) {
    case LUA_TNIL: lua_pushnil(to); break;
    case LUA_TBOOLEAN: lua_pushboolean(to, lua_toboolean(from, i)); break;
    case LUA_TNUMBER:
      if (lua_isinteger(from, i)) lua_pushinteger(to, lua_tointeger(from, i));
      else lua_pushnumber(to, lua_tonumber(from, i));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(from, i, &len);
      lua_pushlstring(to, s, len);
      break;
    }
    case LUA_TTABLE: {
      if (depth > 32) luaL_error(to, "args: tables nested too deep (a cycle?)");
      if (!lua_checkstack(from, 4)) luaL_error(to, "args: stack overflow");
      i = lua_absindex(from, i);
      lua_newtable(to);
      lua_pushnil(from);
      while (lua_next(from, i) != 0) {
        int kt = lua_type(from, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
          lua_pop(from, 2);
          luaL_error(to, "args: cannot pass a %s key", lua_typename(from, kt));
        }
        copy_value(from, -2, to, depth + 1);
        copy_value(from, -1, to, depth + 1);
        lua_rawset(to, -3);
        lua_pop(from, 1);
      }
      break;
    }
    default:
      luaL_error(to, "args: cannot pass a %s to the workers", luaL_typename(from, i));
  }
}

typedef struct load_ctx {
  lua_State *from; /* the listening state; args at index args_idx (0: none) */
  int args_idx;
  const char *script;
  int worker_id;
} load_ctx;

/* In the worker VM: load the script, call it with the args, leave
 * [1] handler, [2] shutdown hook or nil. */
static int load_worker(lua_State *L) {
  load_ctx *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushinteger(L, c->worker_id);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_WORKER_ID);
  if (luaL_loadfilex(L, c->script, "t") != LUA_OK) return lua_error(L);
  int nargs = 0;
  if (c->args_idx != 0) {
    copy_value(c->from, c->args_idx, L, 0);
    nargs = 1;
  }
  lua_call(L, nargs, 1);
  int t = lua_type(L, 1);
  if (t == LUA_TFUNCTION) {
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
    return 4;
  }
  if (t != LUA_TTABLE)
    return luaL_error(L, "%s must return a handler function, a router or {handler = fn}, not a %s",
                      c->script, luaL_typename(L, 1));
  if (lua_getfield(L, 1, "handle") != LUA_TNIL) { /* a router */
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
    return 4;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "handler");
  lua_getfield(L, 1, "shutdown");
  lua_getfield(L, 1, "tick");
  lua_getfield(L, 1, "tick_interval");
  int ht = lua_type(L, 2);
  if (ht != LUA_TFUNCTION && ht != LUA_TTABLE)
    return luaL_error(L, "%s: the returned table has no handle method and no handler field",
                      c->script);
  if (!lua_isnil(L, 3) && !lua_isfunction(L, 3))
    return luaL_error(L, "%s: shutdown must be a function", c->script);
  if (!lua_isnil(L, 4) && !lua_isfunction(L, 4))
    return luaL_error(L, "%s: tick must be a function", c->script);
  if (!lua_isnil(L, 5)) {
    lua_Number iv = lua_tonumber(L, 5);
    if (lua_type(L, 5) != LUA_TNUMBER || !(iv >= 0.01 && iv <= 86400))
      return luaL_error(L, "%s: tick_interval must be a number of seconds in [0.01, 86400]",
                        c->script);
  }
  lua_remove(L, 1);
  return 4;
}

static int run_shutdown(lua_State *L) {
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 0);
  }
  return 0;
}

static void close_workers(server *s) {
  for (int i = 0; i < s->nworkers; i++) {
    worker *w = &s->workers[i];
    if (w->L == NULL) continue;
    lua_settop(w->L, 2);
    lua_pushcfunction(w->L, oflua__msgh);
    lua_pushcfunction(w->L, run_shutdown);
    lua_pushvalue(w->L, 1);
    lua_pushvalue(w->L, 2);
    if (lua_pcall(w->L, 2, 0, 3) != LUA_OK)
      log_json("error", "shutdown_error", w->id, "error", filtered_error(w->L), NULL, NULL);
    lua_close(w->L);
    w->L = NULL;
  }
  free(s->workers);
  s->workers = NULL;
  s->nworkers = 0;
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

/* ---- tick ---------------------------------------------------------------- */

static void *tick_main(void *arg) {
  server *s = arg;
  lua_State *L = s->tickL; /* stack: [1] handler, [2] shutdown, [3] tick */
  pthread_mutex_lock(&s->tick_mu);
  for (;;) {
    struct timespec until; /* the condvar waits on the monotonic clock */
    clock_gettime(CLOCK_MONOTONIC, &until);
    double secs = floor(s->tick_interval);
    until.tv_sec += (time_t)secs;
    until.tv_nsec += (long)((s->tick_interval - secs) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000000000L;
    }
    while (!s->tick_stop && pthread_cond_timedwait(&s->tick_cv, &s->tick_mu, &until) == 0) {
    }
    if (s->tick_stop) break;
    pthread_mutex_unlock(&s->tick_mu);
    lua_settop(L, 3);
    lua_pushcfunction(L, oflua__msgh);
    lua_pushvalue(L, 3);
    if (lua_pcall(L, 0, 0, 4) != LUA_OK)
      log_json("error", "tick_error", 0, "error", filtered_error(L), NULL, NULL);
    lua_settop(L, 3);
    pthread_mutex_lock(&s->tick_mu);
  }
  pthread_mutex_unlock(&s->tick_mu);
  return NULL;
}

/* Stops the tick thread (a tick in progress finishes first) and closes its
 * VM after running the shutdown hook there too. */
static void tick_stop(server *s) {
  if (s->tick_started) {
    pthread_mutex_lock(&s->tick_mu);
    s->tick_stop = 1;
    pthread_cond_signal(&s->tick_cv);
    pthread_mutex_unlock(&s->tick_mu);
    pthread_join(s->tick_thread, NULL);
    s->tick_started = 0;
  }
  if (s->tickL != NULL) {
    lua_State *L = s->tickL;
    lua_settop(L, 2);
    lua_pushcfunction(L, oflua__msgh);
    lua_pushcfunction(L, run_shutdown);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 3) != LUA_OK)
      log_json("error", "shutdown_error", 0, "error", filtered_error(L), NULL, NULL);
    lua_close(L);
    s->tickL = NULL;
    pthread_cond_destroy(&s->tick_cv);
    pthread_mutex_destroy(&s->tick_mu);
  }
}

static void server_stop(server *s, double grace) {
  if (s->stopped) return;
  atomic_store(&s->stopping, 1);
  tick_stop(s);
  MHD_socket lsock = MHD_INVALID_SOCKET;
  if (s->daemon != NULL) {
    lsock = MHD_quiesce_daemon(s->daemon);
    double deadline = mono_now() + grace;
    while (atomic_load(&s->inflight) > 0 && mono_now() < deadline) sleep_s(0.005);
    MHD_stop_daemon(s->daemon); /* joins the threads: no VM is in use after this */
    s->daemon = NULL;
    if (lsock != MHD_INVALID_SOCKET) close(lsock);
  }
  close_workers(s);
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
  double deadline = timeout >= 0 ? mono_now() + timeout : 0;
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
      double left = deadline - mono_now();
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
    lua_pushcfunction(w->L, load_worker);
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
      lua_pushcfunction(s->tickL, load_worker);
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
    int rc = pthread_create(&s->tick_thread, NULL, tick_main, s);
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
  static const luaL_Reg sd_methods[] = {{"get", sd_lua_get},       {"set", sd_lua_set},
                                        {"add", sd_lua_add},       {"incr", sd_lua_incr},
                                        {"delete", sd_lua_delete}, {"keys", sd_lua_keys},
                                        {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"listen", server_listen},
                                   {"shared", server_shared},
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
  if (luaL_newmetatable(L, SHARED_MT)) {
    luaL_newlib(L, sd_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sd_lua_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushstring(L, MHD_get_version());
  lua_setfield(L, -2, "mhd_version");
  lua_pushlightuserdata(L, (void *)&drop_sentinel);
  lua_setfield(L, -2, "DROP");
  return 1;
}
