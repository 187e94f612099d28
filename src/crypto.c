/*
 * crypto.c: oflua.crypto. Placeholder until its issue lands: the module
 * loads and reports OpenSSL's version.
 */
#include "internal.h"

#include <openssl/crypto.h>

int luaopen_oflua_crypto(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "openssl_version");
  return 1;
}
