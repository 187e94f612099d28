/*
 * server_worker.c: the worker VMs (one lua_State per worker, loaded from the
 * same script with the same args) and the tick VM that runs the script's
 * tick() on its own thread.
 */
#include "server_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- worker VMs ---------------------------------------------------------- */

/* Copies the value at src index i (of state `from`) onto `to`. Only plain
 * data crosses: nil, booleans, numbers (integer/float kept), strings, tables
 * of those (no cycles, nesting at most 32). */
static void copy_value(lua_State *from, int i, lua_State *to, int depth) {
  luaL_checkstack(to, 4, "args");
  switch (lua_type(from, i)) {
    case LUA_TNIL: lua_pushnil(to); break;
    case LUA_TBOOLEAN: lua_pushboolean(to, lua_toboolean(from, i)); break;
    case LUA_TNUMBER:
      if (lua_isinteger(from, i)) lua_pushinteger(to, lua_tointeger(from, i));
      else lua_pushnumber(to, lua_tonumber(from, i));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(from, i, &len);
      lua_pushlstring(to, s, len);
      break;
    }
    case LUA_TTABLE: {
      if (depth > 32) luaL_error(to, "args: tables nested too deep (a cycle?)");
      if (!lua_checkstack(from, 4)) luaL_error(to, "args: stack overflow");
      i = lua_absindex(from, i);
      lua_newtable(to);
      lua_pushnil(from);
      while (lua_next(from, i) != 0) {
        int kt = lua_type(from, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
          lua_pop(from, 2);
          luaL_error(to, "args: cannot pass a %s key", lua_typename(from, kt));
        }
        copy_value(from, -2, to, depth + 1);
        copy_value(from, -1, to, depth + 1);
        lua_rawset(to, -3);
        lua_pop(from, 1);
      }
      break;
    }
    default:
      luaL_error(to, "args: cannot pass a %s to the workers", luaL_typename(from, i));
  }
}

/* In the worker VM: load the script, call it with the args, leave
 * [1] handler, [2] shutdown hook or nil. */
int srv_load_worker(lua_State *L) {
  load_ctx *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushinteger(L, c->worker_id);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_WORKER_ID);
  if (luaL_loadfilex(L, c->script, "t") != LUA_OK) return lua_error(L);
  int nargs = 0;
  if (c->args_idx != 0) {
    copy_value(c->from, c->args_idx, L, 0);
    nargs = 1;
  }
  lua_call(L, nargs, 1);
  int t = lua_type(L, 1);
  if (t == LUA_TFUNCTION) {
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
    return 4;
  }
  if (t != LUA_TTABLE)
    return luaL_error(L, "%s must return a handler function, a router or {handler = fn}, not a %s",
                      c->script, luaL_typename(L, 1));
  if (lua_getfield(L, 1, "handle") != LUA_TNIL) { /* a router */
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
    return 4;
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "handler");
  lua_getfield(L, 1, "shutdown");
  lua_getfield(L, 1, "tick");
  lua_getfield(L, 1, "tick_interval");
  int ht = lua_type(L, 2);
  if (ht != LUA_TFUNCTION && ht != LUA_TTABLE)
    return luaL_error(L, "%s: the returned table has no handle method and no handler field",
                      c->script);
  if (!lua_isnil(L, 3) && !lua_isfunction(L, 3))
    return luaL_error(L, "%s: shutdown must be a function", c->script);
  if (!lua_isnil(L, 4) && !lua_isfunction(L, 4))
    return luaL_error(L, "%s: tick must be a function", c->script);
  if (!lua_isnil(L, 5)) {
    lua_Number iv = lua_tonumber(L, 5);
    if (lua_type(L, 5) != LUA_TNUMBER || !(iv >= 0.01 && iv <= 86400))
      return luaL_error(L, "%s: tick_interval must be a number of seconds in [0.01, 86400]",
                        c->script);
  }
  lua_remove(L, 1);
  return 4;
}

static int run_shutdown(lua_State *L) {
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    lua_call(L, 0, 0);
  }
  return 0;
}

void srv_close_workers(server *s) {
  for (int i = 0; i < s->nworkers; i++) {
    worker *w = &s->workers[i];
    if (w->L == NULL) continue;
    lua_settop(w->L, 2);
    lua_pushcfunction(w->L, oflua__msgh);
    lua_pushcfunction(w->L, run_shutdown);
    lua_pushvalue(w->L, 1);
    lua_pushvalue(w->L, 2);
    if (lua_pcall(w->L, 2, 0, 3) != LUA_OK)
      srv_log("error", "shutdown_error", w->id, "error", srv_filtered_error(w->L), NULL, NULL);
    lua_close(w->L);
    w->L = NULL;
  }
  free(s->workers);
  s->workers = NULL;
  s->nworkers = 0;
}

/* ---- tick ---------------------------------------------------------------- */

void *srv_tick_main(void *arg) {
  server *s = arg;
  lua_State *L = s->tickL; /* stack: [1] handler, [2] shutdown, [3] tick */
  pthread_mutex_lock(&s->tick_mu);
  for (;;) {
    struct timespec until; /* the condvar waits on the monotonic clock */
    clock_gettime(CLOCK_MONOTONIC, &until);
    double secs = floor(s->tick_interval);
    until.tv_sec += (time_t)secs;
    until.tv_nsec += (long)((s->tick_interval - secs) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000000000L;
    }
    while (!s->tick_stop && pthread_cond_timedwait(&s->tick_cv, &s->tick_mu, &until) == 0) {
    }
    if (s->tick_stop) break;
    pthread_mutex_unlock(&s->tick_mu);
    lua_settop(L, 3);
    lua_pushcfunction(L, oflua__msgh);
    lua_pushvalue(L, 3);
    if (lua_pcall(L, 0, 0, 4) != LUA_OK)
      srv_log("error", "tick_error", 0, "error", srv_filtered_error(L), NULL, NULL);
    lua_settop(L, 3);
    pthread_mutex_lock(&s->tick_mu);
  }
  pthread_mutex_unlock(&s->tick_mu);
  return NULL;
}

/* Stops the tick thread (a tick in progress finishes first) and closes its
 * VM after running the shutdown hook there too. */
void srv_tick_stop(server *s) {
  if (s->tick_started) {
    pthread_mutex_lock(&s->tick_mu);
    s->tick_stop = 1;
    pthread_cond_signal(&s->tick_cv);
    pthread_mutex_unlock(&s->tick_mu);
    pthread_join(s->tick_thread, NULL);
    s->tick_started = 0;
  }
  if (s->tickL != NULL) {
    lua_State *L = s->tickL;
    lua_settop(L, 2);
    lua_pushcfunction(L, oflua__msgh);
    lua_pushcfunction(L, run_shutdown);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 3) != LUA_OK)
      srv_log("error", "shutdown_error", 0, "error", srv_filtered_error(L), NULL, NULL);
    lua_close(L);
    s->tickL = NULL;
    pthread_cond_destroy(&s->tick_cv);
    pthread_mutex_destroy(&s->tick_mu);
  }
}

