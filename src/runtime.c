/*
 * runtime.c: builds configured lua_States and implements the embedding API
 * of oflua.h on top of them.
 *
 * A state gets the standard libraries, cjson (and cjson.safe) and the native
 * modules registered in package.preload (loaded on first require, so an
 * unused module costs nothing at startup), plus package.path with the Lua
 * tree in front of Lua's defaults (busted and other system rocks keep
 * working). `oflua.core` carries versions, clocks and small OS helpers that
 * the Lua side needs and plain Lua lacks. No library beyond Lua and cjson is
 * referenced here: see modules_lazy.c.
 */
#include "internal.h"
#include "oflua.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>

#include <lua-cjson.h>

int luaopen_cjson_safe(lua_State *L);

struct oflua_runtime {
  lua_State *L;
};

void oflua__errf(char *buf, size_t len, const char *fmt, ...) {
  if (buf == NULL || len == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
}

int oflua__msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1; /* an error object with its own text: no traceback */
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int dir_exists(const char *path) {
  struct stat st;
  return path != NULL && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *oflua__default_lua_dir(void) {
  const char *env = getenv("OFLUA_PATH");
  if (env != NULL && env[0] != '\0') return env;
  if (dir_exists(OFLUA_INSTALL_LUA_DIR)) return OFLUA_INSTALL_LUA_DIR;
  return OFLUA_SOURCE_LUA_DIR;
}

const char *oflua__state_lua_dir(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_LUA_DIR);
  const char *dir = lua_tostring(L, -1); /* kept alive by the registry */
  lua_pop(L, 1);
  return dir != NULL ? dir : oflua__default_lua_dir();
}

/* ---- oflua.core ---------------------------------------------------------- */

static int core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)oflua__wall_now());
  return 1;
}

static int core_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)oflua__mono_now());
  return 1;
}

static int core_sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  oflua__sleep((double)lua_tonumber(L, 1));
  return 0;
}

/* sleep(seconds): blocks the calling thread (a server handler is moved off
 * an I/O thread first: oflua__wait_api). */
static int core_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s <= 86400, 1, "seconds must be within [0, 86400]");
  const oflua_wait_api *api = oflua__wait_api(L);
  if (api != NULL) return api->offload(L, core_sleep_k, 0);
  return core_sleep_k(L, LUA_OK, 0);
}

static int core_isatty(lua_State *L) {
  lua_Integer fd = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 1024, 1, "bad file descriptor");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
}

static int core_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

