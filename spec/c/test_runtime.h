/* test_runtime.h: a runtime for a C test thread, on the source tree's Lua
 * files ($OFLUA_SOURCE_DIR/lua), with the test's Lua code `code` already run
 * (it defines the globals the test then calls with oflua_call). NULL, with
 * the reason on stderr, on failure. */
#ifndef OFLUA_SPEC_TEST_RUNTIME_H
#define OFLUA_SPEC_TEST_RUNTIME_H

#include <stdio.h>
#include <stdlib.h>

#include "oflua.h"

static inline oflua_runtime *test_runtime(const char *code) {
  char err[512], dir[1024];
  const char *src = getenv("OFLUA_SOURCE_DIR");
  snprintf(dir, sizeof dir, "%s/lua", src ? src : ".");
  oflua_options opts = {dir, 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  if (rt == NULL) {
    fprintf(stderr, "oflua_open: %s\n", err);
    return NULL;
  }
  if (oflua_run_string(rt, code, "work", err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "load: %s\n", err);
    oflua_close(rt);
    return NULL;
  }
  return rt;
}

#endif
