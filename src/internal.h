/*
 * internal.h: what the C files of liboflua share and the public header does
 * not show: building a configured lua_State (the server makes one per worker
 * thread), error-message helpers and the luaopen_* entry points.
 */
#ifndef OFLUA_INTERNAL_H
#define OFLUA_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* Registry field holding the Lua tree directory of a state. */
#define OFLUA_REG_LUA_DIR "oflua.lua_dir"

/* A new lua_State with std libs, cjson and native modules preloaded and
 * package.path = <lua_dir>/?.lua;<lua_dir>/?/init.lua;<default>.
 * Returns NULL (reason in errbuf) on failure. */
lua_State *oflua__state_new(const char *lua_dir, char *errbuf, size_t errlen);

/* A bare Lua state with oflua's allocator (vm_alloc.c: small blocks cached
 * per state), the panic and warning functions luaL_newstate installs; NULL
 * when out of memory. oflua__state_new makes its states with it. Close them
 * with oflua__state_close (lua_close, then the cache). */
lua_State *oflua__state_alloc(void);
void oflua__state_close(lua_State *L);

/* The directory that state was made with (never NULL). */
const char *oflua__state_lua_dir(lua_State *L);

/* The default Lua tree: $OFLUA_PATH, installed tree, source tree. */
const char *oflua__default_lua_dir(void);

/* Message handler for lua_pcall: adds a traceback to string errors and
 * turns tables with __tostring into their text. */
int oflua__msgh(lua_State *L);

/* Runs the chunk on top of L (status is luaL_load*'s result) with oflua__msgh,
 * leaving nresults values; on failure the message goes to errbuf and an
 * OFLUA_ERR_* code is returned. */
int oflua__run_loaded(lua_State *L, int status, int nresults, char *errbuf, size_t errlen);

/* snprintf into a possibly NULL buffer. */
void oflua__errf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Dispatch hook for oflua_handle_http, provided by server_dispatch.c:
 * calls the handler at stack index `handler` with a req table built from
 * `req` and fills `resp`. */
struct oflua_http_request;
struct oflua_http_response;
int oflua__dispatch(lua_State *L, int handler, const struct oflua_http_request *req,
                    struct oflua_http_response *resp, char *errbuf, size_t errlen);

/* The native modules registered in package.preload, {NULL, NULL}-terminated.
 * Two definitions exist: modules_all.c (liboflua: every module linked in) and
 * modules_lazy.c (the oflua binary: oflua.http and oflua.server are loaded
 * from side objects on first require, because libcurl and libmicrohttpd pull
 * in dozens of shared libraries whose start-up would dominate `oflua -e ''`). */
extern const luaL_Reg oflua__native_modules[];

/* Registry key of an optional function(text) -> text applied to every error
 * text the C side logs or hands out: server handler, tick and shutdown
 * errors, oflua_call, oflua_run_*, oflua_handle_http (ofauth.redact sets it:
 * connection ids and registered secrets out of logs). It fails closed: if it
 * raises or returns a non-string, OFLUA_FILTER_FAILED is used instead. */
#define OFLUA_REG_ERROR_FILTER "oflua.error_filter"
#define OFLUA_FILTER_FAILED "(error text withheld: the error filter failed)"

/* Pops the error value on top of L and writes its text, through the error
 * filter, into buf (may be NULL). Never raises (usable on any state, in
 * any thread that owns L). Tables with __tostring give their text. */
void oflua__filter_error(lua_State *L, char *buf, size_t len);

/* The park/resume API of server_wait.h as a table of functions. oflua.server
 * puts a pointer to it (light userdata) in the registry of every VM it makes
 * (OFLUA_REG_WAIT_API); oflua__wait_api(L) reads it: NULL outside a server
 * VM (then no handler runs there: do the work synchronously). Other native
 * modules (the store's group commit, blocking calls that must offload) reach
 * the API through here: each module is its own shared object, opened
 * RTLD_LOCAL, so they cannot call oflua_wait_* directly.
 *   offload(L, k, ctx): call before blocking the thread (sleep, network,
 *   disk): a handler running inline on an I/O thread first moves to its
 *   VM's worker thread and k runs there; otherwise k runs at once. */
struct oflua_waiter;
typedef struct oflua_wait_api {
  struct oflua_waiter *(*begin)(lua_State *L, void (*release)(void *ud), void *ud);
  void (*complete)(struct oflua_waiter *w);
  int (*park)(lua_State *L, struct oflua_waiter *w, lua_KFunction k, lua_KContext ctx);
  void (*timer)(struct oflua_waiter *w, double seconds);
  int (*can_park)(lua_State *L);
  int (*offload)(lua_State *L, lua_KFunction k, lua_KContext ctx);
  /* prepared answers (server.answer): answer_ref(L, idx) takes a reference
   * to the one at idx (NULL if idx is not one), answer_unref drops it;
   * complete_answer(w, a) is complete(w) that also answers the parked
   * handler's request with a at once (a NULL: complete) */
  void *(*answer_ref)(lua_State *L, int idx);
  void (*answer_unref)(void *a);
  void (*complete_answer)(struct oflua_waiter *w, void *a);
  /* batch(1) ... batch(0) around the completions of one batch, on one
   * thread: the workers are woken once, at batch(0) (server_wait.h) */
  void (*batch)(int on);
} oflua_wait_api;
#define OFLUA_REG_WAIT_API "oflua.wait_api"
/* The metatable of server.answer's prepared answers (checked by the store). */
#define OFLUA_ANSWER_MT "oflua.server.answer"

static inline const oflua_wait_api *oflua__wait_api(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, OFLUA_REG_WAIT_API);
  const oflua_wait_api *api = (const oflua_wait_api *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return api;
}

/* The tick's doorbell: oflua.server puts one in the registry of its tick
 * VM (OFLUA_REG_TICK_RING; absent elsewhere). ring(ctx), from any thread,
 * never blocking for long, asks the tick thread for a run soon:
 * TICK_RING_GAP_S (server_worker.c) after its previous run ended (at once
 * if that is past) instead of tick_interval after it. Valid while that VM
 * is open. The store rings it when it commits new inbox rows this
 * process's tick can take: handed off to it, or pending (store_group.c). */
typedef struct oflua_tick_ring {
  void (*ring)(void *ctx);
  void *ctx;
} oflua_tick_ring;
#define OFLUA_REG_TICK_RING "oflua.tick_ring"

/* Registry key of the handler loaded by oflua_load_handler. */
#define OFLUA_REG_HANDLER "oflua.handler"

int luaopen_oflua_core(lua_State *L);
int luaopen_oflua_crypto(lua_State *L);
int luaopen_oflua_http(lua_State *L);
int luaopen_oflua_server(lua_State *L);
int luaopen_oflua_store(lua_State *L);

#endif
