/* Group commit (oflua.store's s:inbox_add_grouped) from many threads of one
 * process, each with its own runtime and store handle on one database, so
 * that they share one group (queue + committer thread): every call
 * completes, each event id is inserted exactly once (the others are
 * duplicates), and the group's counters add up exactly (rows, the
 * batch-size histogram, no error, an empty queue). Outside oflua.server the
 * callers block on the group's condition variable, which is the path the
 * tick VM and scripts take. Runs on SQLite, and on PostgreSQL when
 * OFLUA_TEST_PG_URL is set (in a namespace of its own). */
#include "oflua.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "test_runtime.h"

#define THREADS 8
#define CALLS 150
#define IDS 400

static const char WORK[] =
    "local store = require('oflua.store')\n"
    "local function open(db, key, ns)\n"
    "  local o = {key = key, namespace = ns, busy_timeout_ms = 60000}\n"
    "  if store.is_url(db) then o.url = db else o.path = db end\n"
    "  return assert(store.open(o))\n"
    "end\n"
    "function work(db, key, ns, tid)\n"
    "  local s = open(db, key, ns)\n"
    "  local new = 0\n"
    "  for i = 1, " "150" " do\n"
    "    local id = 'evt' .. ((tonumber(tid) * 50 + i) % 400)\n"
    "    local ok, err = s:inbox_add_grouped(id, 'payload of ' .. id)\n"
    "    assert(ok ~= nil, err)\n"
    "    if ok then new = new + 1 end\n"
    "  end\n"
    "  s:close()\n"
    "  return tostring(new)\n"
    "end\n"
    "local keep\n"
    "function start(db, key, ns)\n"
    "  keep = open(db, key, ns)\n"
    "  assert(keep:inbox_add_grouped('warm', 'x') == true)\n"
    "  return 'ok'\n"
    "end\n"
    "function finish()\n"
    "  local g = keep:group_stats()\n"
    "  local hsum = 0\n"
    "  for _, n in ipairs(g.hist) do hsum = hsum + n end\n"
    "  local st = keep:inbox_stats()\n"
    "  for i = 0, 399 do\n"
    "    local e = keep:inbox_get('evt' .. i)\n"
    "    assert(e and e.payload == 'payload of evt' .. i, 'evt' .. i)\n"
    "  end\n"
    "  keep:close()\n"
    "  return table.concat({g.rows, g.batches, hsum, g.errors, g.queue_depth, g.max_batch,\n"
    "    st.total, st.pending}, ' ')\n"
    "end\n"
    "function keygen() return store.keygen() end\n";

typedef struct {
  const char *db, *key, *ns;
  char tid[8];
  char *result;
  int ok;
} Job;

static void *run(void *arg) {
  Job *j = arg;
  char err[1024];
  oflua_runtime *rt = test_runtime(WORK);
  if (rt == NULL) return NULL;
  const char *args[] = {j->db, j->key, j->ns, j->tid};
  j->ok = oflua_call(rt, "work", 4, args, &j->result, NULL, err, sizeof err) == OFLUA_OK;
  if (!j->ok) fprintf(stderr, "thread %s: %s\n", j->tid, err);
  oflua_close(rt);
  return NULL;
}

static void one_backend(const char *db, const char *ns) {
  char err[1024];
  oflua_runtime *rt = test_runtime(WORK);
  if (rt == NULL) {
    CHECK(0);
    return;
  }
  char *key = NULL, *res = NULL;
  CHECK(oflua_call(rt, "keygen", 0, NULL, &key, NULL, err, sizeof err) == OFLUA_OK);
  if (key == NULL) return;
  const char *sargs[] = {db, key, ns};
  if (oflua_call(rt, "start", 3, sargs, &res, NULL, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "start: %s\n", err);
    CHECK(0);
    return;
  }
  free(res);

  Job jobs[THREADS];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].db = db;
    jobs[i].key = key;
    jobs[i].ns = ns;
    snprintf(jobs[i].tid, sizeof jobs[i].tid, "%d", i);
    CHECK(pthread_create(&th[i], NULL, run, &jobs[i]) == 0);
  }
  int added = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    CHECK(jobs[i].ok);
    if (jobs[i].result) {
      added += atoi(jobs[i].result);
      free(jobs[i].result);
    }
  }
  CHECK(added == IDS); /* every id inserted by exactly one caller */

  res = NULL;
  if (oflua_call(rt, "finish", 0, NULL, &res, NULL, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "finish: %s\n", err);
    CHECK(0);
  }
  if (res != NULL) {
    long rows, batches, hsum, errors, depth, maxb, total, pending;
    CHECK(sscanf(res, "%ld %ld %ld %ld %ld %ld %ld %ld", &rows, &batches, &hsum, &errors, &depth,
                 &maxb, &total, &pending) == 8);
    fprintf(stderr, "%s: rows %ld in %ld batches (largest %ld)\n", ns, rows, batches, maxb);
    CHECK(rows == THREADS * CALLS + 1);
    CHECK(batches >= 1 && batches <= rows);
    CHECK(hsum == batches);
    CHECK(errors == 0);
    CHECK(depth == 0);
    CHECK(maxb >= 1 && maxb <= 256);
    CHECK(total == IDS + 1);
    CHECK(pending == IDS + 1);
    free(res);
  }
  free(key);
  oflua_close(rt);
}

int main(void) {
  char dir[] = "/tmp/oflua-store-group-XXXXXX", path[128];
  if (mkdtemp(dir) == NULL) return 1;
  snprintf(path, sizeof path, "%s/store.db", dir);
  one_backend(path, "default");
  const char *pg = getenv("OFLUA_TEST_PG_URL");
  if (pg != NULL && pg[0] != '\0') {
    char ns[64];
    snprintf(ns, sizeof ns, "group_test_%ld", (long)getpid());
    one_backend(pg, ns);
  }
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures != 0;
}
