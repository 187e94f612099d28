/*
 * fuzz_lua.c: one libFuzzer harness for oflua's parsers that live in Lua
 * (webhook signature headers and events, the webhook app, the Link callback
 * query) and for the store's sealed rows.
 *
 * The harness embeds the runtime through oflua.h, loads spec/fuzz/<target>.lua
 * once (it returns a function taking the input bytes) and calls that function
 * for every input. A target never raises for any input: a Lua error is a
 * finding, reported with its traceback, and the harness aborts so libFuzzer
 * saves the input. Targets also check their own invariants with assert().
 *
 * Coverage: liboflua's C code is instrumented by the compiler, but Lua code
 * runs in an interpreter libFuzzer cannot see into. A line hook turns the
 * (function, line) pairs the Lua code goes through into edge counters in the
 * __libfuzzer_extra_counters section, which libFuzzer reads as coverage, so
 * mutations that reach new Lua branches are kept (the way atheris does it for
 * Python).
 *
 * Built two ways (cmake/tests.cmake):
 *  - fuzz_<target> with -fsanitize=fuzzer,address,undefined and
 *    OFLUA_FUZZ_LIBFUZZER (-DOFLUA_FUZZ=ON, clang; scripts/fuzz);
 *  - fuzz_replay, with replay_main.c instead of libFuzzer's main, in every
 *    build: it runs the seeds and saved findings once
 *    (spec/abuse_fuzz_replay_spec.lua), so regressions fail the normal tests.
 * The target is OFLUA_FUZZ_TARGET (compile definition) or the environment
 * variable of the same name.
 */
#include "oflua.h"

#include <lauxlib.h>
#include <lua.h>
#include <sqlite3.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef OFLUA_FUZZ_SOURCE_DIR
#error "OFLUA_FUZZ_SOURCE_DIR must name the source tree"
#endif

static oflua_runtime *rt;
static lua_State *L;
static int target_ref = LUA_NOREF, cleanup_ref = LUA_NOREF;

#ifdef OFLUA_FUZZ_LIBFUZZER
#define COUNTERS (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_counters[COUNTERS];
static uint32_t prev_loc;

static void line_hook(lua_State *S, lua_Debug *ar) {
  if (!lua_getinfo(S, "S", ar)) return;
  /* ar->source points into the function's source string, which lives as
   * long as the function: a stable identity for loaded module code. */
  uint64_t h = (uint64_t)(uintptr_t)ar->source * 0x9E3779B97F4A7C15ull;
  h ^= (uint64_t)(uint32_t)ar->currentline * 0xC2B2AE3D27D4EB4Full;
  uint32_t loc = (uint32_t)(h >> 40);
  uint8_t *c = &lua_counters[(loc ^ prev_loc) % COUNTERS];
  if (*c != 255) (*c)++;
  prev_loc = loc >> 1;
}
#endif

/* ---- helpers the Lua targets can call: fuzz.sql(path, sql, ...) ---------- */

/* fuzz.sql(path, sql, ...) -> rows, changes: runs one SQL statement on the
 * database at path (the connection stays open for the next call), binding strings as blobs, integers as integers, nil as
 * NULL; rows is an array of rows (arrays; NULL -> false). The store target
 * uses it to put fuzzed bytes where sealed data lives and to restore them. */
static void push_column(lua_State *S, sqlite3_stmt *st, int col) {
  switch (sqlite3_column_type(st, col)) {
  case SQLITE_INTEGER: lua_pushinteger(S, (lua_Integer)sqlite3_column_int64(st, col)); break;
  case SQLITE_FLOAT: lua_pushnumber(S, sqlite3_column_double(st, col)); break;
  case SQLITE_NULL: lua_pushboolean(S, 0); break;
  default: {
    const void *b = sqlite3_column_blob(st, col);
    lua_pushlstring(S, b != NULL ? b : "", (size_t)sqlite3_column_bytes(st, col));
  }
  }
}

static sqlite3 *sql_db; /* one connection, kept open between calls */
static char sql_path[4096];

static void sql_close(void) {
  sqlite3_close(sql_db);
  sql_db = NULL;
  sql_path[0] = '\0';
}