/* file_mode(path) -> permission bits as an integer, or nil, err */
static int core_file_mode(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char ebuf[128];
  struct stat st;
  if (stat(path, &st) != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", path, oflua__strerror(errno, ebuf, sizeof ebuf));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  return 1;
}

/* chmod(path, mode) -> true or nil, err */
static int core_chmod(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer mode = luaL_checkinteger(L, 2);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "bad mode");
  char ebuf[128];
  if (chmod(path, (mode_t)mode) != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", path, oflua__strerror(errno, ebuf, sizeof ebuf));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* listdir(path) -> sorted array of entry names (no "." / ".."), or nil, err */

/* The DIR of a listdir() in progress, in a userdata whose __gc closes it, so
 * a memory error raised mid-listing cannot leak it. */
static int dir_gc(lua_State *L) {
  DIR **d = luaL_checkudata(L, 1, "oflua.core.dir");
  if (*d != NULL) closedir(*d);
  *d = NULL;
  return 0;
}

static int core_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR **d = lua_newuserdatauv(L, sizeof *d, 0);
  *d = NULL;
  if (luaL_newmetatable(L, "oflua.core.dir")) {
    lua_pushcfunction(L, dir_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  *d = opendir(path);
  if (*d == NULL) {
    char ebuf[128];
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", path, oflua__strerror(errno, ebuf, sizeof ebuf));
    return 2;
  }
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(*d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(*d);
  *d = NULL;
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "sort");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  return 1;
}

static void push_versions(lua_State *L) {
  lua_createtable(L, 0, 6);
  lua_pushliteral(L, OFLUA_VERSION);
  lua_setfield(L, -2, "oflua");
  lua_pushliteral(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua");
}

/* Under plain lua5.4 (oflua/core.so loaded from package.cpath) no state was
 * made by oflua__state_new: the Lua tree is the first package.path entry
 * that holds ofauth, remembered in the registry for core.lua_dir and for the
 * server's worker states. */
static void find_lua_dir(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_LUA_DIR) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  const char *path = lua_istable(L, -1) && lua_getfield(L, -1, "path") == LUA_TSTRING
                         ? lua_tostring(L, -1) : NULL;
  while (path != NULL && *path != '\0') {
    const char *end = strchr(path, ';');
    size_t len = end != NULL ? (size_t)(end - path) : strlen(path);
    const char *q = memchr(path, '?', len);
    if (q != NULL && q > path) {
      lua_pushlstring(L, path, len);
      const char *file = luaL_gsub(L, lua_tostring(L, -1), "?", "ofauth");
      int found = access(file, R_OK) == 0;
      lua_pop(L, 2);
      if (found) {
        size_t dlen = (size_t)(q - path);
        if (dlen > 1 && path[dlen - 1] == '/') dlen--;
        lua_pushlstring(L, path, dlen);
        lua_setfield(L, LUA_REGISTRYINDEX, OFLUA_REG_LUA_DIR);
        break;
      }
    }
    path = end != NULL ? end + 1 : NULL;
  }
}

int luaopen_oflua_core(lua_State *L) {
  int top = lua_gettop(L);
  find_lua_dir(L);
  lua_settop(L, top);
  static const luaL_Reg funcs[] = {
      {"now", core_now},         {"monotonic", core_monotonic}, {"sleep", core_sleep},
      {"isatty", core_isatty},   {"getpid", core_getpid},       {"file_mode", core_file_mode},
      {"chmod", core_chmod},     {"listdir", core_listdir},     {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushliteral(L, OFLUA_VERSION);
  lua_setfield(L, -2, "version");
  push_versions(L);
  lua_setfield(L, -2, "versions");
  lua_pushstring(L, oflua__state_lua_dir(L));
  lua_setfield(L, -2, "lua_dir");
  return 1;
}

/* ---- states -------------------------------------------------------------- */

static int setup_state(lua_State *L) {
  const char *dir = lua_tostring(L, 1);
  luaL_openlibs(L);

  static const luaL_Reg preload[] = {{"cjson", luaopen_cjson},
                                     {"cjson.safe", luaopen_cjson_safe},
                                     {"oflua.core", luaopen_oflua_core},
                                     {NULL, NULL}};
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  luaL_setfuncs(L, preload, 0);
  luaL_setfuncs(L, oflua__native_modules, 0);
  lua_pop(L, 1);

  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, OFLUA_REG_LUA_DIR);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
  return 0;
}

lua_State *oflua__state_new(const char *lua_dir, char *errbuf, size_t errlen) {
  if (lua_dir == NULL) lua_dir = oflua__default_lua_dir();
  lua_State *L = oflua__state_alloc();
  if (L == NULL) {
    oflua__errf(errbuf, errlen, "cannot create Lua state: out of memory");
    return NULL;
  }
  lua_pushcfunction(L, setup_state);
  lua_pushstring(L, lua_dir);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    oflua__errf(errbuf, errlen, "cannot set up Lua state: %s", lua_tostring(L, -1));
    oflua__state_close(L);
    return NULL;
  }
  return L;
}

/* ---- embedding API ------------------------------------------------------- */

const char *oflua_version(void) { return OFLUA_VERSION; }

static int status_code(int lua_status) {
  switch (lua_status) {
    case LUA_OK: return OFLUA_OK;
    case LUA_ERRSYNTAX: return OFLUA_ERR_SYNTAX;
    case LUA_ERRMEM: return OFLUA_ERR_MEM;
    case LUA_ERRFILE: return OFLUA_ERR_FILE;
    default: return OFLUA_ERR_RUN;
  }
}

/* ---- error filter ---------------------------------------------------------- */

typedef struct filter_ctx {
  int has_filter;
} filter_ctx;

/* Under lua_pcall: [1] ctx, [2] the error value -> the filtered text. */
static int filter_body(lua_State *L) {
  filter_ctx *c = lua_touserdata(L, 1);
  if (lua_type(L, 2) != LUA_TSTRING) {
    if (!(luaL_callmeta(L, 2, "__tostring") && lua_type(L, -1) == LUA_TSTRING))
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 2));
    lua_replace(L, 2);
  }
  if (lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_ERROR_FILTER) == LUA_TNIL) {
    lua_pushvalue(L, 2);
    return 1;
  }
  c->has_filter = 1;
  lua_pushvalue(L, 2);
  lua_call(L, 1, 1);
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "the error filter returned no string");
  return 1;
}

