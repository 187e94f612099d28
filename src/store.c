/*
 * store.c: oflua.store. Placeholder until its issue lands: the module loads
 * and reports SQLite's version.
 */
#include "internal.h"

#include <sqlite3.h>

int luaopen_oflua_store(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, sqlite3_libversion());
  lua_setfield(L, -2, "sqlite_version");
  return 1;
}
