/*
 * http_client.c: oflua.http, an HTTP/1.1 and HTTP/2 client on libcurl.
 *
 * API (this comment block is the module's documentation)
 * ------------------------------------------------------
 * http.request(req) -> resp | nil, err
 *   req fields (any other field is an error, so a typo does not pass silently):
 *     url                 string, http:// or https:// only (required)
 *     method              string, default "GET"; "HEAD" asks for headers only
 *     headers             table {name = value}; a value may be a string, a
 *                         number or an array of strings (the header is sent
 *                         once per element); "" sends an empty header
 *     body                string or nil; POST, PUT and PATCH without a body
 *                         send Content-Length: 0
 *     timeout_ms          whole request, default 30000
 *     connect_timeout_ms  default 10000
 *     max_body            response body limit in bytes, default 16 MiB
 *     follow_redirects    boolean, default false: at most 10 redirects, http(s)
 *                         only; https -> http is refused (kind "invalid"); on
 *                         a change of origin (scheme, host, port) the
 *                         request's own headers are dropped except Accept,
 *                         Accept-Language, User-Agent and Content-Type (so
 *                         apikey or x-connection-id never reach another
 *                         host); 301/302 turn a POST, 303 anything but HEAD,
 *                         into a GET without body; 307/308 repeat the request
 *     reuse               boolean: may this request go over a kept-alive
 *                         connection? Default true for GET, HEAD, OPTIONS, PUT
 *                         and DELETE, false for POST, PATCH and others (on a
 *                         reused connection found closed libcurl re-sends the
 *                         request, which must not happen to a POST)
 *     progress            function(dlnow, dltotal) called while the response
 *                         body arrives (dltotal is 0 when unknown); an error
 *                         raised in it aborts the call and is re-raised
 *   resp = {status = 200, body = "...", headers = {["content-type"] = ...},
 *           header_list = {{"set-cookie", "a=1"}, {"set-cookie", "b=2"}, ...}}
 *     headers: names lower-cased; a header that appears several times has its
 *     values joined with ", " in arrival order (use header_list for
 *     Set-Cookie, whose values may themselves contain commas).
 *     header_list: every header line of the final response, in order, with
 *     lower-cased names; nothing is merged or lost.
 *   An HTTP error status (404, 500, ...) is a response, not an error.
 *   err = {kind = ..., message = "...", curl_code = n (when curl reported it)}
 *     with __tostring -> "<kind>: <message>". kind is one of
 *       invalid    the request cannot be sent: bad URL, a scheme other than
 *                  http/https, CR/LF/NUL in a header or method
 *       dns        the host name does not resolve (or resolving timed out)
 *       connect    the request was not sent: connection refused or
 *                  unreachable, or a timeout passed before the connection
 *                  (and TLS handshake) was ready; so retrying is safe for
 *                  any method
 *       tls        TLS handshake or certificate verification failed
 *       timeout    timeout_ms passed after the request was sent (a server
 *                  that does not answer or sends its body too slowly)
 *       reset      the connection broke or the peer sent something that is
 *                  not HTTP (closed mid-response, reset, garbage); any other
 *                  transport failure is also reported as reset, with curl's
 *                  message
 *       too_large  the response body (or header block) exceeds max_body
 *   Wrong argument types and unknown fields raise a Lua error.
 *
 * http.request_many({req1, req2, ...}[, {max_parallel = 32}]) -> results
 *   Runs the requests in parallel (curl multi; at most max_parallel in
 *   flight, the rest start as others finish; at most 1000 requests per call)
 *   and returns an array in the order of the requests; each element is
 *       {resp, response = resp}        on success
 *       {nil, err, error = err}        on failure
 *   so both `local resp, err = table.unpack(results[i])` and
 *   `results[i].response` / `results[i].error` work.
 *
 * http.curl_version   libcurl's version string (used by `oflua version`)
 * http.defaults       {timeout_ms, connect_timeout_ms, max_body}: the values used
 *                     when a field is absent (for display; changing them has
 *                     no effect)
 *
 * Design
 * ------
 * Every request, single or many, runs on one curl multi handle per lua_State
 * (kept in the registry, freed by __gc when the state closes). The multi
 * handle owns the connection and DNS caches, so consecutive calls from the
 * same state reuse keep-alive connections; states on different threads never
 * share a handle. Easy handles are pooled per state to save their setup.
 *
 * A transfer's C resources (easy handle, header list, response buffers) live
 * in a userdata with __gc, so a Lua error at any point (a memory error while
 * building the response, a progress callback raising) cannot leak them. No
 * Lua API call that can raise runs inside a curl callback except through
 * lua_pcall.
 *
 * TLS verification stays on (libcurl's default, never changed here); proxy
 * environment variables are honoured as libcurl does by default. Request
 * headers are never logged or put into error messages. curl_global_init runs
 * once per process under pthread_once: the server runs VMs on several threads
 * that may all load this module.
 */
#include "internal.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define STATE_KEY "oflua.http.state.instance" /* registry slot of this state's http_state */
#define STATE_MT "oflua.http.state"
#define XFER_MT "oflua.http.transfer"
#define ERR_MT "oflua.http.error"

#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_BODY (16 * 1024 * 1024)
#define DEFAULT_MAX_PARALLEL 32
#define MAX_HEADER_BYTES (256 * 1024) /* response header block */
#define MAX_REDIRECTS 10L
#define POOL_MAX 32
#define MAX_MANY 1000 /* requests per request_many call */

/* ---- process-wide init ------------------------------------------------------ */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- types ------------------------------------------------------------------ */

typedef struct {
  char *p;
  size_t len, cap;
} buf_t;

typedef struct http_state http_state;

