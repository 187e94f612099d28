/*
 * server_shared.c: server.shared(name), process-wide dictionaries shared by
 * every VM of the process (like OpenResty's lua_shared_dict, without
 * eviction: a full dictionary answers nil, "no memory"). One mutex per
 * dictionary; no Lua error is ever raised while it is held.
 */
#include "server_internal.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { SD_STR = 1, SD_INT, SD_NUM, SD_BOOL };

typedef struct sd_entry {
  struct sd_entry *next;
  uint32_t hash;
  int type;
  size_t klen, vlen; /* vlen: string values only */
  union {
    lua_Integer i;
    lua_Number n;
    int b;
  } v;
  char data[]; /* key bytes, then string value bytes */
} sd_entry;

typedef struct shared_dict {
  struct shared_dict *next;
  pthread_mutex_t mu;
  size_t limit, used, count, nbuckets;
  sd_entry **buckets;
  char name[];
} shared_dict;

/* Process-wide registry; dictionaries live until the process exits (and
 * stay reachable from here, so leak checkers do not report them). */
static pthread_mutex_t sd_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static shared_dict *sd_registry = NULL;

#define SD_DEFAULT_SIZE ((size_t)1 << 20)

/* Keyed hash (SipHash) under a per-process random key: keys chosen by a
 * client (header values, ids) cannot be made to collide into one bucket. */
static unsigned char sd_key[16];
static pthread_once_t sd_key_once = PTHREAD_ONCE_INIT;

static void sd_key_init(void) {
  if (oflua__random_bytes(sd_key, sizeof sd_key) != 0) {
    /* no getrandom: still unpredictable enough from addresses and clocks */
    double t = oflua__mono_now() + oflua__wall_now();
    uintptr_t a = (uintptr_t)&t ^ (uintptr_t)sd_key;
    memcpy(sd_key, &t, sizeof t);
    memcpy(sd_key + 8, &a, sizeof a < 8 ? sizeof a : 8);
  }
}

static uint32_t sd_hash(const char *s, size_t n) {
  pthread_once(&sd_key_once, sd_key_init);
  uint64_t h = oflua__siphash(sd_key, s, n);
  return (uint32_t)(h ^ (h >> 32));
}

static size_t sd_entry_cost(size_t klen, size_t vlen) { return sizeof(sd_entry) + klen + vlen; }

/* Finds the entry for key; *prevp gets the link pointing at it. Locked. */
static sd_entry *sd_find(shared_dict *d, const char *k, size_t klen, uint32_t h,
                         sd_entry ***linkp) {
  sd_entry **link = &d->buckets[h & (d->nbuckets - 1)];
  for (; *link != NULL; link = &(*link)->next) {
    sd_entry *e = *link;
    if (e->hash == h && e->klen == klen && memcmp(e->data, k, klen) == 0) {
      if (linkp) *linkp = link;
      return e;
    }
  }
  if (linkp) *linkp = link;
  return NULL;
}

static void sd_grow(shared_dict *d) {
  size_t nb = d->nbuckets * 2;
  sd_entry **b = calloc(nb, sizeof *b);
  if (b == NULL) return; /* keep the old table: only slower */
  for (size_t i = 0; i < d->nbuckets; i++) {
    sd_entry *e = d->buckets[i];
    while (e != NULL) {
      sd_entry *next = e->next;
      e->next = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
      e = next;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = nb;
}

static void sd_unlink(shared_dict *d, sd_entry **link) {
  sd_entry *e = *link;
  *link = e->next;
  d->used -= sd_entry_cost(e->klen, e->vlen);
  d->count--;
  free(e);
}

typedef struct sd_value {
  int type; /* 0: nil */
  lua_Integer i;
  lua_Number n;
  int b;
  const char *s;
  size_t len;
} sd_value;

static void sd_checkvalue(lua_State *L, int idx, sd_value *v) {
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
    case LUA_TNONE:
    case LUA_TNIL: break;
    case LUA_TBOOLEAN:
      v->type = SD_BOOL;
      v->b = lua_toboolean(L, idx);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        v->type = SD_INT;
        v->i = lua_tointeger(L, idx);
      } else {
        v->type = SD_NUM;
        v->n = lua_tonumber(L, idx);
      }
      break;
    case LUA_TSTRING:
      v->type = SD_STR;
      v->s = lua_tolstring(L, idx, &v->len);
      break;
    default:
      luaL_typeerror(L, idx, "string, number, boolean or nil");
  }
}

