/*
 * http_server.c: oflua.server. Placeholder until its issue lands: the module
 * loads and is empty; oflua_handle_http reports that no dispatcher exists.
 */
#include "internal.h"
#include "oflua.h"

#include <microhttpd.h>

int oflua__dispatch(lua_State *L, int handler, const struct oflua_http_request *req,
                    struct oflua_http_response *resp, char *errbuf, size_t errlen) {
  (void)L, (void)handler, (void)req, (void)resp;
  oflua__errf(errbuf, errlen, "oflua_handle_http: not implemented yet");
  return OFLUA_ERR_NOTFOUND;
}

int luaopen_oflua_server(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, MHD_get_version());
  lua_setfield(L, -2, "mhd_version");
  return 1;
}