typedef struct transfer {
  http_state *st; /* NULL once detached */
  struct transfer *prev, *next; /* in st->xfers */
  CURL *easy;
  int in_multi;
  struct curl_slist *req_headers;
  buf_t body, head;
  curl_off_t max_body;
  int too_large_body, too_large_head, oom;
  const char *invalid; /* static reason when the request cannot be sent */
  int done;
  CURLcode result;
  int follow, redirects; /* follow_redirects, and how many were followed */
  /* progress callback: a function at stack index progress_idx of L */
  lua_State *L;
  int progress_idx;
  curl_off_t last_now, last_total;
  char errbuf[CURL_ERROR_SIZE];
} transfer;

struct http_state {
  CURLM *multi;
  CURL *pool[POOL_MAX];
  int npool;
  transfer *xfers; /* every live transfer, so __gc of the state can detach them */
  int busy;        /* inside the multi loop (a progress callback must not re-enter) */
  int cb_failed;   /* a progress callback raised; its error is in cb_err_idx */
  int cb_err_idx;
};

/* ---- buffers ---------------------------------------------------------------- */

static int buf_add(buf_t *b, const char *p, size_t n) {
  if (n == 0) return 0;
  if (n > SIZE_MAX - b->len) return -1;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n) {
      if (cap > SIZE_MAX / 2) {
        cap = b->len + n;
        break;
      }
      cap *= 2;
    }
    char *np = realloc(b->p, cap);
    if (np == NULL) return -1;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

static void buf_free(buf_t *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* ---- state and transfers ------------------------------------------------------ */

static void xfer_release(transfer *t) {
  http_state *st = t->st;
  if (st != NULL) {
    if (t->easy != NULL) {
      if (t->in_multi) curl_multi_remove_handle(st->multi, t->easy);
      if (st->npool < POOL_MAX) {
        /* Back to the pool without curl_easy_reset (which would redo the
         * handle's whole setup on the next request): configure() sets every
         * per-request option again. Pointers into this transfer that curl
         * keeps are cleared; the rest are only read during a transfer. */
        curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, (char *)NULL);
        curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, (char *)NULL);
        st->pool[st->npool++] = t->easy;
      } else {
        curl_easy_cleanup(t->easy);
      }
    }
    if (t->prev != NULL) t->prev->next = t->next;
    else st->xfers = t->next;
    if (t->next != NULL) t->next->prev = t->prev;
  } else if (t->easy != NULL) {
    curl_easy_cleanup(t->easy);
  }
  t->st = NULL;
  t->prev = t->next = NULL;
  t->easy = NULL;
  t->in_multi = 0;
  curl_slist_free_all(t->req_headers);
  t->req_headers = NULL;
  buf_free(&t->body);
  buf_free(&t->head);
}

static int xfer_gc(lua_State *L) {
  xfer_release(lua_touserdata(L, 1));
  return 0;
}

static int state_gc(lua_State *L) {
  http_state *st = lua_touserdata(L, 1); /* private metatable: only ever our userdata */
  while (st->xfers != NULL) xfer_release(st->xfers); /* unlinks itself */
  for (int i = 0; i < st->npool; i++) curl_easy_cleanup(st->pool[i]);
  st->npool = 0;
  if (st->multi != NULL) curl_multi_cleanup(st->multi);
  st->multi = NULL;
  return 0;
}

static http_state *get_state(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY) == LUA_TUSERDATA) {
    http_state *st = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return st;
  }
  lua_pop(L, 1);
  http_state *st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  luaL_setmetatable(L, STATE_MT);
  st->multi = curl_multi_init();
  if (st->multi == NULL) luaL_error(L, "oflua.http: curl_multi_init failed");
  lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  return st;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud);
static size_t on_header(char *p, size_t size, size_t n, void *ud);
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow);

/* A new easy handle with the options that are the same for every request. */
static CURL *easy_new(void) {
  CURL *e = curl_easy_init();
  if (e == NULL) return NULL;
  if (curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK || /* several threads */
      curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_MAXREDIRS, MAX_REDIRECTS) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L) != CURLE_OK ||
      /* sent unless the request has its own User-Agent header */
      curl_easy_setopt(e, CURLOPT_USERAGENT, "oflua/" OFLUA_VERSION) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress) != CURLE_OK) {
    curl_easy_cleanup(e);
    return NULL;
  }
  return e;
}

/* A new transfer userdata on the stack, linked into st, with an easy handle. */
static transfer *xfer_new(lua_State *L, http_state *st) {
  transfer *t = lua_newuserdatauv(L, sizeof *t, 1); /* uservalue 1: the request body */
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, XFER_MT);
  t->st = st;
  t->next = st->xfers;
  if (st->xfers != NULL) st->xfers->prev = t;
  st->xfers = t;
  t->easy = st->npool > 0 ? st->pool[--st->npool] : easy_new();
  if (t->easy == NULL) luaL_error(L, "oflua.http: cannot create a curl handle");
  t->last_now = t->last_total = -1;
  return t;
}

/* ---- errors ----------------------------------------------------------------- */

static int err_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "error"), luaL_optstring(L, -1, "?"));
  return 1;
}

static void push_err(lua_State *L, const char *kind, const char *msg, int curl_code) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  if (curl_code >= 0) {
    lua_pushinteger(L, curl_code);
    lua_setfield(L, -2, "curl_code");
  }
  luaL_setmetatable(L, ERR_MT);
}

static const char *kind_of(CURLcode rc) {
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return "dns";
    case CURLE_COULDNT_CONNECT:
      return "connect";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
      return "tls";
    case CURLE_FILESIZE_EXCEEDED:
      return "too_large";
    case CURLE_URL_MALFORMAT:
      return "invalid";
    default:
      /* includes CURLE_UNSUPPORTED_PROTOCOL: the scheme was checked before
       * sending, so this comes from the peer (an HTTP/0.9 reply, a redirect
       * to another scheme), not from the caller */
      return "reset";
  }
}

