/*
 * server_dispatch.c: request/response conversion, no MHD. Turns a C request
 * (oflua_http_request) into the Lua req table, calls the handler (function,
 * router, or {handler = ...}) and converts its results back to C. The
 * embedding API (oflua_handle_http, through oflua__dispatch) and the server
 * workers share it, so both behave identically, including the generic 500
 * when a handler throws or returns something that is not a response.
 */
#include "server_internal.h"

#include <stdlib.h>
#include <string.h>

static const char GENERIC_500[] = "Internal Server Error\n";

/* Pushes s[0..n) percent-decoded, '+' as a space (form encoding). */
static void push_form_decoded(lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '+') {
      out[o++] = ' ';
    } else if (c == '%' && i + 2 < n && oflua__hexval((unsigned char)s[i + 1]) >= 0 &&
               oflua__hexval((unsigned char)s[i + 2]) >= 0) {
      out[o++] = (char)(oflua__hexval((unsigned char)s[i + 1]) * 16 + oflua__hexval((unsigned char)s[i + 2]));
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

void srv_push_request(lua_State *L, const oflua_http_request *r) {
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

/* Adds header name: value (value at stack top, a string or number) to resp. */
static void add_resp_header(lua_State *L, oflua_http_response *resp, size_t cap, const char *name,
                            size_t nlen) {
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_error(L, "handler returned a %s as the value of header '%s'", lua_typename(L, t), name);
  size_t vlen;
  const char *v = lua_tolstring(L, -1, &vlen);
  if (!oflua__is_header_value(v, vlen))
    luaL_error(L, "handler returned header '%s' with CR, LF or NUL in its value", name);
  if (resp->nheaders >= cap) luaL_error(L, "too many response headers");
  char *n = oflua__memdup(name, nlen), *val = oflua__memdup(v, vlen);
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
const char srv_drop_sentinel = 'D';

void srv_take_response(lua_State *L, int base, oflua_http_response *resp) {
  if (lua_touserdata(L, base) == (void *)&srv_drop_sentinel) {
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
        if (!oflua__is_token(name, nlen))
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
int srv_push_callable(lua_State *L, int h) {
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

typedef struct dispatch_ctx {
  const oflua_http_request *req;
  oflua_http_response *resp;
} dispatch_ctx;

static int dispatch_protected(lua_State *L) {
  dispatch_ctx *c = (dispatch_ctx *)lua_touserdata(L, 1);
  int base = lua_gettop(L);
  int nself = srv_push_callable(L, 2);
  srv_push_request(L, c->req);
  lua_call(L, nself, 3);
  srv_take_response(L, base + 1, c->resp);
  return 0;
}

static void generic_500(oflua_http_response *resp) {
  oflua_http_response_free(resp);
  resp->status = 500;
  resp->body = oflua__memdup(GENERIC_500, sizeof GENERIC_500 - 1);
  if (resp->body != NULL) resp->body_len = sizeof GENERIC_500 - 1;
  resp->headers = calloc(1, sizeof *resp->headers);
  if (resp->headers != NULL) {
    resp->headers[0].name = oflua__memdup("Content-Type", 12);
    resp->headers[0].value = oflua__memdup("text/plain; charset=utf-8", 25);
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
    oflua__filter_error(L, errbuf, errlen); /* pops the error */
    generic_500(resp);
  }
  lua_settop(L, top);
  return OFLUA_OK;
}
