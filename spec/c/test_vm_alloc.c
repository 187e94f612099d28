/* The allocator of oflua's Lua states (src/vm_alloc.c): blocks keep their
 * bytes when they grow or shrink across size classes and across the
 * small/large boundary, a block reused from the cache holds what it is
 * asked for, and a state closes without leaking (the sanitizer build checks
 * that, with the cache off). Then a Lua workload of strings and tables of
 * every size runs on such a state and gives the right answers. */
#include "internal.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed * 31u + i * 7u);
}

static int same(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed * 31u + i * 7u)) return 0;
  return 1;
}

int main(void) {
  lua_State *L = oflua__state_alloc();
  CHECK(L != NULL);
  if (L == NULL) return 1;
  void *ud = NULL;
  lua_Alloc f = lua_getallocf(L, &ud);
  CHECK(f != NULL);

  /* grow and shrink one block through every size 1..600 and back */
  size_t sizes[] = {1, 15, 16, 17, 31, 32, 100, 255, 256, 257, 300, 600, 256, 200, 16, 1};
  size_t n = sizeof sizes / sizeof sizes[0];
  unsigned char *p = f(ud, NULL, LUA_TSTRING, sizes[0]);
  CHECK(p != NULL);
  fill(p, sizes[0], 1);
  for (size_t i = 1; i < n && p != NULL; i++) {
    size_t keep = sizes[i - 1] < sizes[i] ? sizes[i - 1] : sizes[i];
    unsigned char *q = f(ud, p, sizes[i - 1], sizes[i]);
    CHECK(q != NULL);
    if (q == NULL) break;
    CHECK(same(q, keep, 1)); /* the common prefix survived */
    fill(q, sizes[i], 1);    /* the whole block is writable */
    p = q;
  }
  if (p != NULL) f(ud, p, sizes[n - 1], 0);

  /* many blocks of each class freed and taken again: a reused block holds
   * the largest size of its class, and no two live blocks overlap */
  enum { COUNT = 600 };
  static unsigned char *blocks[COUNT];
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < COUNT; i++) {
      size_t sz = (size_t)(i % 260) + 1;
      blocks[i] = f(ud, NULL, 0, sz);
      CHECK(blocks[i] != NULL);
      if (blocks[i] != NULL) fill(blocks[i], sz, (unsigned)i);
    }
    for (int i = 0; i < COUNT; i++)
      if (blocks[i] != NULL) CHECK(same(blocks[i], (size_t)(i % 260) + 1, (unsigned)i));
    for (int i = 0; i < COUNT; i++)
      if (blocks[i] != NULL) f(ud, blocks[i], (size_t)(i % 260) + 1, 0);
  }
  CHECK(f(ud, NULL, 0, 0) == NULL); /* a zero-size request frees nothing, returns NULL */

  /* a Lua workload on the state */
  luaL_openlibs(L);
  const char *code =
      "local t, s = {}, 0\n"
      "for i = 1, 20000 do\n"
      "  local k = string.rep('k', i % 300) .. i\n"
      "  t[k] = { i, tostring(i), string.rep('v', i % 70) }\n"
      "  if i % 3 == 0 then t[k] = nil end\n"
      "end\n"
      "for k, v in pairs(t) do s = s + v[1] + #v[3] end\n"
      "collectgarbage()\n"
      "return s";
  CHECK(luaL_dostring(L, code) == LUA_OK);
  long long want = 0;
  for (int i = 1; i <= 20000; i++)
    if (i % 3 != 0) want += i + i % 70;
  CHECK(lua_tointeger(L, -1) == want);
  oflua__state_close(L);

  if (failures > 0) fprintf(stderr, "%d checks failed\n", failures);
  return failures > 0;
}
