/*
 * server_worker.c: the Lua side of oflua.server.
 *
 *  - Worker threads, one lua_State each (loaded from the same script with
 *    the same args), take complete requests from one run queue. MHD's I/O
 *    threads never run Lua: they suspend a connection while its request
 *    waits or runs, and the worker resumes it with the answer (server.c).
 *  - A handler runs as a coroutine of its worker's VM (coroutines are
 *    reused). It may park (server_wait.h: a C function waits for another
 *    thread, e.g. server.sleep or a group commit) and the worker goes on
 *    with other requests; the parked coroutine is resumed on the same
 *    worker once its wait completes.
 *  - Time limit: a count hook checks the request's deadline (its arrival
 *    plus handler_timeout) every HOOK_COUNT instructions; past it, the
 *    coroutine is yielded out of (or, where it cannot yield, an error is
 *    raised; from then on the hook runs on every instruction so that a
 *    pcall cannot keep it alive), the request is answered 503 and the
 *    coroutine reset. A
 *    handler stuck in a blocking C call is answered 503 by the monitor
 *    thread (server.c); its worker is lost until the call returns.
 *  - The tick VM runs the script's tick() on its own thread.
 */
#include "server_internal.h"
#include "server_wait.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
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

/* Shutdown hooks run on the stopping thread, each for at most
 * SHUTDOWN_LIMIT seconds of Lua (a count hook; a blocking C call is not
 * interrupted). */
#define SHUTDOWN_LIMIT 2.0
static _Thread_local double shutdown_deadline = 0;

static void shutdown_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (oflua__mono_now() < shutdown_deadline) return;
  lua_sethook(L, shutdown_hook, LUA_MASKCOUNT, 1); /* again at once if a pcall catches it */
  luaL_error(L, "shutdown hook time limit exceeded");
}

/* Runs the shutdown hook at [2] of L (protected) and logs its error. */
static void shutdown_vm(lua_State *L, int id) {
  shutdown_deadline = oflua__mono_now() + SHUTDOWN_LIMIT;
  lua_sethook(L, shutdown_hook, LUA_MASKCOUNT, 1000);
  lua_settop(L, 2);
  lua_pushcfunction(L, oflua__msgh);
  lua_pushcfunction(L, run_shutdown);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  if (lua_pcall(L, 2, 0, 3) != LUA_OK) {
    char err[2048];
    oflua__filter_error(L, err, sizeof err);
    srv_log("error", "shutdown_error", id, "error", err, NULL, NULL);
  }
  lua_sethook(L, NULL, 0, 0);
}

/* ==== waiters (server_wait.h) ============================================== */

struct oflua_waiter {
  int refs; /* the completer's and the VM side's: under wait_mu */
  int done;
  job *job; /* the parked handler, or NULL */
  void (*release)(void *ud);
  void *ud;
  /* timer */
  double due;
  oflua_waiter *tnext;
};

static pthread_mutex_t wait_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cv = PTHREAD_COND_INITIALIZER; /* blocking waits */

/* The worker running on this thread (NULL on other threads). */
static _Thread_local worker *tls_worker = NULL;

static void waiter_unref_locked(oflua_waiter *w, int *free_it) {
  *free_it = --w->refs == 0;
}

static void waiter_free(oflua_waiter *w) {
  if (w->release != NULL) w->release(w->ud);
  free(w);
}

static void waiter_unref(oflua_waiter *w) {
  int f;
  pthread_mutex_lock(&wait_mu);
  waiter_unref_locked(w, &f);
  pthread_mutex_unlock(&wait_mu);
  if (f) waiter_free(w);
}

oflua_waiter *oflua_wait_begin(lua_State *L, void (*release)(void *ud), void *ud) {
  oflua_waiter *w = calloc(1, sizeof *w);
  if (w == NULL) {
    if (release != NULL) release(ud);
    luaL_error(L, "out of memory");
    return NULL;
  }
  w->refs = 2;
  w->release = release;
  w->ud = ud;
  return w;
}

static void push_ready(job *j);

void oflua_wait_complete(oflua_waiter *w) {
  int f;
  pthread_mutex_lock(&wait_mu);
  w->done = 1;
  job *j = w->job;
  w->job = NULL;
  if (j != NULL) push_ready(j);
  else pthread_cond_broadcast(&wait_cv);
  waiter_unref_locked(w, &f);
  pthread_mutex_unlock(&wait_mu);
  if (f) waiter_free(w);
}

