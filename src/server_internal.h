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
#define REG_STOPPING "oflua.server.stopping"

/* ---- server_log.c ---- */
void srv_log(const char *level, const char *event, int worker_id, const char *k1, const char *v1,
             const char *k2, const char *v2);

/* ---- server_dispatch.c ---- */
/* server.DROP: its address is the sentinel a handler returns as status. */
extern const char srv_drop_sentinel;
#define DROP_STATUS 0

/* ---- server_shared.c ---- */
int srv_shared(lua_State *L);
int srv_shared_methods(lua_State *L);

/* ---- server_worker.c / server.c ---- */
typedef struct server server;
typedef struct worker worker;
typedef struct job job;
typedef struct conn_track conn_track;
typedef struct ip_share ip_share;

/* Body bytes reserved by the requests of one client address (server.c),
 * in the server's table under ip_mu. */
struct ip_share {
  ip_share *next;
  unsigned char addr[16];
  int family;
  size_t used;
  int refs; /* jobs holding a reservation here */
};
#define IP_BUCKETS 256
struct oflua_waiter;

/* One TCP connection, from MHD's "started" to its "closed" notification
 * (server.c): the monitor thread closes it (shutdown(2)) when the deadline
 * of the phase it is in passes. */
struct conn_track {
  conn_track *prev, *next; /* server's list, under conn_mu */
  int fd;
  int killed;
  atomic_llong deadline_ms; /* monotonic ms; 0: none */
  atomic_int phase;         /* PHASE_* */
  char addr[46];            /* the client's address as text (INET6_ADDRSTRLEN), once */
};
enum { PHASE_NONE = 0, PHASE_HEAD, PHASE_BODY };

/* One request, from the URI callback to the completion callback (MHD side)
 * and from the queue to its answer (worker side): reference counted. */
struct job {
  job *prev, *next;   /* server's unanswered in-flight list, or its list of jobs
                         running inline (inline_run), under srv->mu */
  job *qnext;         /* run queue or a worker's ready list, under srv->qmu */
  int on_ready;       /* on its worker's ready list (under srv->qmu) */
  job *pprev, *pnext; /* a worker's parked list (worker thread only) */
  atomic_int refs;
  server *srv;
  struct MHD_Connection *conn;
  conn_track *ct;
  int state; /* JOB_* (MHD thread) */
  int queued_inflight;
  /* answer: under srv->mu */
  int answered;
  unsigned status; /* 0 with mr NULL: close without an answer */
  struct MHD_Response *mr;
  int mr_owned;
  struct srv_prepared *prep; /* the prepared answer sent (srv_answer_early): one reference */
  double deadline; /* monotonic: the answer is due (handler_timeout) */
  /* request, and the handler's response */
  oflua_http_request req;
  oflua_http_response resp;
  char *mem; /* headers array and strings */
  size_t head_count, head_bytes; /* the head's headers, as on_head counted them */
  char *body;
  size_t body_len, body_cap, reserved;
  size_t body_want; /* announced Content-Length (0: chunked) */
  ip_share *ip;     /* the address's share, once something is reserved */
  /* worker side */
  lua_State *co;
  int co_ref;
  int timed_out;
  int inline_run;   /* running on an I/O thread, connection not suspended */
  int inline_cut;   /* inline past its time: the monitor wrote a 503 (under mu) */
  int sliced;       /* yielded to move to a worker */
  double slice_end; /* inline: the I/O thread's share ends (0: on a worker) */
  struct oflua_waiter *waiter; /* set by oflua_wait_park */
  const char *query;           /* into uri, after '?', or NULL */
  const char *uri_end;         /* end of the target in MHD's buffer (compared only) */
  char uri[];                  /* raw request target */
};
enum { JOB_HEAD = 0, JOB_BODY, JOB_QUEUED, JOB_DONE, JOB_DISCARD };

#define WORKER_CO_CACHE 8

struct worker {
  lua_State *L; /* stack: [1] handler, [2] shutdown hook or nil */
  server *srv;
  int id;
  pthread_t thread;
  int started;
  atomic_int exited;
  job *ready;          /* parked jobs ready to resume: under srv->qmu */
  job *parked;         /* worker thread only */
  int busy;            /* held by a thread (its worker or an I/O thread): qmu */
  job *pending;        /* moved off an I/O thread, to continue here: qmu */
  int waiting;         /* its thread sleeps on srv->qcv: qmu (wake only then) */
  double wake_at;      /* ... until then (at most WORKER_WATCH_S ahead): qmu */
  double seen_soonest;   /* earliest deadline of its parked jobs at its last look
                            (0: none): qmu */
  double parked_soonest; /* earliest deadline of a job an I/O thread parked here
                            since the VM was lent (0: none): by the holder */
  job *cur;            /* running */
  lua_State *cur_co;
  lua_State *idle_co[WORKER_CO_CACHE];
  int idle_ref[WORKER_CO_CACHE];
  int nidle;
};

