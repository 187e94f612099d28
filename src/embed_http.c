/*
 * embed_http.c: oflua_load_handler / oflua_handle_http, the part of the
 * embedding API that lets a C service with its own HTTP server hand requests
 * to the same Lua handlers `oflua serve` runs. The request -> Lua -> response
 * conversion itself is oflua__dispatch in server_dispatch.c, shared with the
 * server workers (which also owns oflua_http_response_free). Only in
 * liboflua (the binary does not need it).
 */
#include "internal.h"
#include "oflua.h"

#include <stdlib.h>
#include <string.h>

int oflua_load_handler(oflua_runtime *rt, const char *path, char *errbuf, size_t errlen) {
  if (rt == NULL || path == NULL) {
    oflua__errf(errbuf, errlen, "oflua_load_handler: runtime and path are required");
    return OFLUA_ERR_ARG;
  }
  lua_State *L = oflua_lua_state(rt);
  int top = lua_gettop(L);
  int rc = oflua__run_loaded(L, luaL_loadfile(L, path), 1, errbuf, errlen);
  if (rc != OFLUA_OK) return rc;
  int t = lua_type(L, -1);
  if (t != LUA_TFUNCTION && t != LUA_TTABLE) {
    lua_settop(L, top);
    oflua__errf(errbuf, errlen, "%s: must return a handler function or a router table", path);
    return OFLUA_ERR_TYPE;
  }
  lua_setfield(L, LUA_REGISTRYINDEX, OFLUA_REG_HANDLER);
  lua_settop(L, top);
  return OFLUA_OK;
}

int oflua_handle_http(oflua_runtime *rt, const oflua_http_request *req, oflua_http_response *resp,
                      char *errbuf, size_t errlen) {
  if (rt == NULL || req == NULL || resp == NULL || req->method == NULL || req->path == NULL) {
    oflua__errf(errbuf, errlen,
                "oflua_handle_http: runtime, request (method, path) and response are required");
    return OFLUA_ERR_ARG;
  }
  memset(resp, 0, sizeof *resp);
  lua_State *L = oflua_lua_state(rt);
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_HANDLER) == LUA_TNIL) {
    lua_settop(L, top);
    oflua__errf(errbuf, errlen, "oflua_handle_http: no handler loaded (oflua_load_handler)");
    return OFLUA_ERR_NOTFOUND;
  }
  int rc = oflua__dispatch(L, lua_gettop(L), req, resp, errbuf, errlen);
  lua_settop(L, top);
  return rc;
}
