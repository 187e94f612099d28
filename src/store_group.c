/*
 * store_group.c: group commit of webhook inbox inserts (see store_group.h).
 *
 * Why: one write transaction per delivery costs a commit (SQLite: a WAL
 * append and, with synchronous=FULL, an fsync; PostgreSQL: a WAL flush and
 * a round trip) whatever its size, so concurrent deliveries share one.
 * Sealing stays in the calling threads (in parallel); the committer only
 * runs the SQL.
 *
 * Lifetime. Groups live in a process-wide list under reg_mu. A handle that
 * used group commit holds a reference; the committer thread owns the group
 * and frees it when no handle refers to it and its queue is empty (so an
 * item of an abandoned handler is still completed, and a test process that
 * opens many stores does not keep a thread and a connection for each).
 * Lock order: reg_mu, then g->mu. Items are completed outside g->mu. The
 * tick's doorbell (g->ring) is rung with conn_mu and g->mu held and takes
 * the server's tick_mu: it must never call back into the store.
 */
#include "store_group.h"
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct store_group {
  store_group *next;
  const store_backend *be;
  char *db, *sync;
  store_open_opts opts;
  int64_t kid;
  pid_t pid;
  unsigned gen; /* fork_gen when made */
  char ns[STORE_MAX_NS + 1];
  pthread_mutex_t mu;
  pthread_mutex_t conn_mu; /* conn: the committer's batches, or a caller's claim */
  pthread_cond_t work; /* the committer waits for rows or the last unref */
  pthread_cond_t done; /* blocking callers wait for their item */
  int refs;
  group_item *head, *tail;
  size_t depth, qbytes;
  /* handoff rows committed claimed, for the next grouped claim */
  group_ready *rhead, *rtail;
  size_t rcount, rbytes;
  const oflua_tick_ring *ring; /* rung when rows go on the list (under mu) */
  const void *ring_owner;
  /* After the last unref: set by the committer once it has nothing left to
   * do (queue empty, done marks applied, ready rows released); the unref
   * waits for it (bounded), and the group outlives its waiters. */
  int quiet;
  int waiters;
  /* done items taken from the queue, not applied yet (the committer's own) */
  group_item *dhead, *dtail;
  atomic_int dcount; /* (atomic: store_group_unref and the exit handler read or write it too) */
  int inflight; /* the committer holds a batch taken from the queue (under mu) */
  double dfirst; /* monotonic time the oldest of them was taken */
  store_conn *conn; /* the committer's own */
  store_group_stats st;
  /* the committer's batch, reused */
  store_new_event ev[GROUP_BATCH_ROWS];
  int inserted[GROUP_BATCH_ROWS];
  group_item *batch[GROUP_BATCH_ROWS];
  group_ready *pre[GROUP_BATCH_ROWS]; /* a handoff insert's ready row, made before the commit */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static store_group *reg_head = NULL;
/* The process the registry's groups (and their committer threads) belong
 * to: a child of fork() has none of the threads, so it starts afresh. A
 * fork handler counts forks (fork_gen), so that the check on every insert
 * makes no getpid() system call; should registering it fail, getpid() it is. */
static pid_t reg_pid = 0;
static atomic_uint fork_gen;
static unsigned reg_gen;
static int atfork_ok;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* The registry's lock is held across fork() (no fork in the middle of a
 * registry change: the child's copy would stay locked for good). */
static void on_fork_prepare(void) { pthread_mutex_lock(&reg_mu); }
static void on_fork_parent(void) { pthread_mutex_unlock(&reg_mu); }
static void on_fork_child(void) {
  atomic_fetch_add(&fork_gen, 1);
  pthread_mutex_unlock(&reg_mu);
}
static void release_at_exit(void);
static void atfork_init(void) {
  atfork_ok = pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child) == 0;
  (void)atexit(release_at_exit);
}

static void items_free(group_item *it) {
  while (it != NULL) {
    group_item *next = it->next;
    free(it);
    it = next;
  }
}