/* A number argument (a numeric string converts like Lua's arithmetic does:
 * "5" is the integer 5, "1.5" the float 1.5). */
static void sd_checknumber(lua_State *L, int idx, sd_value *v) {
  memset(v, 0, sizeof v[0]);
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (lua_stringtonumber(L, s) != len + 1) luaL_typeerror(L, idx, "number");
    lua_replace(L, idx); /* the converted number */
  }
  luaL_checknumber(L, idx);
  if (lua_isinteger(L, idx)) {
    v->type = SD_INT;
    v->i = lua_tointeger(L, idx);
  } else {
    v->type = SD_NUM;
    v->n = lua_tonumber(L, idx);
  }
}

/* Makes an entry for key/value (not linked). NULL when out of memory. */
static sd_entry *sd_new_entry(const char *k, size_t klen, uint32_t h, const sd_value *v) {
  size_t vlen = v->type == SD_STR ? v->len : 0;
  sd_entry *e = malloc(sizeof *e + klen + vlen);
  if (e == NULL) return NULL;
  e->next = NULL;
  e->hash = h;
  e->type = v->type;
  e->klen = klen;
  e->vlen = vlen;
  memcpy(e->data, k, klen);
  if (vlen > 0) memcpy(e->data + klen, v->s, vlen);
  if (v->type == SD_INT) e->v.i = v->i;
  else if (v->type == SD_NUM) e->v.n = v->n;
  else if (v->type == SD_BOOL) e->v.b = v->b;
  return e;
}

/* Stores key = v (replacing); only_if_absent: add semantics. Locked.
 * Returns 1 stored, 0 exists (add), -1 no memory. */
static int sd_store(shared_dict *d, const char *k, size_t klen, const sd_value *v,
                    int only_if_absent) {
  uint32_t h = sd_hash(k, klen);
  sd_entry **link;
  sd_entry *old = sd_find(d, k, klen, h, &link);
  if (old != NULL && only_if_absent) return 0;
  if (v->type == 0) { /* delete */
    if (old != NULL) sd_unlink(d, link);
    return 1;
  }
  size_t cost = sd_entry_cost(klen, v->type == SD_STR ? v->len : 0);
  size_t freed = old != NULL ? sd_entry_cost(old->klen, old->vlen) : 0;
  if (d->used - freed + cost > d->limit) return -1;
  if (old != NULL && old->type != SD_STR && v->type != SD_STR) { /* in place */
    old->type = v->type;
    if (v->type == SD_INT) old->v.i = v->i;
    else if (v->type == SD_NUM) old->v.n = v->n;
    else old->v.b = v->b;
    return 1;
  }
  sd_entry *e = sd_new_entry(k, klen, h, v);
  if (e == NULL) return -1;
  if (old != NULL) {
    e->next = old->next;
    *link = e;
    d->used -= freed;
    free(old);
  } else {
    e->next = NULL;
    *link = e;
    d->count++;
  }
  d->used += cost;
  if (d->count > d->nbuckets * 2) sd_grow(d);
  return 1;
}

static shared_dict *sd_check(lua_State *L) {
  return *(shared_dict **)luaL_checkudata(L, 1, SHARED_MT);
}