void oflua__filter_error(lua_State *L, char *buf, size_t len) {
  filter_ctx c = {0};
  int ok = 0;
  if (lua_checkstack(L, 4)) {
    /* pushing a C function and a light userdata allocates nothing */
    lua_pushcfunction(L, filter_body);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, -3);
    if (lua_pcall(L, 2, 1, 0) == LUA_OK) ok = 1;
    if (ok) oflua__errf(buf, len, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (!ok) {
    /* fail closed: never the raw text when a filter exists (or may exist) */
    oflua__errf(buf, len, "%s", OFLUA_FILTER_FAILED);
  }
  lua_pop(L, 1); /* the error value */
}

/* Pops the error value on top of L into errbuf (filtered) and maps the status. */
static int fail_with(lua_State *L, int lua_status, char *errbuf, size_t errlen) {
  oflua__filter_error(L, errbuf, errlen);
  return status_code(lua_status);
}

static int set_arg_table(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  const char *const *argv = (const char *const *)lua_touserdata(L, 2);
  lua_createtable(L, argc > 0 ? argc - 1 : 0, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  return 0;
}

oflua_runtime *oflua_open(const oflua_options *opts, char *errbuf, size_t errlen) {
  oflua_runtime *rt = calloc(1, sizeof *rt);
  if (rt == NULL) {
    oflua__errf(errbuf, errlen, "cannot create runtime: out of memory");
    return NULL;
  }
  rt->L = oflua__state_new(opts != NULL ? opts->lua_dir : NULL, errbuf, errlen);
  if (rt->L == NULL) {
    free(rt);
    return NULL;
  }
  if (opts != NULL && opts->argc > 0 && opts->argv != NULL) {
    lua_pushcfunction(rt->L, set_arg_table);
    lua_pushinteger(rt->L, opts->argc);
    lua_pushlightuserdata(rt->L, (void *)opts->argv);
    int st = lua_pcall(rt->L, 2, 0, 0);
    if (st != LUA_OK) {
      fail_with(rt->L, st, errbuf, errlen);
      oflua_close(rt);
      return NULL;
    }
  }
  return rt;
}

int oflua__run_loaded(lua_State *L, int status, int nresults, char *errbuf, size_t errlen) {
  if (status != LUA_OK) return fail_with(L, status, errbuf, errlen);
  int base = lua_gettop(L); /* the chunk */
  lua_pushcfunction(L, oflua__msgh);
  lua_insert(L, base);
  status = lua_pcall(L, 0, nresults, base);
  lua_remove(L, base);
  if (status != LUA_OK) return fail_with(L, status, errbuf, errlen);
  return OFLUA_OK;
}

int oflua_run_file(oflua_runtime *rt, const char *path, char *errbuf, size_t errlen) {
  if (rt == NULL || path == NULL) {
    oflua__errf(errbuf, errlen, "oflua_run_file: runtime and path are required");
    return OFLUA_ERR_ARG;
  }
  return oflua__run_loaded(rt->L, luaL_loadfile(rt->L, path), 0, errbuf, errlen);
}

int oflua_run_string(oflua_runtime *rt, const char *code, const char *chunkname, char *errbuf,
                     size_t errlen) {
  if (rt == NULL || code == NULL) {
    oflua__errf(errbuf, errlen, "oflua_run_string: runtime and code are required");
    return OFLUA_ERR_ARG;
  }
  int st = luaL_loadbufferx(rt->L, code, strlen(code), chunkname ? chunkname : "=(string)", "t");
  return oflua__run_loaded(rt->L, st, 0, errbuf, errlen);
}

/* The lookup, the argument pushes and the call, all under lua_pcall: a
 * memory error or a metamethod on the globals cannot escape to a panic. */
typedef struct call_ctx {
  const char *name;
  int nargs;
  const char *const *args;
  int found;
} call_ctx;

static int call_body(lua_State *L) {
  call_ctx *c = lua_touserdata(L, 1);
  if (lua_getglobal(L, c->name) != LUA_TFUNCTION) {
    c->found = 0;
    lua_pushnil(L);
    return 1;
  }
  c->found = 1;
  luaL_checkstack(L, c->nargs, "too many arguments");
  for (int i = 0; i < c->nargs; i++) {
    if (c->args[i] == NULL) lua_pushnil(L);
    else lua_pushstring(L, c->args[i]);
  }
  lua_call(L, c->nargs, 1);
  return 1;
}

int oflua_call(oflua_runtime *rt, const char *name, int nargs, const char *const *args,
               char **result, size_t *result_len, char *errbuf, size_t errlen) {
  if (result != NULL) *result = NULL;
  if (result_len != NULL) *result_len = 0;
  if (rt == NULL || name == NULL || nargs < 0 || (nargs > 0 && args == NULL)) {
    oflua__errf(errbuf, errlen, "oflua_call: bad arguments");
    return OFLUA_ERR_ARG;
  }
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) {
    oflua__errf(errbuf, errlen, "oflua_call: out of memory");
    return OFLUA_ERR_MEM;
  }
  call_ctx c = {name, nargs, args, 0};
  lua_pushcfunction(L, oflua__msgh);
  lua_pushcfunction(L, call_body);
  lua_pushlightuserdata(L, &c);
  int st = lua_pcall(L, 1, 1, top + 1);
  if (st != LUA_OK) {
    int code = fail_with(L, st, errbuf, errlen);
    lua_settop(L, top);
    return code;
  }
  if (!c.found) {
    lua_settop(L, top);
    oflua__errf(errbuf, errlen, "oflua_call: no global function '%s'", name);
    return OFLUA_ERR_NOTFOUND;
  }
  int rc = OFLUA_OK;
  int t = lua_type(L, -1);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (result != NULL) {
      *result = malloc(len + 1);
      if (*result == NULL) {
        oflua__errf(errbuf, errlen, "oflua_call: out of memory");
        rc = OFLUA_ERR_MEM;
      } else {
        memcpy(*result, s, len);
        (*result)[len] = '\0';
        if (result_len != NULL) *result_len = len;
      }
    }
  } else if (t != LUA_TNIL) {
    oflua__errf(errbuf, errlen, "oflua_call: '%s' returned a %s, not a string", name,
                lua_typename(L, t));
    rc = OFLUA_ERR_TYPE;
  }
  lua_settop(L, top);
  return rc;
}

struct lua_State *oflua_lua_state(oflua_runtime *rt) { return rt != NULL ? rt->L : NULL; }

void oflua_close(oflua_runtime *rt) {
  if (rt == NULL) return;
  if (rt->L != NULL) oflua__state_close(rt->L);
  free(rt);
}