static int fuzz_sql(lua_State *S) {
  const char *path = luaL_checkstring(S, 1);
  const char *sql = luaL_checkstring(S, 2);
  int n = lua_gettop(S);
  sqlite3_stmt *st = NULL;
  if (sql_db == NULL || strcmp(path, sql_path) != 0) {
    sql_close();
    if (strlen(path) >= sizeof sql_path) return luaL_error(S, "fuzz.sql: path too long");
    if (sqlite3_open_v2(path, &sql_db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
      sql_close();
      return luaL_error(S, "fuzz.sql: cannot open %s", path);
    }
    sqlite3_busy_timeout(sql_db, 5000);
    snprintf(sql_path, sizeof sql_path, "%s", path);
  }
  sqlite3 *db = sql_db;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  for (int i = 3; rc == SQLITE_OK && i <= n; i++) {
    if (lua_isinteger(S, i)) {
      rc = sqlite3_bind_int64(st, i - 2, (sqlite3_int64)lua_tointeger(S, i));
    } else if (lua_type(S, i) == LUA_TNUMBER) {
      rc = sqlite3_bind_double(st, i - 2, lua_tonumber(S, i));
    } else if (lua_isnil(S, i)) {
      rc = sqlite3_bind_null(st, i - 2);
    } else {
      size_t len;
      const char *b = luaL_checklstring(S, i, &len);
      rc = sqlite3_bind_blob(st, i - 2, b, (int)len, SQLITE_TRANSIENT);
    }
  }
  lua_newtable(S);
  int nrows = 0;
  while (rc == SQLITE_OK) {
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) break;
    if (step != SQLITE_ROW) {
      rc = step;
      break;
    }
    int ncol = sqlite3_column_count(st);
    lua_createtable(S, ncol, 0);
    for (int c = 0; c < ncol; c++) {
      push_column(S, st, c);
      lua_rawseti(S, -2, c + 1);
    }
    lua_rawseti(S, -2, ++nrows);
  }
  int changes = sqlite3_changes(db);
  char msg[256];
  if (rc != SQLITE_OK) snprintf(msg, sizeof msg, "fuzz.sql: %s", sqlite3_errmsg(db));
  sqlite3_finalize(st);
  if (rc != SQLITE_OK) return luaL_error(S, "%s", msg);
  lua_pushinteger(S, changes);
  return 2;
}

static const char *target_name(void) {
  const char *env = getenv("OFLUA_FUZZ_TARGET");
  if (env != NULL && env[0] != '\0') return env;
#ifdef OFLUA_FUZZ_TARGET
  return OFLUA_FUZZ_TARGET;
#else
  return NULL;
#endif
}

static int msgh(lua_State *S) {
  const char *msg = lua_tostring(S, 1);
  luaL_traceback(S, S, msg != NULL ? msg : "(error object is not a string)", 1);
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
void fuzz_close(void);

/* Runs the target's cleanup function (its second return value, if any) and
 * closes the runtime; registered with atexit. */
void fuzz_close(void) {
  if (rt == NULL) return;
#ifdef OFLUA_FUZZ_LIBFUZZER
  lua_sethook(L, NULL, 0, 0);
#endif
  lua_pushcfunction(L, msgh);
  lua_rawgeti(L, LUA_REGISTRYINDEX, cleanup_ref);
  if (lua_isfunction(L, -1) && lua_pcall(L, 0, 0, -2) != LUA_OK)
    fprintf(stderr, "fuzz: cleanup: %s\n", lua_tostring(L, -1));
  sql_close();
  oflua_close(rt);
  rt = NULL;
  L = NULL;
}
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char err[2048];
  static const char code[] =
      "package.path = fuzz.source_dir .. '/?.lua;' .. package.path\n"
      "return dofile(fuzz.source_dir .. '/spec/fuzz/' .. ... .. '.lua')";
  const char *name = target_name();
  if (name == NULL) {
    fprintf(stderr, "fuzz: no target (set OFLUA_FUZZ_TARGET)\n");
    abort();
  }
  rt = oflua_open(NULL, err, sizeof err);
  if (rt == NULL) {
    fprintf(stderr, "fuzz: oflua_open: %s\n", err);
    abort();
  }
  L = oflua_lua_state(rt);
  lua_newtable(L);
  lua_pushcfunction(L, fuzz_sql);
  lua_setfield(L, -2, "sql");
  lua_pushstring(L, OFLUA_FUZZ_SOURCE_DIR);
  lua_setfield(L, -2, "source_dir");
  lua_setglobal(L, "fuzz");
  lua_pushcfunction(L, msgh);
  if (luaL_loadstring(L, code) != LUA_OK) {
    fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_pushstring(L, name);
  if (lua_pcall(L, 1, 2, -3) != LUA_OK || !lua_isfunction(L, -2)) {
    fprintf(stderr, "fuzz: loading target %s: %s\n", name,
            lua_isstring(L, -1) ? lua_tostring(L, -1) : "it must return a function");
    abort();
  }
  cleanup_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* LUA_REFNIL when none */
  target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1); /* msgh */
  atexit(fuzz_close);
#ifdef OFLUA_FUZZ_LIBFUZZER
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
#endif
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, msgh);
  lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
  lua_pushlstring(L, (const char *)data, size);
#ifdef OFLUA_FUZZ_LIBFUZZER
  prev_loc = 0;
#endif
  if (lua_pcall(L, 1, 0, base + 1) != LUA_OK) {
    fprintf(stderr, "fuzz: target %s raised: %s\n", target_name(), lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, base);
  return 0;
}