static void ready_free_list(group_ready *r) {
  while (r != NULL) {
    group_ready *next = r->next;
    free(r);
    r = next;
  }
}

static void group_free(store_group *g) {
  ready_free_list(g->rhead);
  items_free(g->dhead);
  if (g->conn != NULL) {
    while (g->be->tx_depth(g->conn) > 0) g->be->tx_rollback(g->conn);
    g->be->close(g->conn);
  }
  pthread_mutex_destroy(&g->mu);
  pthread_mutex_destroy(&g->conn_mu);
  pthread_cond_destroy(&g->work);
  pthread_cond_destroy(&g->done);
  if (g->db != NULL) {
    memset(g->db, 0, strlen(g->db)); /* a URL may hold a password */
    free(g->db);
  }
  free(g->sync);
  free(g);
}

/* 1 when the group was unlinked (the caller frees it). Called with g->mu
 * unlocked; takes both locks. */
static int try_retire(store_group *g) {
  int gone = 0;
  pthread_mutex_lock(&reg_mu);
  pthread_mutex_lock(&g->mu);
  if (g->refs == 0 && g->head == NULL && g->rhead == NULL && g->waiters == 0) {
    for (store_group **p = &reg_head; *p != NULL; p = &(*p)->next)
      if (*p == g) {
        *p = g->next;
        break;
      }
    gone = 1;
  }
  pthread_mutex_unlock(&g->mu);
  pthread_mutex_unlock(&reg_mu);
  return gone;
}

static unsigned hist_bucket(int n) {
  unsigned b = 0;
  while (b + 1 < GROUP_HIST && (1 << b) < n) b++;
  return b;
}

static void complete_batch(store_group *g, int n, int rc, const char *err);

/* The oldest GROUP_DONE_BATCH done items taken so far (g->dhead), in one
 * transaction of their own (a failure there must not fail inserts): done
 * marks are applied together, once GROUP_DONE_BATCH of them wait, or
 * GROUP_DONE_DELAY_S after the oldest was queued, or whenever no insert
 * waits; one commit for many marks, and never so many at once that the
 * next inserts wait long. Nobody waits for them: a mark lost to a crash
 * leaves its event claimed until its lease runs out, and it runs again
 * (at-least-once runs, as for a crash between a handler and its mark).
 * Frees the items. */
static void flush_done(store_group *g) {
  store_conn *c = g->conn;
  uint64_t applied = 0;
  int n = 0;
  group_item *list = g->dhead, *last = NULL;
  for (group_item *it = list; it != NULL && n < GROUP_DONE_BATCH; it = it->next) {
    last = it;
    n++;
  }
  g->dhead = last->next;
  last->next = NULL;
  if (g->dhead == NULL) g->dtail = NULL;
  g->dcount -= n;
  g->dfirst = oflua__mono_now(); /* (the rest: as if just queued) */
  if (c == NULL) {
    char err[256];
    c = g->conn = g->be->open(&g->opts, err, sizeof err);
  }
  /* relaxed: a mark lost in a crash is as one lost in a crash of the
   * process (its event runs again once its lease ends) */
  int rc = c != NULL ? g->be->tx_begin(c, STORE_TX_RELAXED) : STORE_EUNAVAIL;
  if (rc >= 0 && g->be->inbox_done_many != NULL) { /* one statement (n <= GROUP_DONE_BATCH) */
    store_mark m[GROUP_DONE_BATCH];
    int k = 0;
    double now = list->ev.now;
    for (const group_item *it = list; it != NULL; it = it->next, k++) {
      memcpy(m[k].idx, it->ev.idx, sizeof m[k].idx);
      m[k].fenced = it->has_fence;
      m[k].fence = it->fence;
      if (it->ev.now > now) now = it->ev.now;
    }
    int64_t done = 0;
    rc = g->be->inbox_done_many(c, g->ns, g->kid, m, k, now, &done);
    if (rc >= 0) applied = (uint64_t)done;
  } else {
    for (const group_item *it = list; rc >= 0 && it != NULL; it = it->next) {
      rc = g->be->inbox_mark(c, g->ns, it->ev.idx, g->kid, "done", STORE_MARK_KEEP, it->ev.now,
                             it->has_fence ? &it->fence : NULL);
      if (rc == 1) applied++;
    }
  }
  if (rc < 0 || g->be->tx_commit(c) < 0) {
    applied = 0;
    if (c != NULL)
      while (g->be->tx_depth(c) > 0) g->be->tx_rollback(c);
  }
  items_free(list);
  pthread_mutex_lock(&g->mu);
  g->st.done_marked += applied;
  g->st.done_missed += (uint64_t)n - applied;
  pthread_mutex_unlock(&g->mu);
}

