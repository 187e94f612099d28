/*
 * crypto.c: oflua.crypto. Placeholder until its issue lands: the module loads and
 * is empty, so the preload mechanism is exercised end to end.
 */
#include "internal.h"

int luaopen_oflua_crypto(lua_State *L) {
  lua_newtable(L);
  return 1;
}