struct server {
  struct MHD_Daemon *daemon;
  worker *workers;
  int nworkers;
  atomic_long inflight;
  atomic_int stopping;
  int stopped;
  int port;
  char url[128];
  /* limits (see parse_listen_opts) */
  size_t max_body, max_header, body_budget, body_budget_per_ip;
  pthread_mutex_t ip_mu;
  ip_share *ip_table[IP_BUCKETS];
  double grace, head_timeout, body_timeout, handler_timeout, inline_slice;
  int handle_signals;
  struct sigaction old_int, old_term;
  struct MHD_Response *r400, *r413, *r414, *r431, *r500, *r503;
  /* run queue of the worker threads */
  pthread_mutex_t qmu;
  pthread_cond_t qcv;       /* monotonic clock */
  job *qhead, *qtail;
  int qstop;
  atomic_int abort_handlers; /* stop: running handlers are cut now */
  pthread_cond_t exit_cv;    /* a worker exited (with qmu) */
  int sync_ready;
  /* unanswered requests (suspended connections), answers */
  pthread_mutex_t mu;
  job *inflight_head;
  job *inline_head; /* handlers running on an I/O thread (the fast path) */
  int closing; /* no more suspending */
  /* connections and the monitor thread */
  pthread_mutex_t conn_mu;
  conn_track *conns;
  pthread_t monitor;
  int monitor_started, monitor_stop;
  pthread_cond_t monitor_cv;
  /* counters (srv:stats()) */
  atomic_long n_head_timeouts, n_body_timeouts, n_bad_requests, n_too_large, n_budget,
      n_handler_timeouts, n_mhd_warnings, n_requests, n_answered_early;
  atomic_long early_running; /* handlers answered early that have not ended (stop waits) */
  atomic_int deferred_wakes; /* wakes of its workers held until a batch ends (free waits) */
  /* Background VM running the script's tick() every tick_interval seconds
   * (loaded from the same script as the workers, on its own thread). */
  lua_State *tickL;
  pthread_t tick_thread;
  int tick_started;
  atomic_int tick_exited;
  double tick_interval;
  int tick_stop;
  pthread_mutex_t tick_mu;
  pthread_cond_t tick_cv;
  atomic_int tick_rung;      /* its doorbell rang since its last run began */
  oflua_tick_ring tick_ring; /* (in the tick VM's registry) */
  int leaked; /* a thread did not stop: keep this memory (process exits) */
  int io_stuck; /* an I/O thread is still in a handler: MHD is not stopped */
};

typedef struct load_ctx {
  lua_State *from; /* the listening state; args at index args_idx (0: none) */
  int args_idx;
  const char *script;
  int worker_id;
} load_ctx;

/* server_worker.c */
int srv_load_worker(lua_State *L);
int srv_workers_start(server *s, char *err, size_t errlen);
void srv_enqueue(server *s, job *j);
/* Stops the workers: waits until `deadline` (monotonic) for them to exit;
 * returns 0 if every worker stopped (VMs closed), -1 if one is stuck. */
int srv_workers_stop(server *s, double deadline);
void *srv_tick_main(void *arg);
void srv_tick_ring(void *ctx);
void srv_tick_signal(server *s);
int srv_tick_stop(server *s, double deadline);
int srv_sleep(lua_State *L);
/* The inline fast path: an I/O thread borrows an idle VM (NULL if none or
 * work is queued), runs the handler for at most `slice` seconds of Lua
 * (returns 1 if it is answered: r->mr/status), then gives the VM back (a
 * handler not done continues on the VM's worker). */
worker *srv_borrow_vm(server *s);
int srv_run_inline(worker *w, job *j, double slice);
void srv_release_vm(worker *w);
void srv_install_wait_api(lua_State *V); /* in a new VM, before anything runs */

/* server.c: answers (once) and resumes the suspended connection; takes the
 * response (destroyed if the job was already answered). */
int srv_answer(job *j, unsigned status, struct MHD_Response *mr, int owned);
int srv_answer_status(job *j, unsigned status); /* a static 500/503; 0: answered before */
void srv_job_unref(job *j);
/* Builds the MHD response for a handler's answer (worker thread). */
struct MHD_Response *srv_build_response(server *s, oflua_http_response *resp, int worker_id);

/* Prepared answers (server.answer): an MHD response made once and sent to
 * many requests, with a reference count (Lua's, each queued store item's,
 * each job that sent it). */
typedef struct srv_prepared srv_prepared;
void *srv_prepared_ref(lua_State *L, int idx); /* NULL unless idx is one */
void srv_prepared_unref(void *p);
/* Answers the parked job r with p now, when its connection is suspended and
 * nothing answered it yet (else nothing happens: its handler answers when it
 * resumes). The caller keeps r alive (server_worker.c: under wait_mu, with
 * r registered on its waiter). */
void srv_answer_early(job *r, void *p);

/* server_dispatch.c */
void srv_push_request(lua_State *L, const oflua_http_request *r);
int srv_push_callable(lua_State *L, int h);
void srv_take_response(lua_State *L, int base, oflua_http_response *resp);

#endif
