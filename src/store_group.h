/*
 * store_group.h: group commit of inbox inserts (store_group.c), private to
 * oflua.store.
 *
 * One group per (backend, database file or URL, namespace, key id) in the
 * process, shared by every store handle on it in every Lua state (all the
 * worker VMs of a server). A group is a bounded queue of pre-sealed inbox
 * rows and one committer thread with its own backend connection: it waits
 * for at least one row, takes everything queued (at most GROUP_BATCH_ROWS
 * rows / GROUP_BATCH_BYTES bytes), inserts them with the backend's batch
 * inbox_add (one transaction) and completes every item of the batch with its
 * own result, or all of them with the same error. No timer: what arrives
 * during one commit goes into the next.
 *
 * Handoff (the webhook app's background mode in a server with a tick): a
 * new row can be inserted claimed and kept, sealed, on the group's ready
 * list, from which this process's next grouped claim takes it without
 * reading the inbox; its done mark comes back as a done item. The list is
 * bounded (GROUP_READY_ROWS / GROUP_READY_BYTES: beyond, rows are inserted
 * pending, for the inbox's own claims); rows still on it when the last
 * handle goes are handed back to the inbox (pending, due at once).
 */
#ifndef OFLUA_STORE_GROUP_H
#define OFLUA_STORE_GROUP_H

#include "store_backend.h"

#include <stddef.h>
#include <stdint.h>

#define GROUP_BATCH_ROWS 256
#define GROUP_BATCH_BYTES ((size_t)1 << 20)
#define GROUP_QUEUE_ROWS 4096
#define GROUP_QUEUE_BYTES ((size_t)64 << 20)
#define GROUP_HIST 9 /* batch-size buckets: <=1, 2, 4, ..., 256 */
/* Handoff rows held in memory for the next grouped claim, at most. */
#define GROUP_READY_ROWS 4096
/* Done marks are applied this many at once, or this long after the oldest
 * was queued, or when no insert waits (store_group.c's flush_done). */
#define GROUP_DONE_BATCH 64
#define GROUP_DONE_DELAY_S 0.05
#define GROUP_READY_BYTES ((size_t)32 << 20)
enum { GROUP_INSERT = 0, GROUP_DONE = 1 };

typedef struct store_group store_group;

typedef struct group_item group_item;
struct group_item {
  group_item *next;
  /* 0: an insert (ev); 1: mark the event with index ev.idx done (fenced by
   * fence when has_fence), with other done marks in a transaction of their
   * own (GROUP_DONE_BATCH at once). A done item is the group's once
   * submitted: nobody waits for it, the committer frees it (a failed one
   * leaves the event claimed: its lease runs out and it runs again, as
   * after a crash). */
  int kind;
  /* An insert handed off (s:inbox_add_grouped's handoff): inserted claimed
   * for lease seconds when the group's ready list has room (else pending)
   * and, once committed as new, put on that list for the next grouped
   * claim in this process (store_group_take_ready). */
  int handoff;
  double lease;
  int has_fence;
  store_fence fence;
  store_new_event ev; /* points into data */
  size_t bytes;
  /* Called by the committer (without the group's lock) once rc, inserted
   * and err are set; after it the committer never touches the item. NULL:
   * a blocking caller waits in store_group_wait. */
  void (*complete)(group_item *it);
  /* optional, with complete: batch(1) before the completions of a batch
   * and batch(0) after them (oflua_wait_batch: one wake per worker) */
  void (*batch)(int on);
  void *token;
  const void *aux;
  void *answer; /* the caller's: sent once the row is committed as new (store_api.c) */
  int done; /* blocking callers: under the group's lock */
  int rc;   /* 0, STORE_EDB or STORE_EUNAVAIL */
  int inserted;
  /* not inserted: the store's key id as the committer read it after the
   * batch (0: not read), so that the caller tells a duplicate from a row
   * refused under a key id no longer current without a read of its own */
  int64_t meta_kid;
  char err[256];
  unsigned char data[];
};

