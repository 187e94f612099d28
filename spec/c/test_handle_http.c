/* oflua_handle_http through oflua.h only: a C service hands requests to the
 * same Lua handlers `oflua serve` runs (routing, exact body bytes, headers,
 * generic 500 on error), and server.shared counts exactly across threads
 * that each own a runtime. */
#include "oflua.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static char lua_dir[1024], fixtures[1024];

static const char *header(const oflua_http_response *r, const char *name) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

static oflua_runtime *open_rt(void) {
  char err[512];
  oflua_options opts = {lua_dir, 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  if (rt == NULL) fprintf(stderr, "oflua_open: %s\n", err);
  return rt;
}

static void test_router_handler(void) {
  char err[4096], path[1200];
  oflua_runtime *rt = open_rt();
  CHECK(rt != NULL);
  if (rt == NULL) return;
  oflua_http_request req = {"GET", "/", NULL, NULL, 0, NULL, 0, NULL};
  oflua_http_response resp;

  /* no handler loaded yet */
  CHECK(oflua_handle_http(rt, &req, &resp, err, sizeof err) == OFLUA_ERR_NOTFOUND);

  snprintf(path, sizeof path, "%s/embed.lua", fixtures);
  CHECK(oflua_load_handler(rt, path, err, sizeof err) == OFLUA_OK);

  /* routing, params, query decoding, headers (repeated joined), exact bytes */
  static const char body[] = "bin\0ary\r\n\xff";
  const oflua_header hdrs[] = {{"Content-Type", "application/x-test"},
                               {"X-Multi", "one"},
                               {"x-multi", "two"}};
  oflua_http_request post = {"POST", "/echo/t1", "a=x+y%21&b=%41z+&a=last", hdrs, 3,
                             body, sizeof body - 1, "10.0.0.1"};
  CHECK(oflua_handle_http(rt, &post, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(err[0] == '\0');
  if (err[0] != '\0') fprintf(stderr, "%s\n", err);
  CHECK(resp.status == 200);
  CHECK(resp.body_len == sizeof body - 1 && memcmp(resp.body, body, sizeof body - 1) == 0);
  CHECK(header(&resp, "Content-Type") && strcmp(header(&resp, "Content-Type"),
                                                "application/x-test") == 0);
  CHECK(header(&resp, "X-Tag") && strcmp(header(&resp, "X-Tag"), "t1") == 0);
  CHECK(header(&resp, "X-Query") && strcmp(header(&resp, "X-Query"), "last,Az ") == 0);
  CHECK(header(&resp, "X-Multi") && strcmp(header(&resp, "X-Multi"), "one, two") == 0);
  oflua_http_response_free(&resp);
  CHECK(resp.body == NULL && resp.headers == NULL);

  /* empty body: "" in Lua, nothing back */
  oflua_http_request empty = {"POST", "/echo/e", NULL, NULL, 0, NULL, 0, NULL};
  CHECK(oflua_handle_http(rt, &empty, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(resp.status == 200 && resp.body_len == 0);
  oflua_http_response_free(&resp);

  /* 404 and 405 from the router */
  CHECK(oflua_handle_http(rt, &req, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(resp.status == 404);
  oflua_http_response_free(&resp);
  oflua_http_request wrong = {"GET", "/echo/x", NULL, NULL, 0, NULL, 0, NULL};
  CHECK(oflua_handle_http(rt, &wrong, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(resp.status == 405 && header(&resp, "Allow") && strcmp(header(&resp, "Allow"), "POST") == 0);
  oflua_http_response_free(&resp);

  /* a handler error: generic 500, details only in errbuf */
  oflua_http_request boom = {"GET", "/boom", NULL, NULL, 0, NULL, 0, NULL};
  CHECK(oflua_handle_http(rt, &boom, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(resp.status == 500);
  CHECK(resp.body != NULL && strstr(resp.body, "boom") == NULL);
  CHECK(strstr(err, "embedded boom") != NULL && strstr(err, "stack traceback") != NULL);
  oflua_http_response_free(&resp);

  /* a bad return value: 500 too; the runtime stays usable */
  oflua_http_request bad = {"GET", "/bad", NULL, NULL, 0, NULL, 0, NULL};
  CHECK(oflua_handle_http(rt, &bad, &resp, NULL, 0) == OFLUA_OK);
  CHECK(resp.status == 500);
  oflua_http_response_free(&resp);
  CHECK(oflua_handle_http(rt, &post, &resp, err, sizeof err) == OFLUA_OK && resp.status == 200);
  oflua_http_response_free(&resp);

  /* error text passes through the error filter ofauth.redact installs */
  snprintf(path, sizeof path, "%s/leaky.lua", fixtures);
  CHECK(oflua_load_handler(rt, path, err, sizeof err) == OFLUA_OK);
  CHECK(oflua_handle_http(rt, &boom, &resp, err, sizeof err) == OFLUA_OK);
  CHECK(resp.status == 500);
  CHECK(strstr(err, "conn_abcdef123456") == NULL && strstr(err, "conn_\xe2\x80\xa6" "3456") != NULL);
  CHECK(strstr(err, "sk_test_leaky_secret_123") == NULL && strstr(err, "[redacted]") != NULL);
  oflua_http_response_free(&resp);

  /* bad arguments */
  CHECK(oflua_handle_http(rt, NULL, &resp, err, sizeof err) == OFLUA_ERR_ARG);
  oflua_http_request nomethod = {NULL, "/", NULL, NULL, 0, NULL, 0, NULL};
  CHECK(oflua_handle_http(rt, &nomethod, &resp, err, sizeof err) == OFLUA_ERR_ARG);
  oflua_http_response_free(NULL);
  oflua_close(rt);
}

static void test_other_handler_shapes(void) {
  char err[4096];
  oflua_runtime *rt = open_rt();
  CHECK(rt != NULL);
  if (rt == NULL) return;
  const char *scripts[] = {
      "return function(req) return 201, req.method .. ' ' .. req.path .. ' ' .. #req.body, "
      "{['X-A'] = {'1', '2'}} end",
      "return {handler = function(req) return 201, req.method .. ' ' .. req.path .. ' ' .. "
      "#req.body end, shutdown = function() end}",
  };
  for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++) {
    char path[] = "/tmp/oflua_handler_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) continue;
    FILE *f = fdopen(fd, "w");
    fputs(scripts[i], f);
    fclose(f);
    CHECK(oflua_load_handler(rt, path, err, sizeof err) == OFLUA_OK);
    remove(path);
    oflua_http_request req = {"PUT", "/p", NULL, NULL, 0, "abc", 3, NULL};
    oflua_http_response resp;
    CHECK(oflua_handle_http(rt, &req, &resp, err, sizeof err) == OFLUA_OK);
    CHECK(resp.status == 201 && resp.body_len == 8 && memcmp(resp.body, "PUT /p 3", 8) == 0);
    if (i == 0) {
      CHECK(resp.nheaders == 2);
      CHECK(resp.nheaders == 2 && strcmp(resp.headers[0].value, "1") == 0 &&
            strcmp(resp.headers[1].value, "2") == 0);
    }
    oflua_http_response_free(&resp);
  }
  oflua_close(rt);
}

/* 8 threads, each with its own runtime, 10,000 increments each. */
#define THREADS 8
#define INCRS 10000

static void *incr_thread(void *arg) {
  (void)arg;
  char err[512];
  oflua_runtime *rt = open_rt();
  if (rt == NULL) return (void *)1;
  int rc = oflua_run_string(rt,
                            "local d = require('oflua.server').shared('c-test')\n"
                            "for _ = 1, 10000 do assert(d:incr('n')) end\n"
                            "for i = 1, 100 do d:set('k' .. i, ('v'):rep(i)) d:get('k' .. i) end",
                            "=incr", err, sizeof err);
  if (rc != OFLUA_OK) fprintf(stderr, "incr thread: %s\n", err);
  oflua_close(rt);
  return rc == OFLUA_OK ? NULL : (void *)1;
}

static void test_shared_across_threads(void) {
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, incr_thread, NULL) == 0);
  for (int i = 0; i < THREADS; i++) {
    void *res = NULL;
    pthread_join(t[i], &res);
    CHECK(res == NULL);
  }
  char err[512], *out = NULL;
  oflua_runtime *rt = open_rt();
  CHECK(rt != NULL);
  if (rt == NULL) return;
  CHECK(oflua_run_string(rt, "function total() return "
                             "tostring(require('oflua.server').shared('c-test'):get('n')) end",
                         NULL, err, sizeof err) == OFLUA_OK);
  CHECK(oflua_call(rt, "total", 0, NULL, &out, NULL, err, sizeof err) == OFLUA_OK);
  CHECK(out != NULL && atoi(out) == THREADS * INCRS);
  if (out) fprintf(stderr, "shared counter: %s\n", out);
  free(out);
  oflua_close(rt);
}

int main(void) {
  const char *src = getenv("OFLUA_SOURCE_DIR");
  snprintf(lua_dir, sizeof lua_dir, "%s/lua", src ? src : ".");
  snprintf(fixtures, sizeof fixtures, "%s/spec/fixtures/servers", src ? src : ".");
  test_router_handler();
  test_other_handler_shapes();
  test_shared_across_threads();
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