/* Pushes nil, err for a failed transfer (or raises for out of memory). */
static void push_xfer_error(lua_State *L, transfer *t) {
  if (t->invalid != NULL) {
    push_err(L, "invalid", t->invalid, -1);
    return;
  }
  if (t->oom) luaL_error(L, "oflua.http: not enough memory for the response");
  if (t->too_large_body || t->result == CURLE_FILESIZE_EXCEEDED) {
    char msg[96];
    snprintf(msg, sizeof msg, "response body exceeds max_body (%lld bytes)",
             (long long)t->max_body);
    push_err(L, "too_large", msg, (int)t->result);
    return;
  }
  if (t->too_large_head) {
    push_err(L, "too_large", "response header block exceeds 256 KiB", (int)t->result);
    return;
  }
  if (t->result == CURLE_OUT_OF_MEMORY) luaL_error(L, "oflua.http: curl is out of memory");
  const char *msg = t->errbuf[0] != '\0' ? t->errbuf : curl_easy_strerror(t->result);
  const char *kind = kind_of(t->result);
  if (t->result == CURLE_OPERATION_TIMEDOUT) {
    /* No TCP connection yet: the request was never sent, which is what
     * "connect" promises a retry policy (safe to retry any method). */
    long sent = 0;
    curl_off_t resolved = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK && sent == 0) {
      /* name lookup time stays 0 until the name resolved (it is > 0 even
       * for an IP address), so a DNS timeout is "dns" */
      kind = curl_easy_getinfo(t->easy, CURLINFO_NAMELOOKUP_TIME_T, &resolved) == CURLE_OK &&
                     resolved == 0
                 ? "dns"
                 : "connect";
    }
  }
  push_err(L, kind, msg, (int)t->result);
}

/* ---- curl callbacks (no Lua call that can raise, except under pcall) -------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  transfer *t = ud;
  size_t len = size * n;
  if ((curl_off_t)(t->body.len + len) > t->max_body || t->body.len + len < t->body.len) {
    t->too_large_body = 1;
    return 0; /* curl fails with CURLE_WRITE_ERROR */
  }
  if (buf_add(&t->body, p, len) != 0) {
    t->oom = 1;
    return 0;
  }
  return len;
}

/* One complete header line per call. A status line starts a new head: only
 * the final response's head is kept (after 1xx, or redirects when followed). */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  transfer *t = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    t->head.len = 0;
    return len;
  }
  if (t->head.len + len > MAX_HEADER_BYTES) {
    t->too_large_head = 1;
    return 0;
  }
  if (buf_add(&t->head, p, len) != 0) {
    t->oom = 1;
    return 0;
  }
  return len;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  transfer *t = ud;
  http_state *st = t->st;
  lua_State *L = t->L;
  if (st == NULL || L == NULL || st->cb_failed) return 1;
  if (dlnow == t->last_now && dltotal == t->last_total) return 0;
  t->last_now = dlnow;
  t->last_total = dltotal;
  if (!lua_checkstack(L, 4)) return 0; /* skip a report rather than fail */
  lua_pushvalue(L, t->progress_idx);
  lua_pushinteger(L, (lua_Integer)dlnow);
  lua_pushinteger(L, (lua_Integer)dltotal);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lua_replace(L, st->cb_err_idx);
    st->cb_failed = 1;
    return 1; /* abort: CURLE_ABORTED_BY_CALLBACK */
  }
  return 0;
}

/* ---- request parsing ---------------------------------------------------------- */

static int is_tchar(unsigned char c) {
  /* RFC 9110 token characters */
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_token(const char *s, size_t len) {
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++)
    if (!is_tchar((unsigned char)s[i])) return 0;
  return 1;
}

static int has_ctl_break(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 1;
  return 0;
}

/* Errors in the request table name the request in request_many. */
typedef struct {
  const char *fn;
  int index; /* 0 for request() */
} where_t;

static int field_error(lua_State *L, where_t w, const char *field, const char *expected) {
  const char *got = luaL_typename(L, -1);
  if (w.index > 0)
    return luaL_error(L, "bad field '%s' in request #%d to '%s' (%s expected, got %s)", field,
                      w.index, w.fn, expected, got);
  return luaL_error(L, "bad field '%s' in request to '%s' (%s expected, got %s)", field, w.fn,
                    expected, got);
}

/* Reads an optional positive integer field of the table at idx. */
static lua_Integer opt_int_field(lua_State *L, int idx, const char *name, lua_Integer def,
                                 lua_Integer max, where_t w) {
  lua_Integer v = def;
  int isint = 0;
  if (lua_getfield(L, idx, name) != LUA_TNIL) {
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || lua_type(L, -1) != LUA_TNUMBER || v <= 0 || v > max) {
      char what[64];
      snprintf(what, sizeof what, "integer between 1 and %lld", (long long)max);
      field_error(L, w, name, what);
    }
  }
  lua_pop(L, 1);
  return v;
}

static const char *const known_fields[] = {
    "url",        "method",             "headers",  "body",     "timeout_ms",
    "connect_timeout_ms", "max_body", "follow_redirects", "progress", "reuse", NULL};

static void check_fields(lua_State *L, int idx, where_t w) {
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    int ok = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      for (int i = 0; known_fields[i] != NULL && !ok; i++) ok = strcmp(k, known_fields[i]) == 0;
      if (!ok) {
        if (w.index > 0)
          luaL_error(L, "unknown field '%s' in request #%d to '%s'", k, w.index, w.fn);
        luaL_error(L, "unknown field '%s' in request to '%s'", k, w.fn);
      }
    } else {
      luaL_error(L, "request to '%s' has a non-string key (%s)", w.fn, luaL_typename(L, -1));
    }
  }
}

