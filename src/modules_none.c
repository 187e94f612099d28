/*
 * modules_none.c: the native-module table of the oflua.core and oflua.server
 * Lua C modules (build/lua/oflua/{core,server}.so) when plain lua5.4 loads
 * them. It is empty: their states (server workers) find oflua.crypto & co.
 * through package.cpath like any other C module. Inside the oflua binary the
 * binary's own table (modules_lazy.c) is used instead. CMake compiles these
 * modules with oflua__native_modules renamed (oflua__native_modules_plain),
 * so the process never holds two globals of one name.
 */
#include "internal.h"

const luaL_Reg oflua__native_modules[] = {{NULL, NULL}};