void oflua_wait_complete_answer(oflua_waiter *w, void *answer) {
  int f;
  pthread_mutex_lock(&wait_mu);
  w->done = 1;
  job *j = w->job;
  w->job = NULL;
  if (j != NULL) {
    /* under wait_mu: j (registered here) and its server stay alive */
    if (answer != NULL) srv_answer_early(j, answer);
    push_ready(j);
  } else {
    pthread_cond_broadcast(&wait_cv);
  }
  waiter_unref_locked(w, &f);
  pthread_mutex_unlock(&wait_mu);
  if (f) waiter_free(w);
}

int oflua_wait_can_park(lua_State *L) {
  worker *w = tls_worker;
  return w != NULL && w->cur != NULL && L == w->cur_co && w->cur->waiter == NULL &&
         lua_isyieldable(L);
}

int oflua_wait_park(lua_State *L, oflua_waiter *w, lua_KFunction k, lua_KContext ctx) {
  if (oflua_wait_can_park(L)) {
    tls_worker->cur->waiter = w; /* registered by the worker once yielded */
    return lua_yieldk(L, 0, ctx, k);
  }
  pthread_mutex_lock(&wait_mu);
  while (!w->done) pthread_cond_wait(&wait_cv, &wait_mu);
  pthread_mutex_unlock(&wait_mu);
  int n = k(L, LUA_OK, ctx);
  waiter_unref(w);
  return n;
}

/* ---- the timer thread ------------------------------------------------------ */

static pthread_mutex_t timer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t timer_cv;
static oflua_waiter *timer_head = NULL; /* sorted by due */
static pthread_once_t timer_once = PTHREAD_ONCE_INIT;
static int timer_ok = 0;

static void *timer_main(void *arg) {
  oflua__thread_name("oflua-timer");
  (void)arg;
  pthread_mutex_lock(&timer_mu);
  for (;;) {
    double now = oflua__mono_now();
    while (timer_head != NULL && timer_head->due <= now) {
      oflua_waiter *w = timer_head;
      timer_head = w->tnext;
      pthread_mutex_unlock(&timer_mu);
      oflua_wait_complete(w);
      pthread_mutex_lock(&timer_mu);
    }
    if (timer_head == NULL) {
      pthread_cond_wait(&timer_cv, &timer_mu);
    } else {
      struct timespec ts;
      oflua__mono_deadline(&ts, timer_head->due - now);
      pthread_cond_timedwait(&timer_cv, &timer_mu, &ts);
    }
  }
  return NULL;
}

static void timer_init(void) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&timer_cv, &ca);
  pthread_condattr_destroy(&ca);
  timer_ok = oflua__thread_start(NULL, timer_main, NULL) == 0;
}

void oflua_wait_timer(oflua_waiter *w, double seconds) {
  pthread_once(&timer_once, timer_init);
  if (!timer_ok) { /* no thread: complete at once rather than never */
    oflua_wait_complete(w);
    return;
  }
  w->due = oflua__mono_now() + (seconds > 0 ? seconds : 0);
  pthread_mutex_lock(&timer_mu);
  oflua_waiter **p = &timer_head;
  while (*p != NULL && (*p)->due <= w->due) p = &(*p)->tnext;
  w->tnext = *p;
  *p = w;
  pthread_cond_signal(&timer_cv);
  pthread_mutex_unlock(&timer_mu);
}

/* server.sleep(seconds): parks the handler (the worker serves others
 * meanwhile); outside a handler it simply sleeps. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L, (void)status, (void)ctx;
  return 0;
}

int srv_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s <= 86400, 1, "seconds must be within [0, 86400]");
  oflua_waiter *w = oflua_wait_begin(L, NULL, NULL);
  oflua_wait_timer(w, (double)s);
  return oflua_wait_park(L, w, sleep_k, 0);
}

/* ==== the run queue ======================================================== */

void srv_enqueue(server *s, job *j) {
  atomic_fetch_add(&j->refs, 1); /* the worker's */
  j->qnext = NULL;
  pthread_mutex_lock(&s->qmu);
  if (s->qtail != NULL) s->qtail->qnext = j;
  else s->qhead = j;
  s->qtail = j;
  /* Workers wait on different conditions (one shared qcv): broadcast, but
   * only when a worker that could take the job sleeps; a busy one looks at
   * the queue before it sleeps again. */
  for (int i = 0; i < s->nworkers; i++)
    if (s->workers[i].waiting && !s->workers[i].busy) {
      pthread_cond_broadcast(&s->qcv);
      break;
    }
  pthread_mutex_unlock(&s->qmu);
}

/* A parked job whose wait completed goes to its worker's ready list
 * (called with wait_mu held). */
static worker *job_worker(job *j);
/* Between oflua_wait_batch(1) and oflua_wait_batch(0) (a committer
 * completing the waiters of one batch), the wakes of sleeping workers wait
 * until the batch ends: its answers go out first, and each worker is woken
 * once per batch rather than once per request (each wake would preempt the
 * committer). The jobs are on their ready lists at once. */