/* The batch's rows (g->ev) from its insert items. A handoff insert is
 * inserted claimed, with its ready row made beforehand (nothing can fail
 * once the row is committed), while the ready list has room; else pending,
 * as any other (the inbox's claims find it). */
static void prepare_handoff(store_group *g, int n) {
  pthread_mutex_lock(&g->mu);
  size_t room = g->rcount < GROUP_READY_ROWS ? GROUP_READY_ROWS - g->rcount : 0;
  size_t broom = g->rbytes < GROUP_READY_BYTES ? GROUP_READY_BYTES - g->rbytes : 0;
  pthread_mutex_unlock(&g->mu);
  uint64_t full = 0;
  for (int i = 0; i < n; i++) {
    const group_item *it = g->batch[i];
    g->ev[i] = it->ev;
    g->pre[i] = NULL;
    if (!it->handoff) continue;
    size_t bytes = sizeof(group_ready) + it->ev.ebox.n + it->ev.pbox.n;
    group_ready *r = room > 0 && bytes <= broom ? malloc(bytes) : NULL;
    if (r == NULL) {
      full++;
      continue;
    }
    room--;
    broom -= bytes;
    r->next = NULL;
    memcpy(r->idx, it->ev.idx, sizeof r->idx);
    r->now = it->ev.now;
    r->lease_end = it->ev.now + it->lease;
    r->elen = it->ev.ebox.n;
    r->plen = it->ev.pbox.n;
    memcpy(r->data, it->ev.ebox.p, r->elen);
    memcpy(r->data + r->elen, it->ev.pbox.p, r->plen);
    g->pre[i] = r;
    g->ev[i].state = "claimed";
    g->ev[i].next_at = r->lease_end;
  }
  if (full > 0) {
    pthread_mutex_lock(&g->mu);
    g->st.ready_full += full;
    pthread_mutex_unlock(&g->mu);
  }
}

/* After the insert (rc): the new handoff rows go on the ready list; the
 * others' ready rows (a duplicate, a failed batch) are dropped. New rows the
 * tick can take (handed off, or pending) ring its doorbell. */
static void ready_add(store_group *g, int n, int rc) {
  int added = 0;
  pthread_mutex_lock(&g->mu);
  for (int i = 0; i < n; i++) {
    group_ready *r = g->pre[i];
    g->pre[i] = NULL;
    if (r == NULL) {
      if (rc >= 0 && g->inserted[i] && strcmp(g->ev[i].state, "pending") == 0) added = 1;
      continue;
    }
    if (rc < 0 || !g->inserted[i]) {
      free(r);
      continue;
    }
    if (g->rtail != NULL) g->rtail->next = r;
    else g->rhead = r;
    g->rtail = r;
    g->rcount++;
    g->rbytes += sizeof *r + r->elen + r->plen;
    g->st.ready_in++;
    added = 1;
  }
  /* under mu: ring_clear (the tick VM closing) cannot pass meanwhile */
  if (added && g->ring != NULL) g->ring->ring(g->ring->ctx);
  pthread_mutex_unlock(&g->mu);
}

void store_group_ring_set(store_group *g, const oflua_tick_ring *ring, const void *owner) {
  pthread_mutex_lock(&g->mu);
  g->ring = ring;
  g->ring_owner = owner;
  pthread_mutex_unlock(&g->mu);
}

