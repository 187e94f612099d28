/* Embeds liboflua through oflua.h only: open, run, call, errors, close. */
#include "oflua.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static const char *lua_dir(char *buf, size_t len) {
  const char *src = getenv("OFLUA_SOURCE_DIR");
  snprintf(buf, len, "%s/lua", src ? src : ".");
  return buf;
}

int main(void) {
  char err[512], dir[1024];
  const char *argv[] = {"host", "one"};
  oflua_options opts = {lua_dir(dir, sizeof dir), 2, argv};

  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  CHECK(rt != NULL);
  if (rt == NULL) return 1;

  CHECK(oflua_run_string(rt, "function greet(a, b) return 'hi ' .. a .. (b or '') end", NULL,
                         err, sizeof err) == OFLUA_OK);
  char *res = NULL;
  size_t len = 0;
  const char *args[] = {"there", "!"};
  CHECK(oflua_call(rt, "greet", 2, args, &res, &len, err, sizeof err) == OFLUA_OK);
  CHECK(res != NULL && strcmp(res, "hi there!") == 0 && len == 9);
  free(res);

  /* arg table from the options; cjson and the Lua tree are reachable */
  CHECK(oflua_run_string(rt, "assert(arg[0] == 'host' and arg[1] == 'one')", NULL, err,
                         sizeof err) == OFLUA_OK);
  CHECK(oflua_run_string(rt, "assert(require('cjson').encode({1}) == '[1]')", NULL, err,
                         sizeof err) == OFLUA_OK);
  CHECK(oflua_run_string(rt, "assert(require('oflua.cliutil').pick(nil, 'x') == 'x')", NULL, err,
                         sizeof err) == OFLUA_OK);

  /* errors come back as codes with a message, never printed */
  CHECK(oflua_run_string(rt, "x = = 1", "=bad", err, sizeof err) == OFLUA_ERR_SYNTAX);
  CHECK(strstr(err, "bad:1:") != NULL);
  CHECK(oflua_run_string(rt, "error('kaboom')", NULL, err, sizeof err) == OFLUA_ERR_RUN);
  CHECK(strstr(err, "kaboom") != NULL && strstr(err, "stack traceback") != NULL);
  CHECK(oflua_run_file(rt, "/nonexistent/file.lua", err, sizeof err) == OFLUA_ERR_FILE);
  CHECK(strstr(err, "nonexistent") != NULL);
  CHECK(oflua_call(rt, "no_such_function", 0, NULL, NULL, NULL, err, sizeof err) ==
        OFLUA_ERR_NOTFOUND);
  CHECK(oflua_run_string(rt, "function tbl() return {} end", NULL, err, sizeof err) == OFLUA_OK);
  CHECK(oflua_call(rt, "tbl", 0, NULL, &res, NULL, err, sizeof err) == OFLUA_ERR_TYPE);
  CHECK(res == NULL);
  CHECK(oflua_call(rt, NULL, 0, NULL, NULL, NULL, err, sizeof err) == OFLUA_ERR_ARG);
  /* a NULL error buffer is allowed */
  CHECK(oflua_run_string(rt, "error('quiet')", NULL, NULL, 0) == OFLUA_ERR_RUN);

  /* nil result gives NULL; binary results keep their length */
  CHECK(oflua_run_string(rt, "function nothing() end function bin() return 'a\\0b' end", NULL,
                         err, sizeof err) == OFLUA_OK);
  CHECK(oflua_call(rt, "nothing", 0, NULL, &res, &len, err, sizeof err) == OFLUA_OK);
  CHECK(res == NULL && len == 0);
  CHECK(oflua_call(rt, "bin", 0, NULL, &res, &len, err, sizeof err) == OFLUA_OK);
  CHECK(res != NULL && len == 3 && res[1] == '\0');
  free(res);

  /* the runtime stays usable after errors; the escape hatch works */
  CHECK(oflua_lua_state(rt) != NULL);
  CHECK(oflua_run_string(rt, "assert(1 + 1 == 2)", NULL, err, sizeof err) == OFLUA_OK);

  oflua_close(rt);
  oflua_close(NULL);
  /* defaults (no options, no error buffer) open too */
  oflua_runtime *rt2 = oflua_open(NULL, NULL, 0);
  CHECK(rt2 != NULL);
  oflua_close(rt2);
  CHECK(strcmp(oflua_version(), OFLUA_VERSION_STRING) == 0);

  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("test_embed: all checks passed\n");
  return 0;
}