#define DEFER_MAX 8
static _Thread_local int defer_on, ndefer;
static _Thread_local server *defer_srv[DEFER_MAX];

/* (with s->qmu) 1: s's workers are woken when the batch ends */
static int defer_wake(server *s) {
  if (!defer_on) return 0;
  for (int i = 0; i < ndefer; i++)
    if (defer_srv[i] == s) return 1;
  if (ndefer == DEFER_MAX) return 0;
  atomic_fetch_add(&s->deferred_wakes, 1); /* server_free waits for it */
  defer_srv[ndefer++] = s;
  return 1;
}

void oflua_wait_batch(int on) {
  if (on) {
    defer_on = 1;
    return;
  }
  defer_on = 0;
  for (int i = 0; i < ndefer; i++) {
    server *s = defer_srv[i];
    pthread_mutex_lock(&s->qmu);
    pthread_cond_broadcast(&s->qcv);
    pthread_mutex_unlock(&s->qmu);
    atomic_fetch_sub(&s->deferred_wakes, 1);
  }
  ndefer = 0;
}

static void push_ready(job *j) {
  worker *w = job_worker(j);
  server *s = j->srv;
  pthread_mutex_lock(&s->qmu);
  j->qnext = w->ready;
  w->ready = j;
  j->on_ready = 1;
  /* A worker that is running sees its ready list before it sleeps; one
   * lent to an I/O thread is woken when the VM is handed back
   * (srv_release_vm). */
  if (w->waiting && !w->busy && !defer_wake(s)) pthread_cond_broadcast(&s->qcv);
  pthread_mutex_unlock(&s->qmu);
}

/* ==== running handlers ===================================================== */

#define HOOK_COUNT 1000

/* A worker thread never sleeps longer than this: it then looks at the
 * deadlines of the jobs parked on its VM (abandoned once past). So an I/O
 * thread that parks a job on a borrowed VM wakes the worker only when that
 * job's deadline comes sooner (a handler_timeout under this); otherwise each
 * inline handler that parks (every durable delivery) would wake it for
 * nothing. Idle, each worker wakes once per WORKER_WATCH_S. */
#define WORKER_WATCH_S 1.0

/* The worker a parked job belongs to: its coroutine's VM. Kept in the
 * coroutine's extra space (set when the coroutine is made). */
static worker *job_worker(job *j) { return *(worker **)lua_getextraspace(j->co); }

static void handler_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  worker *w = tls_worker;
  if (w == NULL || w->cur == NULL) return;
  job *j = w->cur;
  double now = oflua__mono_now();
  if (!atomic_load(&w->srv->abort_handlers) && now < j->deadline) {
    /* inline on an I/O thread: past its slice the handler moves to a worker */
    if (j->slice_end > 0 && now >= j->slice_end && L == w->cur_co && lua_isyieldable(L)) {
      j->sliced = 1;
      lua_yield(L, 0);
    }
    return;
  }
  if (!j->timed_out) {
    /* from now on the hook runs on every instruction: where the handler
     * cannot yield (a callback called from C) the error below is raised
     * again at once, and the first instruction back in yieldable code
     * yields, so a pcall cannot keep it alive for long */
    j->timed_out = 1;
    lua_sethook(L, handler_hook, LUA_MASKCOUNT, 1);
    if (w->cur_co != NULL && w->cur_co != L) lua_sethook(w->cur_co, handler_hook, LUA_MASKCOUNT, 1);
  }
  if (L == w->cur_co && lua_isyieldable(L)) {
    lua_yield(L, 0); /* in a hook: returns, and Lua yields once the hook is done */
    return;
  }
  luaL_error(L, "handler time limit exceeded");
}

/* On the worker VM, protected, only when no coroutine is cached: makes one. */
static int new_coroutine(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  lua_State *co = lua_newthread(L);
  *(worker **)lua_getextraspace(co) = w;
  lua_sethook(co, handler_hook, LUA_MASKCOUNT, HOOK_COUNT);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  w->idle_co[w->nidle] = co;
  w->idle_ref[w->nidle] = ref;
  w->nidle++;
  return 0;
}

/* The body of a handler coroutine: [1] job, [2] handler. Builds req, calls
 * the handler (yieldable: lua_callk) and converts its results into
 * j->resp, so one resume does it all. */
static int co_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  job *j = (job *)ctx;
  /* answered early (set before the resume that led here): what the handler
   * returns has nowhere to go, so it is not converted */
  if (j->prep == NULL) srv_take_response(L, lua_gettop(L) - 2, &j->resp);
  return 0;
}