/* Appends a copy of line to *l; -1 (the list unchanged) when out of memory. */
static int slist_add(struct curl_slist **l, const char *line) {
  struct curl_slist *n = curl_slist_append(*l, line);
  if (n == NULL) return -1;
  *l = n;
  return 0;
}

/* Appends "name: value" to the request header list (copied by curl). */
static int add_header(transfer *t, const char *name, size_t nlen, const char *val, size_t vlen,
                      lua_State *L) {
  if (!is_token(name, nlen)) {
    t->invalid = "header name is not a valid HTTP token";
    return -1;
  }
  if (has_ctl_break(val, vlen)) {
    t->invalid = "header value contains CR, LF or NUL";
    return -1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, name, nlen);
  /* "name;" is curl's way to send an empty value ("name:" would remove it) */
  luaL_addstring(&b, vlen == 0 ? ";" : ": ");
  luaL_addlstring(&b, val, vlen);
  luaL_pushresult(&b);
  struct curl_slist *l = curl_slist_append(t->req_headers, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (l == NULL) luaL_error(L, "oflua.http: not enough memory");
  t->req_headers = l;
  return 0;
}

static int name_is(const char *name, size_t nlen, const char *want) {
  size_t wl = strlen(want);
  if (nlen != wl) return 0;
  for (size_t i = 0; i < nlen; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (c != (unsigned char)want[i]) return 0;
  }
  return 1;
}

/* Fills the header list from the headers field (table at idx). Sets
 * t->invalid for bad names/values; raises for wrong types. Reports whether
 * Content-Type / Expect were given. */
static void read_headers(lua_State *L, int idx, transfer *t, where_t w, int *has_ctype,
                         int *has_expect) {
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pushvalue(L, -2);
      field_error(L, w, "headers", "table with string keys");
    }
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (name_is(name, nlen, "content-type")) *has_ctype = 1;
    if (name_is(name, nlen, "expect")) *has_expect = 1;
    int vt = lua_type(L, -1);
    if (vt == LUA_TSTRING || vt == LUA_TNUMBER) {
      size_t vlen;
      const char *val = lua_tolstring(L, -1, &vlen); /* converts a number in place: ok, it is the value */
      if (t->invalid == NULL) add_header(t, name, nlen, val, vlen, L);
    } else if (vt == LUA_TTABLE) {
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        int et = lua_geti(L, -1, i);
        if (et != LUA_TSTRING && et != LUA_TNUMBER) field_error(L, w, "headers", "string values");
        size_t vlen;
        const char *val = lua_tolstring(L, -1, &vlen);
        if (t->invalid == NULL) add_header(t, name, nlen, val, vlen, L);
        lua_pop(L, 1);
      }
    } else {
      field_error(L, w, "headers", "string, number or array of strings as values");
    }
    lua_pop(L, 1);
  }
}

/* A light syntax check, so that a bad URL is "invalid" before anything is
 * sent: scheme http or https (any case), no spaces or control characters, a
 * non-empty host and a numeric port. libcurl parses the URL again (a
 * malformed URL it finds is also reported as invalid). */
static void check_url(transfer *t, const char *url, size_t len) {
  if (strlen(url) != len) {
    t->invalid = "bad URL: contains a NUL byte";
    return;
  }
  size_t skip = 0;
  if (len >= 7 && strncasecmp(url, "http://", 7) == 0) skip = 7;
  else if (len >= 8 && strncasecmp(url, "https://", 8) == 0) skip = 8;
  else {
    size_t i = 0;
    while (i < len && (isalnum((unsigned char)url[i]) || strchr("+-.", url[i]) != NULL)) i++;
    t->invalid = i > 0 && i < len && url[i] == ':' && isalpha((unsigned char)url[0])
                     ? "unsupported URL scheme (only http and https)"
                     : "bad URL: expected http://host/... or https://host/...";
    return;
  }
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)url[i];
    if (c <= 0x20 || c == 0x7f) {
      t->invalid = "bad URL: contains spaces or control characters";
      return;
    }
  }
  const char *auth = url + skip, *end = auth + strcspn(auth, "/?#");
  const char *at = NULL;
  for (const char *c = auth; c < end; c++)
    if (*c == '@') at = c;
  const char *host = at != NULL ? at + 1 : auth, *hend;
  if (host < end && *host == '[') {
    hend = memchr(host, ']', (size_t)(end - host));
    if (hend == NULL) {
      t->invalid = "bad URL: unterminated IPv6 address";
      return;
    }
    hend++;
  } else {
    hend = memchr(host, ':', (size_t)(end - host));
    if (hend == NULL) hend = end;
  }
  if (hend == host) {
    t->invalid = "bad URL: no host";
    return;
  }
  if (hend < end) {
    if (*hend != ':') {
      t->invalid = "bad URL: bad host";
      return;
    }
    for (const char *c = hend + 1; c < end; c++)
      if (!isdigit((unsigned char)*c)) {
        t->invalid = "bad URL: bad port";
        return;
      }
  }
}

#define SETOPT(opt, val)                                                         \
  do {                                                                           \
    if (curl_easy_setopt(e, opt, val) != CURLE_OK) {                             \
      t->invalid = "libcurl refused an option (" #opt ")";                       \
      return;                                                                    \
    }                                                                            \
  } while (0)

/* Builds transfer t (userdata at stack index tidx) from the request table at
 * index ridx. Type errors raise; a request that cannot be sent gets
 * t->invalid. The progress function, if any, is left at t->progress_idx by
 * the caller (see prepare()). */