void store_group_ring_clear(store_group *g, const void *owner) {
  pthread_mutex_lock(&g->mu);
  if (g->ring_owner == owner) {
    g->ring = NULL;
    g->ring_owner = NULL;
  }
  pthread_mutex_unlock(&g->mu);
}

/* Takes the whole ready list (under g->mu). */
static group_ready *ready_take_all(store_group *g) {
  pthread_mutex_lock(&g->mu);
  group_ready *list = g->rhead;
  g->rhead = g->rtail = NULL;
  g->rcount = 0;
  g->rbytes = 0;
  pthread_mutex_unlock(&g->mu);
  return list;
}

/* Hands list back to the inbox, on the committer's connection (its lock
 * held by the caller); frees it. Returns how many rows were released. */
static uint64_t release_list(store_group *g, group_ready *list) {
  uint64_t released = 0;
  char err[256];
  if (g->conn == NULL) g->conn = g->be->open(&g->opts, err, sizeof err);
  if (g->conn != NULL && g->be->tx_begin(g->conn, 0) >= 0) {
    int rc = 0;
    for (group_ready *r = list; rc >= 0 && r != NULL; r = r->next) {
      store_fence f = {0, r->lease_end};
      /* due from its insert's time on (the caller's clock, which may not be
       * the wall clock): at once */
      rc = g->be->inbox_mark(g->conn, g->ns, r->idx, g->kid, "pending", STORE_MARK_RELEASE, r->now,
                             &f);
      if (rc == 1) released++;
    }
    if (rc < 0 || g->be->tx_commit(g->conn) < 0) released = 0;
    while (g->be->tx_depth(g->conn) > 0) g->be->tx_rollback(g->conn);
  }
  ready_free_list(list);
  return released;
}

/* The last handle went (or the process exits) with rows still on the
 * ready list: they are handed back to the inbox (pending, due at once, no
 * attempt counted), so another process, or this one's next store, runs
 * them without waiting for their lease. A row that cannot be released
 * stays claimed until its lease runs out (as after a crash). With conn_mu
 * held. */
static void release_ready(store_group *g) {
  uint64_t released = release_list(g, ready_take_all(g));
  pthread_mutex_lock(&g->mu);
  g->st.ready_released += released;
  pthread_mutex_unlock(&g->mu);
}

/* One batch: insert, then complete every item with its result. Its done
 * items join those waiting (flush_done). */
static void commit_batch(store_group *g, int n) {
  char err[256] = "";
  int rc = 0;
  int nins = 0;
  for (int i = 0; i < n; i++) {
    group_item *it = g->batch[i];
    if (it->kind != GROUP_DONE) {
      g->batch[nins++] = it; /* inserts keep their order */
      continue;
    }
    if (g->dcount == 0) g->dfirst = oflua__mono_now();
    it->next = NULL;
    if (g->dtail != NULL) g->dtail->next = it;
    else g->dhead = it;
    g->dtail = it;
    g->dcount++;
  }
  n = nins;
  if (g->conn == NULL) {
    g->conn = g->be->open(&g->opts, err, sizeof err);
    if (g->conn == NULL) rc = STORE_EUNAVAIL;
  }
  if (rc == 0 && n > 0) {
    prepare_handoff(g, n);
    rc = g->be->inbox_add(g->conn, g->ns, g->kid, g->ev, n, g->inserted);
    if (rc < 0) {
      snprintf(err, sizeof err, "%s", g->conn->err);
      while (g->be->tx_depth(g->conn) > 0) g->be->tx_rollback(g->conn);
    }
    ready_add(g, n, rc);
  }
  /* a row not inserted: a duplicate, or the store was rekeyed (the insert
   * is guarded by the key id): one read for the batch tells which */
  int64_t meta_kid = 0;
  if (rc >= 0)
    for (int i = 0; i < n; i++)
      if (!g->inserted[i]) {
        if (g->be->meta_kid(g->conn, &meta_kid) < 0) meta_kid = 0;
        break;
      }
  for (int i = 0; i < n; i++) g->batch[i]->meta_kid = meta_kid;
  if (n > 0) complete_batch(g, n, rc, err);
  /* after the inserts' answers: every full chunk (so that the marks keep
   * up with the inserts), and a partial one once it is old enough */
  while (g->dcount >= GROUP_DONE_BATCH) flush_done(g);
  if (g->dcount > 0 && oflua__mono_now() - g->dfirst >= GROUP_DONE_DELAY_S) flush_done(g);
}