static int co_body(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  int n = srv_push_callable(L, 2);
  srv_push_request(L, &j->req);
  lua_callk(L, n, 3, (lua_KContext)j, co_body_k);
  return co_body_k(L, LUA_OK, (lua_KContext)j);
}

static void co_release(worker *w, lua_State *co, int ref, int ok) {
  if (!ok) lua_resetthread(co);
  lua_settop(co, 0);
  lua_sethook(co, handler_hook, LUA_MASKCOUNT, HOOK_COUNT); /* 1 after a time limit */
  if (w->nidle < WORKER_CO_CACHE) {
    w->idle_co[w->nidle] = co;
    w->idle_ref[w->nidle] = ref;
    w->nidle++;
  } else {
    luaL_unref(w->L, LUA_REGISTRYINDEX, ref);
  }
}

static int traceback_of(lua_State *L) {
  lua_State *co = lua_touserdata(L, 1);
  luaL_traceback(L, co, lua_tostring(L, 2), 0);
  return 1;
}

/* The job ended (answered or abandoned): release the waiter's VM side and
 * the worker's reference. */
static void job_done(worker *w, job *j, int co_ok) {
  if (j->waiter != NULL) {
    oflua_waiter *wt = j->waiter;
    j->waiter = NULL;
    pthread_mutex_lock(&wait_mu);
    wt->job = NULL;
    pthread_mutex_unlock(&wait_mu);
    waiter_unref(wt);
  }
  /* (detached from its waiter: no early answer can come any more; one that
   * came was set under wait_mu, taken above or before the resume) */
  if (j->prep != NULL) atomic_fetch_sub(&w->srv->early_running, 1);
  if (j->co != NULL) co_release(w, j->co, j->co_ref, co_ok);
  j->co = NULL;
  w->cur = NULL;
  w->cur_co = NULL;
  srv_job_unref(j);
}

static void parked_remove(worker *w, job *j) {
  if (j->pprev != NULL) j->pprev->pnext = j->pnext;
  else w->parked = j->pnext;
  if (j->pnext != NULL) j->pnext->pprev = j->pprev;
  j->pprev = j->pnext = NULL;
}

static void abandon(worker *w, job *j, const char *why) {
  if (j->prep != NULL) { /* its client has its answer: only the rest is cut */
    srv_log("warn", "handler_cut_after_answer", w->id, "reason", why, NULL, NULL);
  } else {
    /* counted before our answer can reach the client. Not when the
     * monitor answered it first (it counted and logged that) or its client
     * went away; but a stop past its grace answers every request 503
     * without counting them: the handlers it cuts count here */
    atomic_fetch_add(&w->srv->n_handler_timeouts, 1);
    if (srv_answer_status(j, 503) || atomic_load(&w->srv->abort_handlers))
      srv_log("error", "handler_timeout", w->id, "reason", why, NULL, NULL);
    else
      atomic_fetch_sub(&w->srv->n_handler_timeouts, 1);
  }
  job_done(w, j, 0);
}

/* After lua_resume of job j returned st with nres results on co. */
static void after_resume(worker *w, job *j, int st, int nres) {
  lua_State *L = w->L, *co = j->co;
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (j->timed_out) {
      abandon(w, j, atomic_load(&w->srv->abort_handlers) ? "server stopping" : "time limit");
      return;
    }
    if (j->sliced) { /* continue on this VM's worker thread */
      j->sliced = 0;
      j->slice_end = 0;
      pthread_mutex_lock(&w->srv->qmu);
      w->pending = j;
      pthread_mutex_unlock(&w->srv->qmu);
      w->cur = NULL;
      w->cur_co = NULL;
      return;
    }
    oflua_waiter *wt = j->waiter;
    if (wt == NULL) { /* a bare coroutine.yield() in the handler */
      srv_log("error", "handler_error", w->id, "error",
              "the handler yielded outside a server wait (coroutine.yield at top level)", NULL,
              NULL);
      srv_answer_status(j, 500);
      job_done(w, j, 0);
      return;
    }
    /* parked: register, unless the wait is already complete; the slice of
     * an inline run ends here (whoever resumes it sets its own) */
    j->slice_end = 0;
    int ready;
    pthread_mutex_lock(&wait_mu);
    ready = wt->done;
    if (!ready) wt->job = j;
    pthread_mutex_unlock(&wait_mu);
    j->pnext = w->parked;
    j->pprev = NULL;
    if (w->parked != NULL) w->parked->pprev = j;
    w->parked = j;
    if (w->parked_soonest == 0 || j->deadline < w->parked_soonest) w->parked_soonest = j->deadline;
    w->cur = NULL;
    w->cur_co = NULL;
    if (ready) {
      pthread_mutex_lock(&w->srv->qmu);
      j->qnext = w->ready;
      w->ready = j;
      j->on_ready = 1;
      pthread_mutex_unlock(&w->srv->qmu);
    }
    return;
  }
  int top = lua_gettop(L);
  if (st == LUA_OK) {
    lua_settop(co, 0);
    oflua_http_response *resp = &j->resp;
    if (j->prep != NULL) {
      /* answered early (srv_answer_early, before the resume that led
       * here): co_body_k left resp empty (its status reads as DROP_STATUS) */
    } else if (resp->status == DROP_STATUS) {
      srv_answer(j, 0, NULL, 0);
    } else {
      struct MHD_Response *mr = srv_build_response(w->srv, resp, w->id);
      if (mr == NULL) srv_answer_status(j, 500);
      else srv_answer(j, (unsigned)resp->status, mr, 1);
    }
    oflua_http_response_free(resp);
    job_done(w, j, 1);
    return;
  }
  oflua_http_response_free(&j->resp);
  /* an error: message with the coroutine's traceback, filtered */
  char err[4096] = "error";
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, traceback_of);
    lua_pushlightuserdata(L, co);
    lua_xmove(co, L, 1);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "error (no traceback: out of memory)");
    }
    oflua__filter_error(L, err, sizeof err);
  }
  lua_settop(L, top);
  if (j->timed_out) {
    abandon(w, j, atomic_load(&w->srv->abort_handlers) ? "server stopping" : "time limit");
    return;
  }
  srv_log("error", "handler_error", w->id, "method", j->req.method, "error", err);
  srv_answer_status(j, 500);
  job_done(w, j, 0);
}