static int sd_lua_get(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  uint32_t h = sd_hash(k, klen);
  /* Never raise while holding the lock: copy the value out, push after. */
  char small[256];
  char *buf = small;
  size_t cap = sizeof small;
  for (;;) {
    sd_value v;
    memset(&v, 0, sizeof v);
    size_t need = 0;
    pthread_mutex_lock(&d->mu);
    sd_entry *e = sd_find(d, k, klen, h, NULL);
    if (e != NULL) {
      v.type = e->type;
      v.i = e->v.i;
      v.n = e->v.n;
      v.b = e->v.b;
      if (e->type == SD_STR) {
        need = e->vlen;
        if (need <= cap) memcpy(buf, e->data + e->klen, need);
      }
    }
    pthread_mutex_unlock(&d->mu);
    if (v.type == SD_STR && need > cap) { /* grow (may raise: lock released) */
      buf = lua_newuserdatauv(L, need, 0);
      cap = need;
      continue;
    }
    switch (v.type) {
      case SD_STR: lua_pushlstring(L, buf, need); break;
      case SD_INT: lua_pushinteger(L, v.i); break;
      case SD_NUM: lua_pushnumber(L, v.n); break;
      case SD_BOOL: lua_pushboolean(L, v.b); break;
      default: lua_pushnil(L);
    }
    return 1;
  }
}

static int sd_result(lua_State *L, int rc) {
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "no memory");
    return 2;
  }
  lua_pushboolean(L, rc > 0);
  return 1;
}

static int sd_lua_set(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  sd_checkvalue(L, 3, &v);
  pthread_mutex_lock(&d->mu);
  int rc = sd_store(d, k, klen, &v, 0);
  pthread_mutex_unlock(&d->mu);
  return sd_result(L, rc);
}

static int sd_lua_add(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  sd_checkvalue(L, 3, &v);
  luaL_argcheck(L, v.type != 0, 3, "value expected");
  pthread_mutex_lock(&d->mu);
  int rc = sd_store(d, k, klen, &v, 1);
  pthread_mutex_unlock(&d->mu);
  return sd_result(L, rc);
}

static int sd_lua_delete(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value v;
  memset(&v, 0, sizeof v);
  pthread_mutex_lock(&d->mu);
  sd_store(d, k, klen, &v, 0);
  pthread_mutex_unlock(&d->mu);
  return 0;
}

/* incr(k, n = 1, init = 0) -> new value | nil, "not a number" | nil, "no memory" */
static int sd_lua_incr(lua_State *L) {
  shared_dict *d = sd_check(L);
  size_t klen;
  const char *k = luaL_checklstring(L, 2, &klen);
  sd_value by, init;
  memset(&by, 0, sizeof by);
  memset(&init, 0, sizeof init);
  by.type = SD_INT;
  by.i = 1;
  init.type = SD_INT;
  if (!lua_isnoneornil(L, 3)) sd_checknumber(L, 3, &by);
  if (!lua_isnoneornil(L, 4)) sd_checknumber(L, 4, &init);
  uint32_t h = sd_hash(k, klen);
  sd_value out;
  memset(&out, 0, sizeof out);
  int rc = 1;
  pthread_mutex_lock(&d->mu);
  sd_entry *e = sd_find(d, k, klen, h, NULL);
  sd_value cur = init;
  if (e != NULL) {
    if (e->type == SD_INT) {
      cur.type = SD_INT;
      cur.i = e->v.i;
    } else if (e->type == SD_NUM) {
      cur.type = SD_NUM;
      cur.n = e->v.n;
    } else {
      rc = -2;
    }
  }
  if (rc == 1) {
    if (cur.type == SD_INT && by.type == SD_INT) {
      out.type = SD_INT; /* wraps around like Lua integers */
      out.i = (lua_Integer)((lua_Unsigned)cur.i + (lua_Unsigned)by.i);
    } else {
      out.type = SD_NUM;
      out.n = (cur.type == SD_INT ? (lua_Number)cur.i : cur.n) +
              (by.type == SD_INT ? (lua_Number)by.i : by.n);
    }
    if (e != NULL) {
      e->type = out.type;
      if (out.type == SD_INT) e->v.i = out.i;
      else e->v.n = out.n;
    } else {
      rc = sd_store(d, k, klen, &out, 0);
    }
  }
  pthread_mutex_unlock(&d->mu);
  if (rc < 0) {
    luaL_pushfail(L);
    if (rc == -2) lua_pushliteral(L, "not a number");
    else lua_pushliteral(L, "no memory");
    return 2;
  }
  if (out.type == SD_INT) lua_pushinteger(L, out.i);
  else lua_pushnumber(L, out.n);
  return 1;
}