typedef struct {
  uint64_t batches, rows, max_batch, errors, failed_rows, rejected, depth, peak_depth;
  uint64_t done_marked, done_missed; /* done items: applied; failed or not applied */
  uint64_t checkpoints; /* background checkpoint passes on the committer's database */
  /* handoff rows: put on the ready list, taken by claims, expired (lease run
   * out in memory: handed back in the next claim's transaction), released
   * (pending again, when the last handle went or at exit), inserted pending
   * for want of room */
  uint64_t ready_in, ready_taken, ready_expired, ready_released, ready_full;
  uint64_t ready_depth;
  uint64_t hist[GROUP_HIST];
} store_group_stats;

/* The group of a database (created with its committer thread on first
 * use), with one reference for the caller. NULL with a message in err. */
store_group *store_group_get(const store_backend *be, const store_open_opts *o, const char *ns,
                             int64_t kid, char *err, size_t errlen);
void store_group_unref(store_group *g);
/* 0 in a child of fork(): the group (a copy) has no committer there; forget
 * it without unref. */
int store_group_ours(const store_group *g);
/* Queues it: 0, or -1 when the queue is full (it is not queued). */
int store_group_submit(store_group *g, group_item *it);
/* Blocks until the committer has completed it (complete == NULL items). */
void store_group_wait(store_group *g, group_item *it);
void store_group_stats_get(store_group *g, store_group_stats *st);

/* A handoff row on the ready list: claimed (attempts 0, lease end
 * lease_end) by this process since its commit; ebox and pbox are the sealed
 * id and payload, as stored. The taker owns it (free()). */
typedef struct group_ready group_ready;
struct group_ready {
  group_ready *next;
  unsigned char idx[STORE_IDX_LEN];
  double now, lease_end; /* the insert's time; its claim's lease end */
  size_t elen, plen;
  unsigned char data[]; /* ebox, then pbox */
};
/* Up to max ready rows, oldest first, into out, as long as their lease
 * has not run out by now. Returns how many; 0 at once when there are none,
 * or when the oldest one's lease ran out (see store_group_take_expired). */
int store_group_take_ready(store_group *g, int max, double now, group_ready **out);
/* Up to max of the oldest ready rows whose lease ran out by now (the taker
 * hands them back to the inbox, fenced by their claim, in the transaction
 * of its next claim: no attempt is counted for a run that never began). */
int store_group_take_expired(store_group *g, int max, double now, group_ready **out);
/* Puts rows taken with store_group_take_expired back at the list's head
 * (their release did not commit: the next claim tries again). */
void store_group_put_back(store_group *g, group_ready **rows, int n);
/* Whether the ready list holds any row. */
int store_group_has_ready(store_group *g);
/* The doorbell of the tick that takes this group's rows (internal.h's
 * oflua_tick_ring, from the registry of the VM whose handle `owner` makes
 * grouped claims): rung after a batch that committed new rows it can take
 * (put on the ready list, or pending; not rows claimed by their inserter).
 * ring_clear forgets it if `owner` set it (that handle goes). */
struct oflua_tick_ring;
void store_group_ring_set(store_group *g, const struct oflua_tick_ring *ring, const void *owner);
void store_group_ring_clear(store_group *g, const void *owner);
/* Queues a list of done items (kind GROUP_DONE) all at once: 0, or -1 when
 * the queue has no room for all of them (none is queued). */
int store_group_submit_all(store_group *g, group_item *head, int n);
/* The committer's connection, for a caller's own statement between two
 * batches (opened if needed): the committer waits meanwhile. NULL and err
 * when it cannot be opened (nothing held). Unlock soon, with no
 * transaction left open (one still open is rolled back). */
store_conn *store_group_lock_conn(store_group *g, char *err, size_t errlen);
void store_group_unlock_conn(store_group *g);

#endif