static int job_answered(job *j) {
  pthread_mutex_lock(&j->srv->mu);
  int a = j->answered;
  pthread_mutex_unlock(&j->srv->mu);
  return a;
}

/* Answered, and not with a prepared answer (srv_answer_early): nothing
 * wants the handler's rest (a 503 went out: its time ran out, the server
 * stops). A handler answered early still runs to its end. */
static int job_dropped(job *j) {
  pthread_mutex_lock(&j->srv->mu);
  int d = j->answered && j->prep == NULL;
  pthread_mutex_unlock(&j->srv->mu);
  return d;
}

static void start_job(worker *w, job *j) {
  if (!j->inline_run && job_answered(j)) { /* answered (503) while it waited */
    srv_job_unref(j);
    return;
  }
  lua_State *L = w->L;
  lua_settop(L, 2);
  if (w->nidle == 0) {
    lua_pushcfunction(L, new_coroutine);
    lua_pushlightuserdata(L, w);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      char err[256];
      oflua__filter_error(L, err, sizeof err);
      srv_log("error", "handler_error", w->id, "method", j->req.method, "error", err);
      srv_answer_status(j, 500);
      job_done(w, j, 0);
      return;
    }
  }
  w->nidle--;
  lua_State *co = w->idle_co[w->nidle];
  j->co = co;
  j->co_ref = w->idle_ref[w->nidle];
  /* a cached coroutine has room for these (no allocation, cannot raise) */
  lua_pushcfunction(co, co_body);
  lua_pushlightuserdata(co, j);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  w->cur = j;
  w->cur_co = co;
  int nres = 0;
  int st = lua_resume(co, L, 2, &nres);
  after_resume(w, j, st, nres);
  lua_settop(L, 2);
}

static void resume_job(worker *w, job *j) {
  parked_remove(w, j);
  if (job_dropped(j)) { /* timed out while parked (monitor answered) */
    job_done(w, j, 0);
    return;
  }
  if (j->waiter != NULL) { /* the wait's VM side is done once resumed */
    oflua_waiter *wt = j->waiter;
    j->waiter = NULL;
    pthread_mutex_lock(&wait_mu);
    wt->job = NULL;
    pthread_mutex_unlock(&wait_mu);
    w->cur = j;
    w->cur_co = j->co;
    int nres = 0;
    int st = lua_resume(j->co, w->L, 0, &nres);
    waiter_unref(wt); /* after k has run */
    after_resume(w, j, st, nres);
  }
  lua_settop(w->L, 2);
}

/* A handler moved off an I/O thread (its slice ran out or it offloaded
 * before a blocking call): resume it here. */
static void continue_job(worker *w, job *j) {
  if (job_dropped(j)) {
    job_done(w, j, 0);
    return;
  }
  w->cur = j;
  w->cur_co = j->co;
  int nres = 0;
  int st = lua_resume(j->co, w->L, 0, &nres);
  after_resume(w, j, st, nres);
  lua_settop(w->L, 2);
}

