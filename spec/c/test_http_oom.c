/* oflua.http when libcurl's allocations fail: every allocation that libcurl
 * makes while a request is set up and sent is failed in turn (through
 * curl_global_init_mem), and each request must end in a response, an error
 * value or a "not enough memory" Lua error, never a crash; the header list
 * must not be lost when curl_slist_append fails (a lost list is a leak, found
 * by LeakSanitizer in the sanitizer build). Talks to 127.0.0.1 only: a port
 * where nothing listens. */
#include "oflua.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static long countdown = -1; /* > 0: allocations left before one fails */

static int should_fail(void) {
  if (countdown < 0) return 0;
  if (countdown == 0) return 1;
  countdown--;
  return countdown == 0;
}
static void *t_malloc(size_t n) { return should_fail() ? NULL : malloc(n); }
static void t_free(void *p) { free(p); }
static void *t_realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n); }
static char *t_strdup(const char *s) { return should_fail() ? NULL : strdup(s); }
static void *t_calloc(size_t a, size_t b) { return should_fail() ? NULL : calloc(a, b); }

int main(void) {
  if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, t_malloc, t_free, t_realloc, t_strdup, t_calloc) !=
      CURLE_OK) {
    fprintf(stderr, "curl_global_init_mem failed\n");
    return 1;
  }
  char err[1024];
  oflua_options opts = {NULL, 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  CHECK(rt != NULL);
  if (rt == NULL) return 1;
  /* port 9 (discard) on loopback: nothing listens in the test environment;
   * a refused connect is an error value, which is fine here */
  const char *code =
      "local http = require('oflua.http')\n"
      "local ok, r, e = pcall(http.request, {url = 'http://127.0.0.1:9/x', method = 'POST',\n"
      "  body = 'b', timeout_ms = 2000, headers = {a = '1', b = '2', c = {'3', '4'}}})\n"
      "local function oom(m) m = tostring(m) return m:find('memory') or m:find('cannot create') end\n"
      "if ok then assert(r or e, 'neither response nor error')\n"
      "else assert(oom(r), tostring(r)) end\n"
      "ok, r, e = pcall(http.request, {url = 'http://127.0.0.1:9/x', timeout_ms = 2000,\n"
      "  follow_redirects = true, headers = {apikey = 'k'}})\n"
      "if not ok then assert(oom(r), tostring(r)) end\n";
  /* warm up (module loaded, multi handle made) with no failures */
  CHECK(oflua_run_string(rt, code, "=oom", err, sizeof err) == OFLUA_OK);
  int failed_runs = 0;
  for (long n = 1; n <= 120; n++) {
    countdown = n;
    int rc = oflua_run_string(rt, code, "=oom", err, sizeof err);
    countdown = -1;
    if (rc != OFLUA_OK) {
      fprintf(stderr, "allocation %ld failed: %s\n", n, err);
      failed_runs++;
    }
  }
  CHECK(failed_runs == 0);
  /* and the state still works */
  CHECK(oflua_run_string(rt, code, "=after", err, sizeof err) == OFLUA_OK);
  oflua_close(rt);
  curl_global_cleanup();
  if (failures == 0) printf("test_http_oom: ok\n");
  return failures == 0 ? 0 : 1;
}