/* keys() -> array of the keys (in no particular order) */
static int sd_lua_keys(lua_State *L) {
  shared_dict *d = sd_check(L);
  char *buf = NULL;
  size_t cap = 0;
  for (;;) {
    size_t need = 0, n = 0;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nbuckets; i++)
      for (sd_entry *e = d->buckets[i]; e != NULL; e = e->next) need += sizeof(size_t) + e->klen;
    if (need <= cap) {
      size_t pos = 0;
      for (size_t i = 0; i < d->nbuckets; i++)
        for (sd_entry *e = d->buckets[i]; e != NULL; e = e->next) {
          memcpy(buf + pos, &e->klen, sizeof(size_t));
          memcpy(buf + pos + sizeof(size_t), e->data, e->klen);
          pos += sizeof(size_t) + e->klen;
          n++;
        }
    }
    pthread_mutex_unlock(&d->mu);
    if (need > cap) {
      cap = need + 256;
      buf = lua_newuserdatauv(L, cap, 0); /* may raise: lock released */
      continue;
    }
    lua_createtable(L, (int)(n < 1000000 ? n : 1000000), 0);
    size_t pos = 0;
    for (size_t i = 1; i <= n; i++) {
      size_t klen;
      memcpy(&klen, buf + pos, sizeof klen);
      lua_pushlstring(L, buf + pos + sizeof klen, klen);
      lua_rawseti(L, -2, (lua_Integer)i);
      pos += sizeof klen + klen;
    }
    return 1;
  }
}

static int sd_lua_tostring(lua_State *L) {
  shared_dict *d = sd_check(L);
  lua_pushfstring(L, "oflua.shared_dict (%s)", d->name);
  return 1;
}

/* server.shared(name [, {size = bytes}]) -> dict; the size applies when the
 * dictionary is first created in the process (default 1 MiB). */
int srv_shared(lua_State *L) {
  size_t nlen;
  const char *name = luaL_checklstring(L, 1, &nlen);
  size_t limit = SD_DEFAULT_SIZE;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "size");
    if (!lua_isnil(L, -1)) {
      lua_Integer s = luaL_checkinteger(L, -1);
      luaL_argcheck(L, s >= 1024 && s <= ((lua_Integer)1 << 40), 2,
                    "size must be within [1024, 2^40] bytes");
      limit = (size_t)s;
    }
    lua_pop(L, 1);
  }
  shared_dict **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  pthread_mutex_lock(&sd_registry_mu);
  shared_dict *d = sd_registry;
  while (d != NULL && strcmp(d->name, name) != 0) d = d->next;
  if (d == NULL) {
    d = calloc(1, sizeof *d + nlen + 1);
    if (d != NULL) {
      d->nbuckets = 64;
      d->buckets = calloc(d->nbuckets, sizeof *d->buckets);
      if (d->buckets == NULL || pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d->buckets);
        free(d);
        d = NULL;
      } else {
        memcpy(d->name, name, nlen + 1);
        d->limit = limit;
        d->next = sd_registry;
        sd_registry = d;
      }
    }
  }
  pthread_mutex_unlock(&sd_registry_mu);
  if (d == NULL) return luaL_error(L, "server.shared: out of memory");
  *ud = d;
  luaL_setmetatable(L, SHARED_MT);
  return 1;
}

/* Registers the dictionaries' metatable. */
int srv_shared_methods(lua_State *L) {
  static const luaL_Reg sd_methods[] = {{"get", sd_lua_get},       {"set", sd_lua_set},
                                        {"add", sd_lua_add},       {"incr", sd_lua_incr},
                                        {"delete", sd_lua_delete}, {"keys", sd_lua_keys},
                                        {NULL, NULL}};
  if (luaL_newmetatable(L, SHARED_MT)) {
    luaL_newlib(L, sd_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sd_lua_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  return 0;
}