worker *srv_borrow_vm(server *s) {
  /* Each I/O thread starts its search at a VM of its own, so that a VM
   * mostly runs on one thread: its memory stays in that thread's malloc
   * arena and cache instead of being freed across threads. */
  static atomic_uint next_slot;
  static _Thread_local unsigned slot = UINT_MAX;
  if (slot == UINT_MAX) slot = atomic_fetch_add(&next_slot, 1) % 1024u;
  worker *found = NULL;
  pthread_mutex_lock(&s->qmu);
  if (s->qhead == NULL && !s->qstop)
    for (int k = 0; k < s->nworkers; k++) {
      worker *w = &s->workers[(int)((slot + (unsigned)k) % (unsigned)s->nworkers)];
      if (!w->busy && w->pending == NULL && w->ready == NULL) {
        w->busy = 1;
        found = w;
        break;
      }
    }
  pthread_mutex_unlock(&s->qmu);
  return found;
}

void srv_release_vm(worker *w) {
  server *s = w->srv;
  pthread_mutex_lock(&s->qmu);
  w->busy = 0;
  /* The worker thread sleeps: wake it for work, or when a parked job is due
   * before its sleep ends (time limits are kept there): one parked here
   * meanwhile, or one it saw parked at its last look (its sleep while the
   * VM was lent did not watch them). Its sleeps last at most
   * WORKER_WATCH_S: a job parked with a later deadline, the usual case,
   * needs no wake. Kept in seen_soonest until its next look (the VM may be
   * lent again when it wakes). */
  double soonest = w->parked_soonest;
  if (w->seen_soonest > 0 && (soonest == 0 || w->seen_soonest < soonest)) soonest = w->seen_soonest;
  int due_sooner = soonest > 0 && soonest < w->wake_at;
  w->seen_soonest = soonest;
  w->parked_soonest = 0;
  if (w->waiting && (w->pending != NULL || w->ready != NULL || s->qhead != NULL || due_sooner))
    pthread_cond_broadcast(&s->qcv);
  pthread_mutex_unlock(&s->qmu);
}

int srv_run_inline(worker *w, job *j, double slice) {
  worker *saved = tls_worker;
  tls_worker = w;
  atomic_fetch_add(&j->refs, 1); /* the VM side's, as srv_enqueue takes */
  j->slice_end = oflua__mono_now() + slice;
  start_job(w, j);
  tls_worker = saved;
  return job_answered(j); /* by this thread, or 503 by the monitor (late) */
}

static int offload(lua_State *L, lua_KFunction k, lua_KContext ctx) {
  worker *w = tls_worker;
  if (w != NULL && w->cur != NULL && w->cur->slice_end > 0 && L == w->cur_co &&
      lua_isyieldable(L)) {
    w->cur->sliced = 1;
    return lua_yieldk(L, 0, ctx, k);
  }
  return k(L, LUA_OK, ctx);
}

int oflua_wait_offload(lua_State *L, lua_KFunction k, lua_KContext ctx) {
  return offload(L, k, ctx);
}

static const oflua_wait_api wait_api = {oflua_wait_begin,   oflua_wait_complete,
                                         oflua_wait_park,    oflua_wait_timer,
                                         oflua_wait_can_park, offload,
                                         srv_prepared_ref,   srv_prepared_unref,
                                         oflua_wait_complete_answer, oflua_wait_batch};

void srv_install_wait_api(lua_State *V) {
  lua_pushlightuserdata(V, (void *)&wait_api);
  lua_setfield(V, LUA_REGISTRYINDEX, OFLUA_REG_WAIT_API);
}

/* The worker thread sleeps (s->qmu held) until woken or until `until`
 * (monotonic seconds), at most WORKER_WATCH_S from now. */
static void worker_sleep(worker *w, server *s, double now, double until) {
  if (until == 0 || until > now + WORKER_WATCH_S) until = now + WORKER_WATCH_S;
  struct timespec ts;
  oflua__mono_deadline(&ts, until - now + 0.001);
  w->waiting = 1;
  w->wake_at = until;
  pthread_cond_timedwait(&s->qcv, &s->qmu, &ts);
  w->waiting = 0;
}