/* Records a committed (or failed) insert batch and completes its items. */
static void complete_batch(store_group *g, int n, int rc, const char *err) {
  pthread_mutex_lock(&g->mu);
  g->st.batches++;
  g->st.rows += (uint64_t)n;
  if ((uint64_t)n > g->st.max_batch) g->st.max_batch = (uint64_t)n;
  g->st.hist[hist_bucket(n)]++;
  if (rc < 0) {
    g->st.errors++;
    g->st.failed_rows += (uint64_t)n;
  }
  int blocking = 0;
  for (int i = 0; i < n; i++) {
    group_item *it = g->batch[i];
    it->rc = rc < 0 ? rc : 0;
    it->inserted = rc < 0 ? 0 : g->inserted[i];
    if (rc < 0) snprintf(it->err, sizeof it->err, "%s", err);
    if (it->complete == NULL) {
      it->done = 1; /* the caller may free it as soon as we unlock */
      blocking = 1;
    }
  }
  if (blocking) pthread_cond_broadcast(&g->done);
  /* Items with a completion function are ours until completed. */
  int m = 0;
  void (*batch)(int) = NULL;
  for (int i = 0; i < n; i++)
    if (g->batch[i]->complete != NULL) {
      if (batch == NULL) batch = g->batch[i]->batch;
      g->batch[m++] = g->batch[i];
    }
  pthread_mutex_unlock(&g->mu);
  if (batch != NULL) batch(1);
  for (int i = 0; i < m; i++) g->batch[i]->complete(g->batch[i]);
  if (batch != NULL) batch(0);
}

static void *committer(void *arg) {
  oflua__thread_name("oflua-commit");
  store_group *g = arg;
  pthread_mutex_lock(&g->mu);
  for (;;) {
    while (g->head == NULL && g->dcount == 0 &&
           (g->refs > 0 || (g->quiet && g->waiters > 0)))
      pthread_cond_wait(&g->work, &g->mu);
    if (g->head == NULL && (g->dcount > 0 || (g->refs == 0 && g->rhead != NULL))) {
      /* no insert waits: the done marks now; and once the last handle went,
       * the ready rows back to the inbox */
      pthread_mutex_unlock(&g->mu);
      pthread_mutex_lock(&g->conn_mu);
      while (g->dcount > 0) flush_done(g);
      if (g->conn != NULL && g->be->after_batch != NULL) g->be->after_batch(g->conn);
      pthread_mutex_lock(&g->mu);
      int last = g->refs == 0;
      pthread_mutex_unlock(&g->mu);
      if (last) release_ready(g);
      pthread_mutex_unlock(&g->conn_mu);
      pthread_mutex_lock(&g->mu);
      continue;
    }
    if (g->head == NULL) { /* the last handle went, and nothing is left */
      if (!g->quiet) {
        g->quiet = 1;
        pthread_cond_broadcast(&g->done);
      }
      pthread_mutex_unlock(&g->mu);
      if (try_retire(g)) break;
      pthread_mutex_lock(&g->mu);
      continue;
    }
    int n = 0;
    size_t bytes = 0;
    while (g->head != NULL && n < GROUP_BATCH_ROWS &&
           (n == 0 || bytes + g->head->bytes <= GROUP_BATCH_BYTES)) {
      group_item *it = g->head;
      g->head = it->next;
      if (g->head == NULL) g->tail = NULL;
      it->next = NULL;
      bytes += it->bytes;
      g->batch[n++] = it;
    }
    g->depth -= (size_t)n;
    g->qbytes -= bytes;
    g->inflight = 1;
    pthread_mutex_unlock(&g->mu);
    pthread_mutex_lock(&g->conn_mu);
    commit_batch(g, n);
    if (g->conn != NULL && g->be->after_batch != NULL) g->be->after_batch(g->conn);
    long ckpts = g->conn != NULL && g->be->bg_checkpoints != NULL ? g->be->bg_checkpoints(g->conn) : 0;
    pthread_mutex_unlock(&g->conn_mu);
    pthread_mutex_lock(&g->mu);
    g->inflight = 0;
    g->st.checkpoints = (uint64_t)ckpts; /* (read by stats without the connection's lock) */
  }
  group_free(g);
  return NULL;
}

