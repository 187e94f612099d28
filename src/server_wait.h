/*
 * server_wait.h: parking a handler until another thread is done (private C
 * API of oflua.server, for C functions called from Lua handlers: the
 * store's group-commit insert, timers such as server.sleep).
 *
 * A handler runs as a coroutine on its worker VM. A C function it calls can
 * start work elsewhere (another thread), then park the coroutine: the worker
 * goes on with other requests and resumes the coroutine, on the same worker
 * thread, once the work is signalled complete. Outside a server handler (a
 * script, the tick VM, oflua_handle_http, a nested user coroutine) the same
 * calls block the calling thread instead, so a C function needs one code
 * path only.
 *
 * Code outside the server module (another native module: each is its own
 * shared object, opened RTLD_LOCAL) uses the same functions through the
 * table oflua__wait_api(L) of internal.h (NULL outside a server VM).
 *
 * Usage, in a lua_CFunction f(L):
 *
 *     struct my_op *op = ...;                  // results go here
 *     oflua_waiter *w = oflua_wait_begin(L, my_op_release, op);  // may raise
 *     submit(op, w);                           // another thread will call
 *                                              // oflua_wait_complete(w)
 *     return oflua_wait_park(L, w, f_k, (lua_KContext)op);  // last statement
 *
 *     static int f_k(lua_State *L, int status, lua_KContext ctx) {
 *       struct my_op *op = (struct my_op *)ctx;  // push results from op
 *       ...; return nresults;
 *     }
 *
 * Threading rules:
 *  - oflua_wait_begin and oflua_wait_park run on the thread that runs L,
 *    in a C function called from Lua; begin raises only before anything is
 *    registered (out of memory); nothing may raise between begin and park
 *    (submit must not raise: do allocations before begin).
 *  - oflua_wait_complete is called exactly once per waiter, from any thread
 *    (also before park has run, or from inside submit); after it returns,
 *    the caller must not touch w.
 *  - k runs on L's thread, after complete, with the results in your context;
 *    nothing else of yours runs on L in between.
 *  - release(ud) runs exactly once, on any thread, when both sides are done
 *    with the waiter: after k has run, or when the handler was abandoned
 *    (its time limit passed or the server stopped) and complete has been
 *    called. Free your context there, never in k. If the handler was
 *    abandoned, k never runs.
 *  - A parked handler still counts against its handler_timeout: past it,
 *    the request is answered 503 and the coroutine abandoned.
 */
#ifndef OFLUA_SERVER_WAIT_H
#define OFLUA_SERVER_WAIT_H

#include <lua.h>

typedef struct oflua_waiter oflua_waiter;

oflua_waiter *oflua_wait_begin(lua_State *L, void (*release)(void *ud), void *ud);
void oflua_wait_complete(oflua_waiter *w);
/* oflua_wait_complete that, when the handler is parked (its connection
 * suspended) and nothing answered it yet, first answers its request with
 * `answer` (a prepared answer, server.answer: see oflua__wait_api's
 * answer_ref). The handler still resumes; what it then returns is dropped.
 * Else (the wait ended before the park, the handler runs inline or blocks)
 * it is oflua_wait_complete. */
void oflua_wait_complete_answer(oflua_waiter *w, void *answer);
/* oflua_wait_batch(1) ... oflua_wait_batch(0), on one thread, around the
 * completions of a batch (a committer answering the waiters of one
 * commit): the handlers are resumed as usual, but their sleeping workers
 * are woken once, at oflua_wait_batch(0), not once per completion. */
void oflua_wait_batch(int on);
int oflua_wait_park(lua_State *L, oflua_waiter *w, lua_KFunction k, lua_KContext ctx);

/* Call before blocking the thread (a C call that may take long and cannot
 * park): return oflua_wait_offload(L, k, ctx) as the last statement. When
 * the handler runs inline on an I/O thread (the fast path) it first moves
 * to its VM's worker thread and k runs there; otherwise k runs at once.
 * (oflua__wait_api(L)->offload in internal.h is the same function for code
 * outside the server module.) */
int oflua_wait_offload(lua_State *L, lua_KFunction k, lua_KContext ctx);

/* Completes w after `seconds` (a process-wide timer thread). */
void oflua_wait_timer(oflua_waiter *w, double seconds);

/* 1 when L is a handler coroutine that can park (else park blocks). */
int oflua_wait_can_park(lua_State *L);

#endif
