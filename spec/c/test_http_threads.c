/* oflua.http and oflua.crypto from several runtimes on several threads at
 * once, as the server's worker VMs use them: curl_global_init and the
 * OpenSSL algorithm cache are set up once (pthread_once), each state keeps
 * its own multi handle, and closing each runtime frees everything (checked by
 * LeakSanitizer in the sanitizer build). Talks to the fixture server on
 * 127.0.0.1 only. */
#include "oflua.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define THREADS 4

static char base_url[64];
static char lua_dir[1024];

static void *worker(void *arg) {
  char *err = calloc(1, 1024), code[2048];
  int *ok = arg;
  *ok = 0;
  oflua_options opts = {lua_dir, 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, 1024);
  if (rt == NULL) {
    fprintf(stderr, "oflua_open: %s\n", err);
    free(err);
    return NULL;
  }
  snprintf(code, sizeof code,
           "local http, crypto = require('oflua.http'), require('oflua.crypto')\n"
           "local base = %s\n"
           "local conn\n"
           "for i = 1, 50 do\n"
           "  local r = assert(http.request({url = base .. '/echo', method = 'POST', body = tostring(i), reuse = true}))\n"
           "  assert(r.status == 200 and r.body:sub(-#tostring(i)) == tostring(i))\n"
           "  conn = conn or r.headers['x-conn']\n"
           "  assert(conn == r.headers['x-conn'], 'connection not reused')\n"
           "  assert(#crypto.hmac('sha256', 'k', r.body) == 32)\n"
           "end\n"
           "local reqs = {}\n"
           "for i = 1, 8 do reqs[i] = {url = base .. '/delay/10'} end\n"
           "for _, r in ipairs(http.request_many(reqs)) do assert(r.response.body == 'delayed') end\n"
           "local _, e = http.request({url = 'http://x.invalid/'})\n"
           "assert(e.kind == 'dns')\n",
           base_url);
  int rc = oflua_run_string(rt, code, "=worker", err, 1024);
  if (rc != OFLUA_OK) fprintf(stderr, "worker: %s\n", err);
  else *ok = 1;
  oflua_close(rt);
  free(err);
  return NULL;
}

int main(void) {
  const char *src = getenv("OFLUA_SOURCE_DIR"), *build = getenv("OFLUA_BUILD_DIR");
  snprintf(lua_dir, sizeof lua_dir, "%s/lua", src ? src : ".");
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "exec '%s/http_fixture_server' 60", build ? build : "build");
  FILE *srv = popen(cmd, "r");
  int port = 0, pid = 0;
  if (srv == NULL || fscanf(srv, "%d %d", &port, &pid) != 2) {
    fprintf(stderr, "cannot start %s\n", cmd);
    return 1;
  }
  /* a Lua string literal */
  snprintf(base_url, sizeof base_url, "'http://127.0.0.1:%d'", port);

  pthread_t th[THREADS];
  int ok[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, worker, &ok[i]);
  int failures = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    if (!ok[i]) failures++;
  }
  kill((pid_t)pid, SIGTERM);
  pclose(srv);
  if (failures) fprintf(stderr, "%d of %d workers failed\n", failures, THREADS);
  else printf("ok: %d threads\n", THREADS);
  return failures ? 1 : 0;
}
