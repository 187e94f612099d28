/*
 * vm_alloc.c: the memory allocator of the Lua states oflua makes
 * (oflua__state_new): malloc and free, with a cache of small blocks per
 * state in front of them.
 *
 * A request handled by a worker VM allocates and frees a hundred or so
 * small blocks (strings, tables, their parts, the decoded JSON). A state is
 * used by one thread at a time, but not always the same one (an I/O thread
 * borrows it, the worker runs it), so glibc's per-thread caches often hold
 * the wrong blocks and the frees land in the arenas under their locks. Here
 * each state keeps its freed blocks of up to VA_MAX_SMALL bytes on lists by
 * size class (16 bytes apart), at most VA_KEEP a class; a new block of that
 * class reuses one. Nothing is shared between states, so no lock: the
 * server's hand-offs of a VM between threads already order its accesses.
 *
 * Every small block is allocated at its class's full size, so any block on
 * a list fits any request of the class. Larger blocks go to realloc/free.
 * A state made here must be closed with oflua__state_close (frees the lists
 * and the cache itself after lua_close); one closed by lua_close alone keeps
 * its cache, reachable, until the process ends. Under AddressSanitizer the cache is
 * off, so that a use after free of a Lua object is still caught.
 */
#include "internal.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VA_STEP 16
#define VA_MAX_SMALL 256 /* bytes: larger blocks are not cached */
#define VA_CLASSES (VA_MAX_SMALL / VA_STEP)
#define VA_KEEP 256 /* blocks kept a class (at most ~0.5 MiB a state) */

#if defined(__SANITIZE_ADDRESS__)
#define VA_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VA_CACHE 0
#endif
#endif
#ifndef VA_CACHE
#define VA_CACHE 1
#endif

typedef struct va_block {
  struct va_block *next;
} va_block;

typedef struct vm_alloc {
  struct vm_alloc *prev, *next; /* the live caches (below) */
  va_block *free[VA_CLASSES];
  unsigned count[VA_CLASSES];
  int warn_on, warn_cont; /* the warning system: on; inside a message in pieces */
} vm_alloc;

/* Every cache whose state was not closed by oflua__state_close. A state
 * closed by lua_close alone (os.exit(code, true) does that, then exits)
 * leaves its cache here until the process ends. */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static vm_alloc *live_head = NULL;

/* live_mu is held across fork(), so that a child never inherits it locked
 * (another thread making or closing a state at that moment). */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void live_lock(void) { pthread_mutex_lock(&live_mu); }
static void live_unlock(void) { pthread_mutex_unlock(&live_mu); }
static void fork_init(void) { (void)pthread_atfork(live_lock, live_unlock, live_unlock); }

/* the class of a block of n bytes (1..VA_MAX_SMALL), or -1 */
static int class_of(size_t n) {
  return VA_CACHE && n > 0 && n <= VA_MAX_SMALL ? (int)((n - 1) / VA_STEP) : -1;
}

static void *take(vm_alloc *a, int c, size_t n) {
  if (c < 0) return malloc(n);
  va_block *b = a->free[c];
  if (b != NULL) {
    a->free[c] = b->next;
    a->count[c]--;
    return b;
  }
  return malloc((size_t)(c + 1) * VA_STEP);
}

static void give(vm_alloc *a, int c, void *p) {
  if (c < 0 || a->count[c] >= VA_KEEP) {
    free(p);
    return;
  }
  va_block *b = p;
  b->next = a->free[c];
  a->free[c] = b;
  a->count[c]++;
}

/* lua_Alloc: osize is the block's size when ptr is not NULL (Lua's rule) */
static void *va_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  vm_alloc *a = ud;
  int oc = ptr != NULL ? class_of(osize) : -1;
  if (nsize == 0) {
    if (ptr != NULL) give(a, oc, ptr);
    return NULL;
  }
  int nc = class_of(nsize);
  if (ptr == NULL) return take(a, nc, nsize);
  if (oc < 0 && nc < 0) {
    void *r = realloc(ptr, nsize);
    return r != NULL || nsize > osize ? r : ptr; /* a shrink never fails */
  }
  if (oc == nc) return ptr; /* the block is its class's full size */
  void *q = take(a, nc, nsize);
  if (q == NULL) return nsize <= osize ? ptr : NULL; /* a shrink never fails: ptr is big enough */
  memcpy(q, ptr, osize < nsize ? osize : nsize);
  give(a, oc, ptr);
  return q;
}

/* What luaL_newstate installs, which lauxlib keeps static. */
static int va_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n",
          msg != NULL ? msg : "error object is not a string");
  fflush(stderr);
  return 0; /* then Lua aborts */
}

/* The warning system: off until "@on"; a message in pieces (tocont) is
 * printed as one line. */
static void va_warn(void *ud, const char *msg, int tocont) {
  vm_alloc *a = ud;
  int continuing = a->warn_cont;
  if (!continuing && !tocont && msg[0] == '@') { /* a control message */
    if (strcmp(msg, "@off") == 0) a->warn_on = 0;
    else if (strcmp(msg, "@on") == 0) a->warn_on = 1;
    return;
  }
  if (a->warn_on) {
    if (!continuing) fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputs("\n", stderr);
    fflush(stderr);
  }
  a->warn_cont = tocont;
}

lua_State *oflua__state_alloc(void) {
  pthread_once(&fork_once, fork_init); /* (if it cannot register: as before) */
  vm_alloc *a = calloc(1, sizeof *a);
  if (a == NULL) return NULL;
  lua_State *L = lua_newstate(va_alloc, a);
  if (L == NULL) {
    free(a);
    return NULL;
  }
  lua_atpanic(L, va_panic);
  lua_setwarnf(L, va_warn, a);
  pthread_mutex_lock(&live_mu);
  a->next = live_head;
  if (live_head != NULL) live_head->prev = a;
  live_head = a;
  pthread_mutex_unlock(&live_mu);
  return L;
}

void oflua__state_close(lua_State *L) {
  if (L == NULL) return;
  void *ud = NULL;
  lua_Alloc f = lua_getallocf(L, &ud);
  lua_close(L);
  if (f != va_alloc) return; /* not one of ours */
  vm_alloc *a = ud;
  pthread_mutex_lock(&live_mu);
  if (a->prev != NULL) a->prev->next = a->next;
  else live_head = a->next;
  if (a->next != NULL) a->next->prev = a->prev;
  pthread_mutex_unlock(&live_mu);
  for (int c = 0; c < VA_CLASSES; c++)
    while (a->free[c] != NULL) {
      va_block *b = a->free[c];
      a->free[c] = b->next;
      free(b);
    }
  free(a);
}