static void *worker_main(void *arg) {
  oflua__thread_name("oflua-worker");
  worker *w = arg;
  server *s = w->srv;
  tls_worker = w;
  pthread_mutex_lock(&s->qmu);
  for (;;) {
    if (w->busy) { /* lent to an I/O thread for an inline run */
      worker_sleep(w, s, oflua__mono_now(), 0); /* parked jobs are not watched while lent */
      continue;
    }
    if (w->pending != NULL) {
      job *j = w->pending;
      w->pending = NULL;
      w->busy = 1;
      pthread_mutex_unlock(&s->qmu);
      continue_job(w, j);
      pthread_mutex_lock(&s->qmu);
      w->busy = 0;
      continue;
    }
    if (w->ready != NULL) {
      job *j = w->ready;
      w->ready = j->qnext;
      j->on_ready = 0;
      w->busy = 1;
      pthread_mutex_unlock(&s->qmu);
      resume_job(w, j);
      pthread_mutex_lock(&s->qmu);
      w->busy = 0;
      continue;
    }
    if (s->qhead != NULL && !s->qstop) {
      job *j = s->qhead;
      s->qhead = j->qnext;
      if (s->qhead == NULL) s->qtail = NULL;
      w->busy = 1;
      pthread_mutex_unlock(&s->qmu);
      start_job(w, j);
      pthread_mutex_lock(&s->qmu);
      w->busy = 0;
      continue;
    }
    /* parked jobs past their deadline (or all, when stopping). A job whose
     * wait completed is on the ready list (resumed above, where the hook
     * cuts it if it is late): only the ready list finishes it. */
    double now = oflua__mono_now(), next = 0;
    w->parked_soonest = 0; /* every parked job is looked at here */
    job *p = w->parked;
    int expired = 0;
    while (p != NULL) {
      job *pn = p->pnext;
      if (p->on_ready) {
        p = pn;
        continue;
      }
      if (s->qstop || p->deadline <= now) {
        w->busy = 1; /* the VM is in use: no I/O thread may borrow it */
        pthread_mutex_unlock(&s->qmu);
        /* detach the waiter first: from then on its completion no longer
         * queues the job; if it already did, the ready list has it */
        pthread_mutex_lock(&wait_mu);
        if (p->waiter != NULL) p->waiter->job = NULL;
        pthread_mutex_unlock(&wait_mu);
        pthread_mutex_lock(&s->qmu);
        int queued = p->on_ready;
        pthread_mutex_unlock(&s->qmu);
        if (!queued) {
          parked_remove(w, p);
          abandon(w, p, s->qstop ? "server stopping" : "time limit (parked)");
        }
        pthread_mutex_lock(&s->qmu);
        w->busy = 0;
        expired = 1;
        break; /* the lists may have changed: look again */
      }
      if (next == 0 || p->deadline < next) next = p->deadline;
      p = pn;
    }
    if (expired) continue;
    w->seen_soonest = next;
    if (s->qstop) {
      /* drop what is still queued (answered by stop) */
      while (s->qhead != NULL) {
        job *j = s->qhead;
        s->qhead = j->qnext;
        pthread_mutex_unlock(&s->qmu);
        srv_answer_status(j, 503);
        srv_job_unref(j);
        pthread_mutex_lock(&s->qmu);
      }
      s->qtail = NULL;
      break;
    }
    worker_sleep(w, s, now, next);
  }
  atomic_store(&w->exited, 1);
  pthread_cond_broadcast(&s->exit_cv);
  pthread_mutex_unlock(&s->qmu);
  return NULL;
}

int srv_workers_start(server *s, char *err, size_t errlen) {
  for (int i = 0; i < s->nworkers; i++) {
    if (oflua__thread_start(&s->workers[i].thread, worker_main, &s->workers[i]) != 0) {
      snprintf(err, errlen, "cannot start worker thread %d", i + 1);
      return -1;
    }
    s->workers[i].started = 1;
  }
  return 0;
}

int srv_workers_stop(server *s, double deadline) {
  int stuck = 0;
  pthread_mutex_lock(&s->qmu);
  s->qstop = 1;
  pthread_cond_broadcast(&s->qcv);
  for (;;) {
    int running = 0;
    for (int i = 0; i < s->nworkers; i++)
      if (s->workers[i].started && !atomic_load(&s->workers[i].exited)) running++;
    if (running == 0) break;
    double left = deadline - oflua__mono_now();
    if (left <= 0) {
      stuck = running;
      break;
    }
    struct timespec ts;
    oflua__mono_deadline(&ts, left < 0.05 ? left : 0.05);
    pthread_cond_timedwait(&s->exit_cv, &s->qmu, &ts);
    pthread_cond_broadcast(&s->qcv);
  }
  pthread_mutex_unlock(&s->qmu);
  if (stuck) {
    srv_log("error", "workers_stuck", 0, "detail",
            "a handler is blocked in a C call: its worker is abandoned", NULL, NULL);
    for (int i = 0; i < s->nworkers; i++)
      if (s->workers[i].started) pthread_detach(s->workers[i].thread);
    return -1; /* keep every VM: a stuck thread may still use its own */
  }
  for (int i = 0; i < s->nworkers; i++) {
    worker *w = &s->workers[i];
    if (w->started) pthread_join(w->thread, NULL);
    w->started = 0;
    if (w->L == NULL) continue;
    shutdown_vm(w->L, w->id);
    oflua__state_close(w->L);
    w->L = NULL;
  }
  return 0;
}

