/*
 * http_client.c: oflua.http. Placeholder until its issue lands: the module
 * loads and reports libcurl's version.
 */
#include "internal.h"

#include <curl/curl.h>

int luaopen_oflua_http(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl_version");
  return 1;
}
