/*
 * modules_lazy.c: the native modules as the oflua binary sees them.
 *
 * Every native module is a Lua C module (oflua/crypto.so, oflua/http.so,
 * oflua/server.so, oflua/store.so: the files plain lua5.4 requires) that the
 * binary opens with dlopen on first require:
 * libcurl and libmicrohttpd alone bring ~35 shared libraries (LDAP, Kerberos,
 * GnuTLS, ...) and libcrypto is large; their loading and constructors cost
 * several times Lua's whole start-up, which a script that does not use them
 * should not pay. The binary itself links only Lua and cjson.
 *
 * oflua/<name>.so is looked for under $OFLUA_MODULE_DIR, then <exe dir>/lua
 * (the build tree), then <exe>/../<libdir>/lua/5.4 (an installed or luarocks
 * tree, wherever its prefix), then the configured install directory.
 */
#include "internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *open_side_object(const char *file, char *err, size_t errlen) {
  char path[PATH_MAX], rel[PATH_MAX], build[PATH_MAX];
  const char *dirs[4];
  int n = 0;
  const char *env = getenv("OFLUA_MODULE_DIR");
  if (env != NULL && env[0] != '\0') dirs[n++] = env;
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash != NULL) {
      *slash = '\0';
      int w = snprintf(build, sizeof build, "%s/lua", exe);
      if (w > 0 && (size_t)w < sizeof build) dirs[n++] = build;
      w = snprintf(rel, sizeof rel, "%s/../%s", exe, OFLUA_REL_MODULE_DIR);
      if (w > 0 && (size_t)w < sizeof rel) dirs[n++] = rel;
    }
  }
  dirs[n++] = OFLUA_INSTALL_MODULE_DIR;
  err[0] = '\0';
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%s", dirs[i], file);
    if (access(path, R_OK) != 0) continue;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h != NULL) return h;
    snprintf(err, errlen, "%s", dlerror());
    return NULL;
  }
  snprintf(err, errlen, "%s not found (looked under $OFLUA_MODULE_DIR, <exe dir>/lua, "
           "<exe>/../%s and %s)", file, OFLUA_REL_MODULE_DIR, OFLUA_INSTALL_MODULE_DIR);
  return NULL;
}

static int open_lazy(lua_State *L, const char *file, const char *sym) {
  char err[512];
  void *h = open_side_object(file, err, sizeof err);
  if (h == NULL) return luaL_error(L, "cannot load native module: %s", err);
  /* The handle stays open for the life of the process: the module's
   * functions are referenced from Lua states that may outlive this one. */
  lua_CFunction f;
  *(void **)(&f) = dlsym(h, sym);
  if (f == NULL) return luaL_error(L, "cannot load native module: %s has no %s", file, sym);
  return f(L);
}

#define LAZY(name)                                                   \
  static int lazy_##name(lua_State *L) {                             \
    return open_lazy(L, "oflua/" #name ".so", "luaopen_oflua_" #name); \
  }
LAZY(crypto)
LAZY(http)
LAZY(server)
LAZY(store)

const luaL_Reg oflua__native_modules[] = {{"oflua.crypto", lazy_crypto},
                                          {"oflua.http", lazy_http},
                                          {"oflua.server", lazy_server},
                                          {"oflua.store", lazy_store},
                                          {NULL, NULL}};