/* ---- tick ---------------------------------------------------------------- */

/* The soonest a rung tick runs after its previous run ended. New events
 * handed to the tick (the webhook app's background mode) ring it, so that
 * it runs them in small batches as they come instead of in a burst every
 * tick_interval (a burst holds one of the machine's cores for as long: the
 * deliveries arriving meanwhile wait for CPU, which is what made the
 * durable path's p99), and sooner (not up to tick_interval after their
 * commit). The gap coalesces the rings of a busy stream. Measured on the
 * durable path (25k deliveries/s): p99 5.3-5.7 ms at 2 ms, 5.5-5.7 at 5,
 * 6.2-6.4 at 10, 6.7-7.3 at 20; the tick's CPU per event +1 us from 20 ms
 * to 2 ms (more, smaller runs), the total within the noise. */
#define TICK_RING_GAP_S 0.005

void srv_tick_ring(void *ctx) {
  server *s = ctx;
  if (atomic_exchange(&s->tick_rung, 1)) return; /* rung already, no run began since */
  pthread_mutex_lock(&s->tick_mu);
  pthread_cond_broadcast(&s->tick_cv);
  pthread_mutex_unlock(&s->tick_mu);
}

void *srv_tick_main(void *arg) {
  oflua__thread_name("oflua-tick");
  server *s = arg;
  lua_State *L = s->tickL; /* stack: [1] handler, [2] shutdown, [3] tick */
  pthread_mutex_lock(&s->tick_mu);
  double last_end = oflua__mono_now() - s->tick_interval; /* the first run: at once */
  for (;;) {
    while (!s->tick_stop) {
      double due = last_end + s->tick_interval;
      if (atomic_load(&s->tick_rung) && last_end + TICK_RING_GAP_S < due)
        due = last_end + TICK_RING_GAP_S;
      double left = due - oflua__mono_now();
      if (left <= 0) break;
      struct timespec until; /* the condvar waits on the monotonic clock */
      oflua__mono_deadline(&until, left);
      pthread_cond_timedwait(&s->tick_cv, &s->tick_mu, &until);
    }
    if (s->tick_stop) break;
    atomic_store(&s->tick_rung, 0);
    pthread_mutex_unlock(&s->tick_mu);
    lua_settop(L, 3);
    lua_pushcfunction(L, oflua__msgh);
    lua_pushvalue(L, 3);
    if (lua_pcall(L, 0, 0, 4) != LUA_OK) {
      char err[4096];
      oflua__filter_error(L, err, sizeof err);
      srv_log("error", "tick_error", 0, "error", err, NULL, NULL);
    }
    lua_settop(L, 3);
    last_end = oflua__mono_now();
    pthread_mutex_lock(&s->tick_mu);
  }
  atomic_store(&s->tick_exited, 1);
  pthread_cond_broadcast(&s->tick_cv);
  pthread_mutex_unlock(&s->tick_mu);
  return NULL;
}

/* Asks the tick thread to stop after the tick in progress (no wait). */
void srv_tick_signal(server *s) {
  if (!s->tick_started) return;
  pthread_mutex_lock(&s->tick_mu);
  s->tick_stop = 1;
  pthread_cond_broadcast(&s->tick_cv);
  pthread_mutex_unlock(&s->tick_mu);
}

/* Stops the tick thread (a tick in progress may finish until deadline) and
 * closes its VM after running the shutdown hook there too. -1: stuck. */
int srv_tick_stop(server *s, double deadline) {
  if (s->tick_started) {
    pthread_mutex_lock(&s->tick_mu);
    s->tick_stop = 1;
    pthread_cond_broadcast(&s->tick_cv);
    while (!atomic_load(&s->tick_exited)) {
      double left = deadline - oflua__mono_now();
      if (left <= 0) break;
      struct timespec ts;
      oflua__mono_deadline(&ts, left);
      pthread_cond_timedwait(&s->tick_cv, &s->tick_mu, &ts);
    }
    int exited = atomic_load(&s->tick_exited);
    pthread_mutex_unlock(&s->tick_mu);
    if (!exited) {
      srv_log("error", "tick_stuck", 0, "detail", "the tick did not finish in time", NULL, NULL);
      pthread_detach(s->tick_thread);
      s->tick_started = 0;
      return -1;
    }
    pthread_join(s->tick_thread, NULL);
    s->tick_started = 0;
  }
  if (s->tickL != NULL) {
    shutdown_vm(s->tickL, 0);
    oflua__state_close(s->tickL);
    s->tickL = NULL;
    pthread_cond_destroy(&s->tick_cv);
    pthread_mutex_destroy(&s->tick_mu);
  }
  return 0;
}
