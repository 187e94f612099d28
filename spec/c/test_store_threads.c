/* oflua.store from several threads of one process, each with its own
 * runtime (lua_State) and so its own SQLite connection on one file: writes
 * from every thread land, an event added by all threads at once is stored
 * once, and concurrent claims never hand one event to two threads. */
#include "oflua.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "test_runtime.h"

#define THREADS 4
#define EVENTS 60


static const char WORK[] =
    "function work(path, key, tid)\n"
    "  local store = require('oflua.store')\n"
    "  local s = assert(store.open{path = path, key = key, busy_timeout_ms = 60000})\n"
    "  for i = 1, 100 do assert(s:put(tid .. ':' .. i, ('v'):rep(i))) end\n"
    "  local new = 0\n"
    "  for i = 1, 60 do\n"
    "    local ok, err = s:inbox_add('evt' .. i, 'payload ' .. i)\n"
    "    assert(ok ~= nil, err)\n"
    "    if ok then new = new + 1 end\n"
    "  end\n"
    "  local claimed = {}\n"
    "  while true do\n"
    "    local got = assert(s:inbox_claim(5, 3600))\n"
    "    if #got == 0 then break end\n"
    "    for _, e in ipairs(got) do\n"
    "      assert(e.payload == 'payload ' .. e.id:sub(4))\n"
    "      claimed[#claimed + 1] = e.id\n"
    "      assert(s:inbox_done(e.id))\n"
    "    end\n"
    "  end\n"
    "  for i = 1, 100 do assert(s:get(tid .. ':' .. i) == ('v'):rep(i)) end\n"
    "  s:close()\n"
    "  return new .. ' ' .. table.concat(claimed, ' ')\n"
    "end\n"
    "function finish(path, key)\n"
    "  local store = require('oflua.store')\n"
    "  local s = assert(store.open{path = path, key = key})\n"
    "  local n = 0\n"
    "  for _ in s:list() do n = n + 1 end\n"
    "  local claimed = {}\n"
    "  for _, e in ipairs(assert(s:inbox_claim(1000, 3600))) do claimed[#claimed + 1] = e.id end\n"
    "  local st = s:inbox_stats()\n"
    "  s:close()\n"
    "  return n .. ' ' .. st.total .. ' ' .. table.concat(claimed, ' ')\n"
    "end\n"
    "function keygen() return require('oflua.store').keygen() end\n";

typedef struct {
  const char *path, *key;
  char tid[8];
  char *result;
  int ok;
} Job;

static void *run(void *arg) {
  Job *j = arg;
  char err[1024];
  oflua_runtime *rt = test_runtime(WORK);
  if (rt == NULL) return NULL;
  const char *args[] = {j->path, j->key, j->tid};
  j->ok = oflua_call(rt, "work", 3, args, &j->result, NULL, err, sizeof err) == OFLUA_OK;
  if (!j->ok) fprintf(stderr, "thread %s: %s\n", j->tid, err);
  oflua_close(rt);
  return NULL;
}

/* Counts event ids ("evtN" words after the first skip words) into seen[]. */
static void tally(const char *s, int skip, int seen[EVENTS + 1]) {
  char *copy = strdup(s), *save = NULL;
  int i = 0;
  for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save), i++) {
    if (i < skip) continue;
    int n = atoi(w + 3);
    CHECK(strncmp(w, "evt", 3) == 0 && n >= 1 && n <= EVENTS);
    if (n >= 1 && n <= EVENTS) seen[n]++;
  }
  free(copy);
}

int main(void) {
  char dir[] = "/tmp/oflua-store-threads-XXXXXX", path[128], err[512];
  if (mkdtemp(dir) == NULL) return 1;
  snprintf(path, sizeof path, "%s/store.db", dir);
  oflua_runtime *rt = test_runtime(WORK);
  if (rt == NULL) return 1;
  char *key = NULL;
  CHECK(oflua_call(rt, "keygen", 0, NULL, &key, NULL, err, sizeof err) == OFLUA_OK);
  if (key == NULL) return 1;

  Job jobs[THREADS];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].path = path;
    jobs[i].key = key;
    snprintf(jobs[i].tid, sizeof jobs[i].tid, "t%d", i);
    CHECK(pthread_create(&th[i], NULL, run, &jobs[i]) == 0);
  }
  int seen[EVENTS + 1] = {0}, added = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    CHECK(jobs[i].ok);
    if (jobs[i].result) {
      added += atoi(jobs[i].result);
      tally(jobs[i].result, 1, seen);
      free(jobs[i].result);
    }
  }
  CHECK(added == EVENTS);

  const char *args[] = {path, key};
  char *res = NULL;
  CHECK(oflua_call(rt, "finish", 2, args, &res, NULL, err, sizeof err) == OFLUA_OK);
  if (res != NULL) {
    int rows = 0, total = 0;
    CHECK(sscanf(res, "%d %d", &rows, &total) == 2);
    CHECK(rows == THREADS * 100);
    CHECK(total == EVENTS);
    tally(res, 2, seen);
    free(res);
  }
  for (int n = 1; n <= EVENTS; n++) {
    if (seen[n] != 1) fprintf(stderr, "evt%d claimed %d times\n", n, seen[n]);
    CHECK(seen[n] == 1);
  }
  free(key);
  oflua_close(rt);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures != 0;
}