static void configure(lua_State *L, transfer *t, int tidx, int ridx, where_t w) {
  CURL *e = t->easy;
  check_fields(L, ridx, w);

  if (lua_getfield(L, ridx, "url") != LUA_TSTRING) field_error(L, w, "url", "string");
  size_t ulen;
  const char *url = lua_tolstring(L, -1, &ulen);
  check_url(t, url, ulen);
  if (t->invalid == NULL) SETOPT(CURLOPT_URL, url); /* copied by curl */
  lua_pop(L, 1);

  const char *method = "GET";
  size_t mlen = 3;
  int mt = lua_getfield(L, ridx, "method");
  if (mt == LUA_TSTRING) method = lua_tolstring(L, -1, &mlen);
  else if (mt != LUA_TNIL) field_error(L, w, "method", "string");
  if (!is_token(method, mlen) && t->invalid == NULL) t->invalid = "method is not a valid HTTP token";
  /* method stays on the stack (kept alive) until the end */

  size_t blen = 0;
  const char *body = NULL;
  int bt = lua_getfield(L, ridx, "body");
  if (bt == LUA_TSTRING) {
    body = lua_tolstring(L, -1, &blen);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, tidx, 1); /* curl reads it during the transfer */
  } else if (bt != LUA_TNIL) {
    field_error(L, w, "body", "string");
  }
  lua_pop(L, 1);

  int has_ctype = 0, has_expect = 0;
  int ht = lua_getfield(L, ridx, "headers");
  if (ht == LUA_TTABLE) read_headers(L, lua_gettop(L), t, w, &has_ctype, &has_expect);
  else if (ht != LUA_TNIL) field_error(L, w, "headers", "table");
  lua_pop(L, 1);

  long timeout = (long)opt_int_field(L, ridx, "timeout_ms", DEFAULT_TIMEOUT_MS, INT32_MAX, w);
  long ctimeout = (long)opt_int_field(L, ridx, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS,
                                      INT32_MAX, w);
  t->max_body = (curl_off_t)opt_int_field(L, ridx, "max_body", DEFAULT_MAX_BODY,
                                          (lua_Integer)1 << 40, w);
  int follow = 0;
  int ft = lua_getfield(L, ridx, "follow_redirects");
  if (ft == LUA_TBOOLEAN) follow = lua_toboolean(L, -1);
  else if (ft != LUA_TNIL) field_error(L, w, "follow_redirects", "boolean");
  lua_pop(L, 1);

  int pt = lua_getfield(L, ridx, "progress");
  if (pt != LUA_TNIL && pt != LUA_TFUNCTION) field_error(L, w, "progress", "function");
  lua_pop(L, 1);

  /* libcurl sends a request again, once, when a kept-alive connection it
   * reused turns out closed before any answer. The server may have acted on
   * the first copy, so non-idempotent methods take a fresh connection (on
   * which libcurl never retries) unless the caller says reuse = true. */
  int reuse = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 ||
              strcmp(method, "OPTIONS") == 0 || strcmp(method, "PUT") == 0 ||
              strcmp(method, "DELETE") == 0;
  int rt = lua_getfield(L, ridx, "reuse");
  if (rt == LUA_TBOOLEAN) reuse = lua_toboolean(L, -1);
  else if (rt != LUA_TNIL) field_error(L, w, "reuse", "boolean");
  lua_pop(L, 1);

  if (t->invalid != NULL) {
    lua_pop(L, 1); /* method */
    return;
  }

  /* Every per-request option is set on every request: pooled handles are
   * not reset. First back to a plain GET without a body. */
  SETOPT(CURLOPT_POSTFIELDS, (char *)NULL);
  SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
  SETOPT(CURLOPT_CUSTOMREQUEST, (char *)NULL);
  SETOPT(CURLOPT_HTTPGET, 1L);
  int has_body = body != NULL;
  if (strcmp(method, "HEAD") == 0) {
    SETOPT(CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0 || has_body) {
    int wants_empty_body = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                           strcmp(method, "PATCH") == 0;
    if (has_body || wants_empty_body) {
      SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
      SETOPT(CURLOPT_POSTFIELDS, has_body ? body : "");
      /* POSTFIELDS implies a form Content-Type and, for large bodies,
       * Expect: 100-continue (an extra round trip): drop both unless given */
      /* curl_slist_append returns NULL on failure and leaves the list as it
       * was: keep it in t (freed by __gc) rather than lose it */
      if (!has_ctype && slist_add(&t->req_headers, "Content-Type:") != 0)
        luaL_error(L, "oflua.http: not enough memory");
      if (!has_expect && slist_add(&t->req_headers, "Expect:") != 0)
        luaL_error(L, "oflua.http: not enough memory");
    }
    if (strcmp(method, "POST") != 0) SETOPT(CURLOPT_CUSTOMREQUEST, method);
  }
  lua_pop(L, 1); /* method */

  SETOPT(CURLOPT_HTTPHEADER, t->req_headers);
  SETOPT(CURLOPT_TIMEOUT_MS, timeout);
  SETOPT(CURLOPT_CONNECTTIMEOUT_MS, ctimeout);
  SETOPT(CURLOPT_MAXFILESIZE_LARGE, t->max_body);
  /* Redirects are followed by run() itself (see follow_redirect), never by
   * libcurl, which would send every custom header to any host. */
  SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  t->follow = follow;
  t->redirects = 0;
  SETOPT(CURLOPT_FRESH_CONNECT, reuse ? 0L : 1L);
  SETOPT(CURLOPT_WRITEDATA, t);
  SETOPT(CURLOPT_HEADERDATA, t);
  SETOPT(CURLOPT_XFERINFODATA, t);
  SETOPT(CURLOPT_NOPROGRESS, 1L); /* prepare() turns it on for a progress callback */
  SETOPT(CURLOPT_ERRORBUFFER, t->errbuf);
  SETOPT(CURLOPT_PRIVATE, t);
}

/* Creates and configures the transfer for the request table at ridx; pushes
 * the transfer userdata and, if the request has a progress function, the
 * function (2 slots: transfer, progress-or-nil). */
