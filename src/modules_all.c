/*
 * modules_all.c: the native modules of liboflua, all linked in (see
 * oflua__native_modules in internal.h; the binary uses modules_lazy.c).
 */
#include "internal.h"

const luaL_Reg oflua__native_modules[] = {{"oflua.crypto", luaopen_oflua_crypto},
                                          {"oflua.http", luaopen_oflua_http},
                                          {"oflua.server", luaopen_oflua_server},
                                          {"oflua.store", luaopen_oflua_store},
                                          {NULL, NULL}};
