/* oflua.store when Lua's allocations fail (issue 13's C findings): every
 * allocation made while store calls run (inbox_claim, inbox_dead, list,
 * transaction, rekey with a wrong key...) is failed in turn through the
 * state's allocator. Each run may end in a "not enough memory" error, but it
 * must never leave a transaction open: right after it, a second handle on
 * the same SQLite file must get the write lock at once (busy_timeout_ms 100)
 * and the first handle must work. Leaks of plaintext buffers or key contexts
 * on those paths show up in the sanitizer build (LeakSanitizer). */
#include "oflua.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static long countdown = -1; /* > 0: allocations left before one fails */
static lua_Alloc real_alloc;
static void *real_ud;

static void *t_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize > 0 && (ptr == NULL || nsize > osize) && countdown >= 0) {
    if (countdown == 0) return NULL;
    if (--countdown == 0) return NULL;
  }
  return real_alloc(real_ud, ptr, osize, nsize);
}

int main(void) {
  char err[1024];
  oflua_options opts = {NULL, 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  CHECK(rt != NULL);
  if (rt == NULL) return 1;
  lua_State *L = oflua_lua_state(rt);
  real_alloc = lua_getallocf(L, &real_ud);
  lua_setallocf(L, t_alloc, NULL);

  const char *setup =
      "store = require('oflua.store')\n"
      "dir = os.tmpname(); os.remove(dir); assert(os.execute('mkdir -m 700 ' .. dir))\n"
      "local key = store.keygen()\n"
      "A = assert(store.open{path = dir .. '/s.db', key = key})\n"
      "B = assert(store.open{path = dir .. '/s.db', key = key, busy_timeout_ms = 100})\n"
      "for i = 1, 8 do assert(A:put('k' .. i, ('v'):rep(i * 300))) end\n"
      "for i = 1, 8 do assert(A:inbox_add('e' .. i, ('p'):rep(i * 300))) end\n"
      "assert(A:inbox_fail('e1', 'r', 1))\n";
  const char *work =
      "local ok, e = pcall(function()\n"
      "  A:inbox_claim(8, 30)\n"
      "  A:inbox_dead()\n"
      "  A:inbox_list{}\n"
      "  for _ in A:list('k') do end\n"
      "  A:transaction(function() assert(A:put('t', 'x')); A:inbox_add_many{{id = 'm', payload = 'q'}} end)\n"
      "  A:rekey(store.keygen()) -- wrong handle state is fine: any error, no lock left\n"
      "end)\n"
      "if not ok then error(e, 0) end\n";
  CHECK(oflua_run_string(rt, setup, "=setup", err, sizeof err) == OFLUA_OK);
  /* after a rekey the key changes: reopen B from A's current state each time */
  const char *probe2 =
      "local ok, e = B:put('probe', 'v')\n"
      "if not ok and tostring(e):find('rekeyed') then\n"
      "  -- A rekeyed the store: B is stale, which is not a lock problem; its\n"
      "  -- transaction check is enough: it must get the write lock at once\n"
      "  assert(B:transaction(function() return true end))\n"
      "else assert(ok, e) end\n"
      "assert(A:inbox_retry('e1')); assert(A:inbox_retry('e2'))\n"
      "for i = 1, 8 do A:inbox_retry('e' .. i) end\n";
  CHECK(oflua_run_string(rt, work, "=warm", err, sizeof err) == OFLUA_OK);
  CHECK(oflua_run_string(rt, probe2, "=probe", err, sizeof err) == OFLUA_OK);
  int bad = 0;
  for (long n = 1; n <= 600; n++) {
    countdown = n;
    if (oflua_run_string(rt, work, "=work", err, sizeof err) != OFLUA_OK && getenv("OOM_DEBUG"))
      fprintf(stderr, "run %ld: %.200s\n", n, err); /* may fail: out of memory */
    countdown = -1;
    if (oflua_run_string(rt, probe2, "=probe", err, sizeof err) != OFLUA_OK) {
      fprintf(stderr, "after failing allocation %ld: %s\n", n, err);
      if (++bad > 5) break;
    }
  }
  CHECK(bad == 0);
  CHECK(oflua_run_string(rt, "A:close(); B:close(); os.execute('rm -rf ' .. dir)", "=end", err,
                         sizeof err) == OFLUA_OK);
  lua_setallocf(L, real_alloc, real_ud);
  oflua_close(rt);
  if (failures == 0) printf("test_store_oom: ok\n");
  return failures == 0 ? 0 : 1;
}