static transfer *prepare(lua_State *L, http_state *st, int ridx, where_t w) {
  luaL_checkstack(L, 8, "too many requests");
  transfer *t = xfer_new(L, st);
  int tidx = lua_gettop(L);
  configure(L, t, tidx, ridx, w);
  lua_settop(L, tidx); /* configure may return early with values pushed */
  lua_getfield(L, ridx, "progress");
  if (t->invalid == NULL && lua_type(L, -1) == LUA_TFUNCTION) {
    t->progress_idx = lua_gettop(L);
    if (curl_easy_setopt(t->easy, CURLOPT_NOPROGRESS, 0L) != CURLE_OK)
      t->invalid = "libcurl refused the progress callback";
  }
  return t;
}

/* ---- the multi loop ------------------------------------------------------------- */

/* ---- redirects -------------------------------------------------------------------
 * follow_redirects is implemented here rather than with CURLOPT_FOLLOWLOCATION:
 * libcurl keeps sending every custom header (apikey, x-connection-id, ...)
 * to whatever host a Location names (it only drops Authorization and Cookie)
 * and would follow https -> http. Policy:
 *   - at most MAX_REDIRECTS (10) redirects, http and https only;
 *   - https -> http is refused (error kind "invalid");
 *   - when the origin changes (scheme, host or port), every header the caller
 *     set is dropped except the harmless ones in keep_across_origins;
 *   - 301, 302 and 303 turn a POST (303: any method but HEAD) into a GET
 *     without a body, as browsers and libcurl do; 307 and 308 repeat the
 *     method and body. */

typedef struct {
  char *scheme, *host, *port;
} origin_t;

static void origin_free(origin_t *o) {
  curl_free(o->scheme);
  curl_free(o->host);
  curl_free(o->port);
}

static int origin_of(const char *url, origin_t *o) {
  memset(o, 0, sizeof *o);
  CURLU *u = curl_url();
  if (u == NULL) return -1;
  int ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_SCHEME, &o->scheme, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &o->host, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_PORT, &o->port, CURLU_DEFAULT_PORT) == CURLUE_OK;
  curl_url_cleanup(u);
  if (!ok) origin_free(o);
  return ok ? 0 : -1;
}

/* 0: same origin, 1: another origin (drop the caller's headers), -1: refused
 * with *why set. */
static int redirect_check(const char *from, const char *to, const char **why) {
  origin_t a, b;
  if (origin_of(from, &a) != 0) {
    *why = "redirect from a URL that does not parse";
    return -1;
  }
  if (origin_of(to, &b) != 0) {
    origin_free(&a);
    *why = "redirect to a URL that does not parse";
    return -1;
  }
  int rc = 0;
  if (strcasecmp(b.scheme, "http") != 0 && strcasecmp(b.scheme, "https") != 0) {
    *why = "redirect to a scheme other than http or https refused";
    rc = -1;
  } else if (strcasecmp(a.scheme, "https") == 0 && strcasecmp(b.scheme, "http") == 0) {
    *why = "redirect from https to http refused";
    rc = -1;
  } else if (strcasecmp(a.scheme, b.scheme) != 0 || strcasecmp(a.host, b.host) != 0 ||
             strcmp(a.port, b.port) != 0) {
    rc = 1;
  }
  origin_free(&a);
  origin_free(&b);
  return rc;
}

static const char *const keep_across_origins[] = {
    "accept", "accept-language", "user-agent", "content-type", "expect", NULL};

/* The request header list without the caller's headers that may not go to
 * another origin. 0 on success, -1 when out of memory (the old list kept). */
static int drop_headers(transfer *t) {
  struct curl_slist *kept = NULL;
  for (struct curl_slist *l = t->req_headers; l != NULL; l = l->next) {
    size_t nlen = strcspn(l->data, ":;");
    int keep = 0;
    for (const char *const *k = keep_across_origins; *k != NULL && !keep; k++)
      keep = strlen(*k) == nlen && strncasecmp(l->data, *k, nlen) == 0;
    if (keep && slist_add(&kept, l->data) != 0) {
      curl_slist_free_all(kept);
      return -1;
    }
  }
  if (curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, kept) != CURLE_OK) {
    curl_slist_free_all(kept);
    return -1;
  }
  curl_slist_free_all(t->req_headers);
  t->req_headers = kept;
  return 0;
}

/* After a finished transfer: when it was a redirect to follow, set the easy
 * handle up for the next hop and return 1 (the caller adds it to the multi
 * handle again); 0 when the response is final; -1 with t->invalid set when
 * the redirect is refused. */
static int follow_redirect(transfer *t) {
  if (!t->follow || t->result != CURLE_OK) return 0;
  long status = 0;
  char *to = NULL, *from = NULL;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status < 300 || status > 399) return 0;
  if (curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &to) != CURLE_OK || to == NULL) return 0;
  if (t->redirects >= MAX_REDIRECTS) {
    t->invalid = "too many redirects (more than 10)";
    return -1;
  }
  curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &from);
  const char *why = NULL;
  int rc = redirect_check(from != NULL ? from : "", to, &why);
  if (rc < 0) {
    t->invalid = why;
    return -1;
  }
  /* CURLINFO_REDIRECT_URL points into the handle: copy it before setopt */
  char *url = strdup(to);
  if (url == NULL) {
    t->invalid = "not enough memory for a redirect";
    return -1;
  }
  char *method = NULL;
  curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_METHOD, &method);
  int is_post = method != NULL && strcmp(method, "POST") == 0;
  int is_head = method != NULL && strcmp(method, "HEAD") == 0;
  int to_get = ((status == 301 || status == 302) && is_post) || (status == 303 && !is_head);
  int ok = curl_easy_setopt(t->easy, CURLOPT_URL, url) == CURLE_OK;
  free(url);
  if (ok && to_get) {
    ok = curl_easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, (char *)NULL) == CURLE_OK &&
         curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L) == CURLE_OK;
  }
  if (ok && rc == 1) ok = drop_headers(t) == 0;
  if (!ok) {
    t->invalid = "libcurl refused the redirect";
    return -1;
  }
  t->redirects++;
  t->body.len = 0;
  t->head.len = 0;
  t->last_now = t->last_total = -1;
  return 1;
}