static char *dup_str(const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

static store_group *group_new(const store_backend *be, const store_open_opts *o, const char *ns,
                              int64_t kid, char *err, size_t errlen) {
  store_group *g = calloc(1, sizeof *g);
  if (g == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  g->be = be;
  g->db = dup_str(o->url != NULL ? o->url : o->path);
  g->sync = dup_str(o->sync != NULL ? o->sync : "NORMAL");
  g->kid = kid;
  g->pid = getpid();
  g->gen = atomic_load(&fork_gen);
  snprintf(g->ns, sizeof g->ns, "%s", ns);
  int mu = pthread_mutex_init(&g->mu, NULL) == 0;
  int cm = pthread_mutex_init(&g->conn_mu, NULL) == 0;
  int c1 = pthread_cond_init(&g->work, NULL) == 0;
  /* done: on the monotonic clock (store_group_unref waits on it, bounded) */
  pthread_condattr_t ca;
  int c2 = 0;
  if (pthread_condattr_init(&ca) == 0) {
    c2 = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&g->done, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (g->db == NULL || g->sync == NULL || !mu || !cm || !c1 || !c2) {
    if (mu) pthread_mutex_destroy(&g->mu);
    if (cm) pthread_mutex_destroy(&g->conn_mu);
    if (c1) pthread_cond_destroy(&g->work);
    if (c2) pthread_cond_destroy(&g->done);
    free(g->db);
    free(g->sync);
    free(g);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  g->opts = *o;
  g->opts.path = o->url != NULL ? NULL : g->db;
  g->opts.url = o->url != NULL ? g->db : NULL;
  g->opts.sync = g->sync;
  g->opts.create = 0; /* the handle that asked made the store */
  g->opts.bg_checkpoint = 1; /* no checkpoint pause inside a batch's commit */
  g->refs = 1;
  /* The committer takes no signals (the process's handlers run elsewhere). */
  if (oflua__thread_start(NULL, committer, g) != 0) {
    g->refs = 0;
    group_free(g);
    snprintf(err, errlen, "cannot start the group-commit thread");
    return NULL;
  }
  return g;
}

store_group *store_group_get(const store_backend *be, const store_open_opts *o, const char *ns,
                             int64_t kid, char *err, size_t errlen) {
  const char *db = o->url != NULL ? o->url : o->path;
  pthread_once(&atfork_once, atfork_init);
  pthread_mutex_lock(&reg_mu);
  /* first use, or a forked child: the parent's groups are not ours */
  if (reg_pid != getpid() || reg_gen != atomic_load(&fork_gen)) {
    reg_head = NULL;
    reg_pid = getpid();
    reg_gen = atomic_load(&fork_gen);
  }
  for (store_group *g = reg_head; g != NULL; g = g->next) {
    if (g->be != be || g->kid != kid || strcmp(g->db, db) != 0 || strcmp(g->ns, ns) != 0)
      continue;
    pthread_mutex_lock(&g->mu);
    /* a handle again: a last unref waiting for the committer stops waiting */
    if (g->refs++ == 0 && g->waiters > 0) pthread_cond_broadcast(&g->done);
    pthread_mutex_unlock(&g->mu);
    pthread_mutex_unlock(&reg_mu);
    return g;
  }
  /* Created under reg_mu: the new thread cannot retire it before it is
   * linked (try_retire takes reg_mu and sees refs == 1 anyway). */
  store_group *g = group_new(be, o, ns, kid, err, errlen);
  if (g != NULL) {
    g->next = reg_head;
    reg_head = g;
  }
  pthread_mutex_unlock(&reg_mu);
  return g;
}

int store_group_ours(const store_group *g) {
  if (atfork_ok) return g->gen == atomic_load_explicit(&fork_gen, memory_order_relaxed);
  return g->pid == getpid();
}

/* The last unref of a group with work left (queued rows or done marks,
 * handoff rows) waits, at most GROUP_RELEASE_WAIT_S, for the committer to
 * finish it: done marks applied, handoff rows handed back to the inbox, so
 * that a process that exits right after closing its stores leaves no event
 * claimed that a mark or a release would have settled. */
#define GROUP_RELEASE_WAIT_S 5
void store_group_unref(store_group *g) {
  pthread_mutex_lock(&g->mu);
  if (--g->refs == 0) {
    g->quiet = 0;
    pthread_cond_signal(&g->work);
    if (g->head != NULL || g->rhead != NULL || g->inflight || atomic_load(&g->dcount) > 0) {
      struct timespec until;
      clock_gettime(CLOCK_MONOTONIC, &until);
      until.tv_sec += GROUP_RELEASE_WAIT_S;
      g->waiters++;
      while (!g->quiet && g->refs == 0)
        if (pthread_cond_timedwait(&g->done, &g->mu, &until) != 0) break;
      g->waiters--;
      pthread_cond_signal(&g->work); /* (the committer may retire it now) */
    }
  }
  pthread_mutex_unlock(&g->mu);
}

void store_group_put_back(store_group *g, group_ready **rows, int n) {
  pthread_mutex_lock(&g->mu);
  for (int i = n - 1; i >= 0; i--) {
    group_ready *r = rows[i];
    r->next = g->rhead;
    g->rhead = r;
    if (g->rtail == NULL) g->rtail = r;
    g->rcount++;
    g->rbytes += sizeof *r + r->elen + r->plen;
    g->st.ready_expired--; /* (counted again when taken) */
  }
  pthread_mutex_unlock(&g->mu);
}

static group_ready *ready_pop(store_group *g) {
  group_ready *r = g->rhead;
  g->rhead = r->next;
  if (g->rhead == NULL) g->rtail = NULL;
  g->rcount--;
  g->rbytes -= sizeof *r + r->elen + r->plen;
  r->next = NULL;
  return r;
}

int store_group_take_expired(store_group *g, int max, double now, group_ready **out) {
  int n = 0;
  pthread_mutex_lock(&g->mu);
  while (n < max && g->rhead != NULL && g->rhead->lease_end <= now) {
    out[n++] = ready_pop(g);
    g->st.ready_expired++;
  }
  pthread_mutex_unlock(&g->mu);
  return n;
}

int store_group_take_ready(store_group *g, int max, double now, group_ready **out) {
  int n = 0;
  pthread_mutex_lock(&g->mu);
  while (n < max && g->rhead != NULL && g->rhead->lease_end > now) {
    out[n++] = ready_pop(g);
    g->st.ready_taken++;
  }
  pthread_mutex_unlock(&g->mu);
  return n;
}

int store_group_has_ready(store_group *g) {
  pthread_mutex_lock(&g->mu);
  int any = g->rhead != NULL;
  pthread_mutex_unlock(&g->mu);
  return any;
}

int store_group_submit_all(store_group *g, group_item *head, int n) {
  size_t bytes = 0;
  group_item *last = NULL;
  for (group_item *it = head; it != NULL; it = it->next) {
    it->done = 0;
    bytes += it->bytes;
    last = it;
  }
  if (head == NULL) return 0;
  pthread_mutex_lock(&g->mu);
  if (g->depth + (size_t)n > GROUP_QUEUE_ROWS ||
      (g->depth > 0 && g->qbytes + bytes > GROUP_QUEUE_BYTES)) {
    pthread_mutex_unlock(&g->mu);
    return -1;
  }
  if (g->tail != NULL) g->tail->next = head;
  else g->head = head;
  g->tail = last;
  g->depth += (size_t)n;
  g->qbytes += bytes;
  if (g->depth > g->st.peak_depth) g->st.peak_depth = g->depth;
  pthread_cond_signal(&g->work);
  pthread_mutex_unlock(&g->mu);
  return 0;
}

int store_group_submit(store_group *g, group_item *it) {
  it->next = NULL;
  it->done = 0;
  pthread_mutex_lock(&g->mu);
  if (g->depth >= GROUP_QUEUE_ROWS ||
      (g->depth > 0 && g->qbytes + it->bytes > GROUP_QUEUE_BYTES)) {
    g->st.rejected++;
    pthread_mutex_unlock(&g->mu);
    return -1;
  }
  if (g->tail != NULL) g->tail->next = it;
  else g->head = it;
  g->tail = it;
  g->depth++;
  g->qbytes += it->bytes;
  if (g->depth > g->st.peak_depth) g->st.peak_depth = g->depth;
  pthread_cond_signal(&g->work);
  pthread_mutex_unlock(&g->mu);
  return 0;
}

store_conn *store_group_lock_conn(store_group *g, char *err, size_t errlen) {
  pthread_mutex_lock(&g->conn_mu);
  if (g->conn == NULL) g->conn = g->be->open(&g->opts, err, errlen);
  if (g->conn == NULL) {
    pthread_mutex_unlock(&g->conn_mu);
    return NULL;
  }
  return g->conn;
}

void store_group_unlock_conn(store_group *g) {
  while (g->be->tx_depth(g->conn) > 0) g->be->tx_rollback(g->conn);
  pthread_mutex_unlock(&g->conn_mu);
}

void store_group_wait(store_group *g, group_item *it) {
  pthread_mutex_lock(&g->mu);
  while (!it->done) pthread_cond_wait(&g->done, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

void store_group_stats_get(store_group *g, store_group_stats *st) {
  pthread_mutex_lock(&g->mu);
  *st = g->st;
  st->depth = g->depth;
  st->ready_depth = g->rcount;
  pthread_mutex_unlock(&g->mu);
}

/* At exit, for every group still alive (a tick that did not stop in time
 * keeps its store handle, so its group never saw its last unref; or the
 * process exits without closing its stores): the done marks queued or
 * waiting are applied, and the handoff rows handed back to the inbox, so
 * that the next process neither runs those events again nor waits for
 * their lease. Bounded: a connection whose lock is not free within
 * GROUP_EXIT_WAIT_S is left (its events stay claimed until their lease
 * ends, as after a crash). Not in a child of fork(): the groups are the
 * parent's. */
#define GROUP_EXIT_WAIT_S 2
static void release_at_exit(void) {
  pthread_mutex_lock(&reg_mu);
  if (reg_pid == getpid() && reg_gen == atomic_load(&fork_gen)) {
    for (store_group *g = reg_head; g != NULL; g = g->next) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until); /* (pthread_mutex_timedlock's clock) */
      until.tv_sec += GROUP_EXIT_WAIT_S;
      /* (held by the committer during a batch, a flush or a release:
       * waiting for it lets a release in progress finish) */
      if (pthread_mutex_timedlock(&g->conn_mu, &until) != 0) continue;
      /* the queued done marks join those the committer holds (dhead: its
       * own, under conn_mu); queued inserts are left (nobody is answered) */
      pthread_mutex_lock(&g->mu);
      group_item **link = &g->head, *last = NULL;
      while (*link != NULL) {
        group_item *it = *link;
        if (it->kind != GROUP_DONE) {
          last = it;
          link = &it->next;
          continue;
        }
        *link = it->next;
        g->depth--;
        g->qbytes -= it->bytes;
        it->next = NULL;
        if (g->dtail != NULL) g->dtail->next = it;
        else g->dhead = it;
        g->dtail = it;
        g->dcount++;
      }
      g->tail = last;
      pthread_mutex_unlock(&g->mu);
      while (g->dcount > 0) flush_done(g);
      release_ready(g);
      pthread_mutex_unlock(&g->conn_mu);
    }
  }
  pthread_mutex_unlock(&reg_mu);
}
