/*
 * server_internal.h: what the files of oflua.server share (private).
 *
 *   server.c           the MHD server: connections, limits, listen/stop
 *   server_worker.c    worker VMs (one lua_State per worker) and the tick VM
 *   server_dispatch.c  request/response conversion (no MHD; also used by
 *                      the embedding API, oflua_handle_http)
 *   server_shared.c    server.shared(name) dictionaries
 *   server_log.c       JSON log lines on stderr
 */
#ifndef OFLUA_SERVER_INTERNAL_H
#define OFLUA_SERVER_INTERNAL_H

#include "internal.h"
#include "oflua.h"
#include "util.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include <microhttpd.h>

#define SERVER_MT "oflua.server"
#define SHARED_MT "oflua.shared_dict"
#define REG_WORKER_ID "oflua.server.worker_id"

/* ---- server_log.c ---- */
void srv_log(const char *level, const char *event, int worker_id, const char *k1, const char *v1,
             const char *k2, const char *v2);

/* ---- server_dispatch.c ---- */
/* server.DROP: its address is the sentinel a handler returns as status. */
extern const char srv_drop_sentinel;
#define DROP_STATUS 0
const char *srv_filtered_error(lua_State *L);

/* ---- server_shared.c ---- */
int srv_shared(lua_State *L);
int srv_shared_methods(lua_State *L);

/* ---- server_worker.c / server.c ---- */
typedef struct server server;

typedef struct worker {
  lua_State *L; /* stack: [1] handler, [2] shutdown hook or nil */
  server *srv;
  int id;
} worker;

struct server {
  struct MHD_Daemon *daemon;
  worker *workers;
  int nworkers;
  atomic_int next_worker;
  atomic_long inflight;
  atomic_int stopping;
  int stopped;
  int port;
  char url[128];
  size_t max_body, max_header;
  double grace;
  int handle_signals;
  struct sigaction old_int, old_term;
  struct MHD_Response *r413, *r414, *r431, *r500;
  /* Background VM running the script's tick() every tick_interval seconds
   * (loaded from the same script as the workers, on its own thread). */
  lua_State *tickL;
  pthread_t tick_thread;
  int tick_started;
  double tick_interval;
  int tick_stop;
  pthread_mutex_t tick_mu;
  pthread_cond_t tick_cv;
};

typedef struct load_ctx {
  lua_State *from; /* the listening state; args at index args_idx (0: none) */
  int args_idx;
  const char *script;
  int worker_id;
} load_ctx;

int srv_load_worker(lua_State *L);
void srv_close_workers(server *s);
void *srv_tick_main(void *arg);
void srv_tick_stop(server *s);

#endif