/* Runs transfers ts[0..n) (invalid ones are skipped) with at most
 * max_parallel in flight. On return every transfer is done or invalid, or
 * st->cb_failed is set (a progress callback raised). Returns NULL on success
 * or a static message if the multi interface itself failed. */
static const char *run(lua_State *L, http_state *st, transfer **ts, int n, int max_parallel) {
  int next = 0, inflight = 0, pending = 0;
  for (int i = 0; i < n; i++) {
    ts[i]->L = L;
    if (ts[i]->invalid == NULL) pending++;
  }
  const char *fail = NULL;
  st->busy = 1;
  st->cb_failed = 0;
  while (pending > 0 && !st->cb_failed) {
    while (inflight < max_parallel && next < n) {
      transfer *t = ts[next++];
      if (t->invalid != NULL) continue;
      if (curl_multi_add_handle(st->multi, t->easy) != CURLM_OK) {
        t->invalid = "libcurl could not start the transfer";
        pending--;
        continue;
      }
      t->in_multi = 1;
      inflight++;
    }
    if (pending == 0) break;
    int still = 0;
    CURLMcode mc = curl_multi_perform(st->multi, &still);
    if (mc != CURLM_OK) {
      fail = curl_multi_strerror(mc);
      break;
    }
    int finished = 0, q;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(st->multi, &q)) != NULL) {
      if (msg->msg != CURLMSG_DONE) continue;
      char *priv = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
      transfer *t = (transfer *)(void *)priv;
      CURLcode rc = msg->data.result; /* msg is invalid after remove_handle */
      curl_multi_remove_handle(st->multi, msg->easy_handle);
      if (t == NULL) continue;
      t->in_multi = 0;
      t->result = rc;
      if (follow_redirect(t) == 1) {
        if (curl_multi_add_handle(st->multi, t->easy) == CURLM_OK) {
          t->in_multi = 1;
          continue; /* still in flight, still pending */
        }
        t->invalid = "libcurl could not start the transfer";
      }
      t->done = 1;
      inflight--;
      pending--;
      finished++;
    }
    if (pending == 0 || st->cb_failed) break;
    if (finished > 0 && next < n) continue; /* start the waiting ones first */
    mc = curl_multi_poll(st->multi, NULL, 0, 1000, NULL);
    if (mc != CURLM_OK) {
      fail = curl_multi_strerror(mc);
      break;
    }
  }
  st->busy = 0;
  for (int i = 0; i < n; i++) {
    ts[i]->L = NULL;
    if (ts[i]->in_multi) {
      curl_multi_remove_handle(st->multi, ts[i]->easy);
      ts[i]->in_multi = 0;
    }
  }
  return fail;
}

/* ---- results ------------------------------------------------------------------- */

static void push_response(lua_State *L, transfer *t) {
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, t->body.p != NULL ? t->body.p : "", t->body.len);
  lua_setfield(L, -2, "body");

  /* Pass 1: header_list, one {name, value} per header line. */
  int lines = 0;
  for (size_t i = 0; i < t->head.len; i++) lines += t->head.p[i] == '\n';
  lua_createtable(L, lines, 0);
  int lidx = lua_gettop(L);
  lua_Integer count = 0;
  const char *p = t->head.p, *end = p + t->head.len;
  while (p != NULL && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol != NULL ? eol + 1 : end;
    const char *le = eol != NULL ? eol : end;
    if (le > p && le[-1] == '\r') le--;
    const char *v, *ve = le;
    if ((*p == ' ' || *p == '\t') && count > 0) {
      /* obsolete line folding: the line continues the previous value */
      v = p;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_geti(L, lidx, count);
      lua_geti(L, -1, 2);
      lua_pushliteral(L, " ");
      lua_pushlstring(L, v, (size_t)(ve - v));
      lua_concat(L, 3);
      lua_seti(L, -2, 2);
      lua_pop(L, 1);
      p = next;
      continue;
    }
    const char *colon = le > p ? memchr(p, ':', (size_t)(le - p)) : NULL;
    if (colon == NULL || colon == p) { /* blank line ending the head, or not a header */
      p = next;
      continue;
    }
    lua_createtable(L, 2, 0);
    size_t nlen = (size_t)(colon - p);
    char small[64];
    char *lower = nlen <= sizeof small ? small : lua_newuserdatauv(L, nlen, 0);
    for (size_t i = 0; i < nlen; i++) {
      char ch = p[i];
      lower[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
    }
    lua_pushlstring(L, lower, nlen);
    if (lower != small) lua_remove(L, -2);
    lua_rawseti(L, -2, 1);
    v = colon + 1;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    lua_pushlstring(L, v, (size_t)(ve - v));
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, lidx, ++count);
    p = next;
  }

  /* Pass 2: headers, repeated names joined with ", " in arrival order. */
  lua_createtable(L, 0, (int)(count < 64 ? count : 64));
  int hidx = lua_gettop(L);
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, lidx, i);
    lua_rawgeti(L, -1, 1); /* name */
    lua_pushvalue(L, -1);
    if (lua_rawget(L, hidx) == LUA_TSTRING) { /* previous value */
      lua_pushliteral(L, ", ");
      lua_rawgeti(L, -4, 2);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_rawgeti(L, -2, 2);
    }
    lua_rawset(L, hidx); /* headers[name] = value */
    lua_pop(L, 1);       /* entry */
  }
  lua_setfield(L, -3, "headers");
  lua_setfield(L, -2, "header_list");
}

