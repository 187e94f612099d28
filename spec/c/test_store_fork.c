/* A child of fork() has none of its parent's threads, so a store handle
 * whose group (queue + committer thread) was made before the fork must get
 * a group of its own in the child: s:inbox_add_grouped there completes
 * (with the parent's committer it would wait forever), the row is in the
 * database, and the parent's group goes on working after the child is gone. */
#include "oflua.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "test_runtime.h"

static const char WORK[] =
    "local store = require('oflua.store')\n"
    "local s\n"
    "function start(path)\n"
    "  s = assert(store.open({path = path, key = store.keygen()}))\n"
    "  assert(s:inbox_add_grouped('before', 'x') == true)\n"
    "  return tostring(s:group_stats().rows)\n"
    "end\n"
    "function add(id)\n"
    "  local ok, err = s:inbox_add_grouped(id, 'payload')\n"
    "  assert(ok == true, tostring(err))\n"
    "  return tostring(s:group_stats().rows)\n"
    "end\n"
    "function has(id) return s:inbox_get(id) and 'yes' or 'no' end\n"
    "function finish() s:close() return 'ok' end\n";

static int call(oflua_runtime *rt, const char *fn, const char *arg, char **out) {
  char err[1024];
  const char *args[] = {arg};
  *out = NULL;
  if (oflua_call(rt, fn, arg != NULL ? 1 : 0, args, out, NULL, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "%s: %s\n", fn, err);
    return -1;
  }
  return 0;
}

int main(void) {
  char dir[] = "/tmp/oflua-fork-XXXXXX", path[256];
  if (mkdtemp(dir) == NULL) return 1;
  snprintf(path, sizeof path, "%s/s.db", dir);
  oflua_runtime *rt = test_runtime(WORK);
  CHECK(rt != NULL);
  if (rt == NULL) return 1;
  char *out = NULL;
  CHECK(call(rt, "start", path, &out) == 0 && out != NULL && strcmp(out, "1") == 0);
  free(out);

  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    alarm(20); /* a child stuck on its parent's committer dies here */
    char *r = NULL;
    int ok = call(rt, "add", "in-child", &r) == 0 && r != NULL;
    /* a new group of the child's own: it counts only the child's row */
    ok = ok && strcmp(r, "1") == 0;
    _exit(ok ? 0 : 3);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (WIFSIGNALED(status)) fprintf(stderr, "child killed by signal %d\n", WTERMSIG(status));

  CHECK(call(rt, "has", "in-child", &out) == 0 && out != NULL && strcmp(out, "yes") == 0);
  free(out);
  CHECK(call(rt, "add", "after", &out) == 0 && out != NULL && strcmp(out, "2") == 0);
  free(out);
  CHECK(call(rt, "finish", NULL, &out) == 0);
  free(out);
  oflua_close(rt);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
  if (failures > 0) fprintf(stderr, "%d checks failed\n", failures);
  return failures > 0;
}