/* ---- Lua API -------------------------------------------------------------------- */

/* http._redirect_check(from_url, to_url) -> "same_origin" | "other_origin" |
 * nil, reason: the redirect policy of follow_redirect, for the specs (an
 * https -> http redirect cannot be produced on loopback without a trusted
 * certificate). Not part of the API. */
static int http_redirect_check(lua_State *L) {
  const char *from = luaL_checkstring(L, 1), *to = luaL_checkstring(L, 2);
  const char *why = NULL;
  int rc = redirect_check(from, to, &why);
  if (rc < 0) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushstring(L, rc == 0 ? "same_origin" : "other_origin");
  return 1;
}

static int http_request_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  http_state *st = get_state(L);
  if (st->busy) return luaL_error(L, "oflua.http: request called from a progress callback");
  lua_pushnil(L); /* 2: slot for a progress callback's error */
  st->cb_err_idx = 2;
  where_t w = {"request", 0};
  transfer *t = prepare(L, st, 1, w); /* 3: transfer, 4: progress */
  if (t->invalid == NULL) {
    const char *fail = run(L, st, &t, 1, 1);
    if (st->cb_failed) {
      xfer_release(t);
      lua_pushvalue(L, 2);
      return lua_error(L);
    }
    if (fail != NULL) {
      xfer_release(t);
      return luaL_error(L, "oflua.http: curl multi failure: %s", fail);
    }
    if (t->result == CURLE_OK && t->invalid == NULL) {
      push_response(L, t);
      xfer_release(t);
      return 1;
    }
  }
  lua_pushnil(L);
  push_xfer_error(L, t);
  xfer_release(t);
  return 2;
}

static int http_request_many_run(lua_State *L);

/* Both block their thread: in a server handler running inline on an I/O
 * thread, the handler first moves to its worker (oflua__wait_api). */
static int http_request_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return http_request_run(L);
}

static int http_request(lua_State *L) {
  const oflua_wait_api *api = oflua__wait_api(L);
  if (api != NULL) return api->offload(L, http_request_k, 0);
  return http_request_run(L);
}

static int http_request_many_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return http_request_many_run(L);
}

static int http_request_many(lua_State *L) {
  const oflua_wait_api *api = oflua__wait_api(L);
  if (api != NULL) return api->offload(L, http_request_many_k, 0);
  return http_request_many_run(L);
}

static int http_request_many_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int max_parallel = DEFAULT_MAX_PARALLEL;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "max_parallel") != LUA_TNIL) {
      int isint = 0;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      luaL_argcheck(L, isint && v >= 1 && v <= 1024, 2,
                    "max_parallel must be an integer between 1 and 1024");
      max_parallel = (int)v;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  lua_Integer n = luaL_len(L, 1);
  /* every request holds a curl handle (~5 KiB) until the call returns */
  luaL_argcheck(L, n >= 0 && n <= MAX_MANY, 1, "too many requests (at most 1000 per call)");
  http_state *st = get_state(L);
  if (st->busy) return luaL_error(L, "oflua.http: request_many called from a progress callback");
  lua_pushnil(L); /* 2: progress error slot */
  st->cb_err_idx = 2;
  transfer **ts = lua_newuserdatauv(L, sizeof(transfer *) * (size_t)(n > 0 ? n : 1), 0); /* 3 */
  for (lua_Integer i = 1; i <= n; i++) {
    luaL_checkstack(L, 10, "too many requests");
    if (lua_geti(L, 1, i) != LUA_TTABLE)
      return luaL_error(L, "bad request #%d to 'request_many' (table expected, got %s)", (int)i,
                        luaL_typename(L, -1));
    int ridx = lua_gettop(L);
    where_t w = {"request_many", (int)i};
    /* request, transfer and progress function stay on the stack: the
     * callback finds the function by its index */
    ts[i - 1] = prepare(L, st, ridx, w);
  }
  const char *fail = run(L, st, ts, (int)n, max_parallel);
  if (st->cb_failed || fail != NULL) {
    for (lua_Integer i = 0; i < n; i++) xfer_release(ts[i]);
    if (fail != NULL) return luaL_error(L, "oflua.http: curl multi failure: %s", fail);
    lua_pushvalue(L, 2);
    return lua_error(L);
  }
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    transfer *t = ts[i];
    if (t->invalid == NULL && t->result == CURLE_OK) {
      lua_createtable(L, 1, 1);
      push_response(L, t);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, "response");
      lua_rawseti(L, -2, 1);
    } else {
      lua_createtable(L, 2, 1);
      push_xfer_error(L, t);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, "error");
      lua_rawseti(L, -2, 2);
    }
    xfer_release(t);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static const luaL_Reg http_funcs[] = {
    {"request", http_request}, {"request_many", http_request_many},
    {"_redirect_check", http_redirect_check}, {NULL, NULL}};

int luaopen_oflua_http(lua_State *L) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return luaL_error(L, "oflua.http: curl_global_init failed: %s", curl_easy_strerror(global_rc));

  if (luaL_newmetatable(L, STATE_MT)) {
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, XFER_MT)) {
    lua_pushcfunction(L, xfer_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, ERR_MT)) {
    lua_pushcfunction(L, err_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);

  luaL_newlib(L, http_funcs);
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl_version");
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, DEFAULT_TIMEOUT_MS);
  lua_setfield(L, -2, "timeout_ms");
  lua_pushinteger(L, DEFAULT_CONNECT_TIMEOUT_MS);
  lua_setfield(L, -2, "connect_timeout_ms");
  lua_pushinteger(L, DEFAULT_MAX_BODY);
  lua_setfield(L, -2, "max_body");
  lua_setfield(L, -2, "defaults");
  return 1;
}
