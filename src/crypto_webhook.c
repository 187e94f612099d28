/*
 * crypto_webhook.c: the native fast path of ofauth.webhooks.verify, part of
 * oflua.crypto. One C call per delivery does what the Lua verifier did in
 * many steps (header parsing, base64/hex, HMAC-SHA256, constant-time
 * comparison) without copying the body: the MAC covers "<id>.<t>.<body>"
 * (Svix) or "<t>.<body>" (checklist) as parts.
 *
 *   webhook_svix(body, id, ts, sig, secret, now, tolerance)
 *   webhook_checklist(body, header, secret, now, tolerance)
 *     -> meta {scheme, id, idempotency_key, timestamp}, ascii | nil, reason
 *        ascii: true when every body byte is in 1..127 (no NUL, nothing
 *        that needs a UTF-8 check), so the caller can skip its own checks
 *   webhook_max_signatures (8): a signature header with more entries is
 *     refused (malformed_header) before any HMAC is computed
 *
 * id, ts, sig may be nil (missing header). secret is a string or a list of
 * strings (rotation: valid if any matches). now and tolerance are seconds.
 * Reasons and their order are those documented in lua/ofauth/webhooks.lua:
 * missing_header, malformed_header, stale_timestamp, bad_secret,
 * bad_signature. JSON parsing stays in Lua (lua-cjson).
 *
 * Idempotency keys: Svix "svix:<id>" (the sender's message id, the same on
 * every retry); checklist "sha256:<hex of sha256(body)>", the body alone, so
 * the same event re-signed at a later t is a duplicate.
 *
 * Keyed HMAC contexts are kept per Lua state (an upvalue, at most KEY_CACHE
 * secrets, least recently added replaced): the key schedule is done once per
 * secret instead of once per delivery. A state is used by one thread at a
 * time, so the cache needs no lock.
 */
#include "crypto_core.h"
#include "crypto_webhook.h"
#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define MAX_SIGS 8           /* signature entries per header */
#define MAX_ID 256           /* svix-id bytes */
#define MAX_TS_DIGITS 12     /* timestamp digits */
#define MAX_CHECKLIST 4096   /* checklist header bytes */
#define KEY_CACHE 4
#define SCHEME_SVIX 1
#define SCHEME_CHECKLIST 2

typedef struct {
  int scheme;
  char *secret; /* a copy of the configured secret string, wiped when freed */
  size_t len;
  ofc_hmac_key *k;
} KeyEntry;

typedef struct {
  KeyEntry e[KEY_CACHE];
  int next;
} KeyCache;

static void entry_free(KeyEntry *e) {
  if (e->secret != NULL) {
    ofc_cleanse(e->secret, e->len);
    free(e->secret);
  }
  ofc_hmac_key_free(e->k);
  memset(e, 0, sizeof *e);
}

static int cache_gc(lua_State *L) {
  KeyCache *c = lua_touserdata(L, 1);
  for (int i = 0; i < KEY_CACHE; i++) entry_free(&c->e[i]);
  return 0;
}

/* The keyed HMAC for a configured secret; NULL when the secret is not
 * usable (bad_secret). Raises only on out-of-memory, with nothing held. */
static ofc_hmac_key *key_for(lua_State *L, KeyCache *c, int scheme, const char *secret,
                             size_t len) {
  for (int i = 0; i < KEY_CACHE; i++) {
    KeyEntry *e = &c->e[i];
    if (e->k != NULL && e->scheme == scheme && e->len == len && memcmp(e->secret, secret, len) == 0)
      return e->k;
  }
  ofc_hmac_key *k = NULL;
  if (scheme == SCHEME_SVIX) {
    /* whsec_<base64>; the base64 alone is accepted too */
    const char *b64 = secret;
    size_t blen = len;
    if (len >= 6 && memcmp(secret, "whsec_", 6) == 0) b64 += 6, blen -= 6;
    if (blen == 0) return NULL;
    size_t cap = blen / 4 * 3 + 3, keylen = 0;
    unsigned char *key = malloc(cap);
    if (key == NULL) luaL_error(L, "out of memory");
    if (ofc_base64_decode(b64, blen, 0, key, &keylen, NULL) != NULL) {
      ofc_cleanse(key, cap);
      free(key);
      return NULL;
    }
    k = ofc_hmac_key_new("sha256", key, keylen);
    ofc_cleanse(key, cap);
    free(key);
  } else {
    if (len == 0) return NULL;
    k = ofc_hmac_key_new("sha256", secret, len);
  }
  char *copy = k != NULL ? malloc(len > 0 ? len : 1) : NULL;
  if (copy == NULL) {
    ofc_hmac_key_free(k);
    luaL_error(L, "out of memory (HMAC key)");
  }
  memcpy(copy, secret, len);
  KeyEntry *e = &c->e[c->next];
  c->next = (c->next + 1) % KEY_CACHE;
  entry_free(e);
  e->scheme = scheme;
  e->secret = copy;
  e->len = len;
  e->k = k;
  return k;
}

static int fail(lua_State *L, const char *reason) {
  lua_pushnil(L);
  lua_pushstring(L, reason);
  return 2;
}

/* Lua's %s (isspace in the C locale). */
static int is_space(unsigned char ch) { return ch == ' ' || (ch >= '\t' && ch <= '\r'); }
static int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }
static int is_alnum(unsigned char ch) {
  return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}
static int is_hex(unsigned char ch) {
  return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* Digits only, 1..MAX_TS_DIGITS of them -> 0 and *t; else -1. */
static int parse_ts(const char *ts, size_t len, int64_t *t) {
  if (len == 0 || len > MAX_TS_DIGITS) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit((unsigned char)ts[i])) return -1;
    v = v * 10 + (ts[i] - '0');
  }
  *t = v;
  return 0;
}

static const char *check_time(lua_Number now, lua_Number tol, const char *ts, size_t len,
                              int64_t *t) {
  if (parse_ts(ts, len, t) != 0) return "malformed_header";
  if (fabs(now - (lua_Number)*t) > tol) return "stale_timestamp";
  return NULL;
}

/* The secrets argument: a string, or a list of them (read up to the first
 * nil, as ipairs does). Pushes the i-th (1-based) on the stack and returns
 * 1, 0 after the last; a value that is not a string is pushed as nil. */
static int secret_at(lua_State *L, int arg, lua_Integer i) {
  if (lua_type(L, arg) != LUA_TTABLE) {
    if (i > 1) return 0;
    lua_pushvalue(L, arg);
  } else if (lua_geti(L, arg, i) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return 1;
}

typedef struct {
  const char *p;
  size_t len;
} Span;

/* svix-signature: space-separated "<version>,<value>" entries, version
 * v<digits>[a-z], value without a comma (a stray comma means two headers
 * were joined: ambiguous). Without a space, the whole value is one entry.
 * Fills the v1 values; returns their count, or -1 if malformed / too many. */
static int svix_entries(const char *sig, size_t len, Span *v1) {
  int entries = 0, n = 0;
  int split = memchr(sig, ' ', len) != NULL;
  size_t i = 0;
  while (i < len) {
    size_t start = i, end = len;
    if (split) {
      while (i < len && is_space((unsigned char)sig[i])) i++;
      if (i == len) break;
      start = i;
      while (i < len && !is_space((unsigned char)sig[i])) i++;
      end = i;
    } else {
      i = len;
    }
    if (++entries > MAX_SIGS) return -1;
    const char *e = sig + start;
    size_t elen = end - start, j = 1;
    if (elen < 1 || e[0] != 'v') return -1;
    while (j < elen && is_digit((unsigned char)e[j])) j++;
    if (j == 1) return -1;
    size_t vend = j;
    if (j < elen && e[j] >= 'a' && e[j] <= 'z') j++;
    if (j >= elen || e[j] != ',') return -1;
    const char *val = e + j + 1;
    size_t vlen = elen - j - 1;
    if (vlen == 0 || memchr(val, ',', vlen) != NULL) return -1;
    if (j == 2 && vend == 2 && e[1] == '1') v1[n++] = (Span){val, vlen};
  }
  return n;
}

/* Every byte in 1..127: 8 bytes at a time. */
static int plain_ascii(const char *p, size_t n) {
  const uint64_t high = 0x8080808080808080ull, ones = 0x0101010101010101ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if ((w & high) != 0 || ((w - ones) & ~w & high) != 0) return 0; /* >= 128, or a zero byte */
  }
  for (; i < n; i++)
    if ((unsigned char)p[i] == 0 || (unsigned char)p[i] >= 128) return 0;
  return 1;
}

static void push_meta_svix(lua_State *L, const char *id, size_t idlen, int64_t t) {
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "svix");
  lua_setfield(L, -2, "scheme");
  lua_pushlstring(L, id, idlen);
  lua_setfield(L, -2, "id");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "svix:");
  luaL_addlstring(&b, id, idlen);
  luaL_pushresult(&b);
  lua_setfield(L, -2, "idempotency_key");
  lua_pushinteger(L, (lua_Integer)t);
  lua_setfield(L, -2, "timestamp");
}

/* webhook_svix(body, id, ts, sig, secret, now, tolerance) */
static int webhook_svix(lua_State *L) {
  KeyCache *cache = lua_touserdata(L, lua_upvalueindex(1));
  size_t bodylen, idlen = 0, tslen = 0, siglen = 0;
  const char *body = luaL_checklstring(L, 1, &bodylen);
  const char *id = luaL_optlstring(L, 2, NULL, &idlen);
  const char *ts = luaL_optlstring(L, 3, NULL, &tslen);
  const char *sig = luaL_optlstring(L, 4, NULL, &siglen);
  luaL_checkany(L, 5);
  lua_Number now = luaL_checknumber(L, 6), tol = luaL_checknumber(L, 7);
  if (id == NULL || ts == NULL || sig == NULL || idlen == 0 || tslen == 0 || siglen == 0)
    return fail(L, "missing_header");
  /* Message ids are printable ASCII (msg_<base62> from Svix); anything else
   * would become an idempotency key that is awkward to log or compare. */
  if (idlen > MAX_ID) return fail(L, "malformed_header");
  for (size_t i = 0; i < idlen; i++)
    if ((unsigned char)id[i] < 33 || (unsigned char)id[i] > 126) return fail(L, "malformed_header");
  int64_t t = 0;
  const char *terr = check_time(now, tol, ts, tslen, &t);
  if (terr != NULL) return fail(L, terr);
  Span cand[MAX_SIGS];
  int ncand = svix_entries(sig, siglen, cand);
  if (ncand <= 0) return fail(L, "malformed_header");

  const void *parts[5] = {id, ".", ts, ".", body};
  size_t lens[5] = {idlen, 1, tslen, 1, bodylen};
  for (lua_Integer i = 1; secret_at(L, 5, i); i++) {
    size_t slen = 0;
    const char *s = lua_tolstring(L, -1, &slen);
    ofc_hmac_key *k = s != NULL ? key_for(L, cache, SCHEME_SVIX, s, slen) : NULL;
    lua_pop(L, 1);
    if (k == NULL) return fail(L, "bad_secret");
    unsigned char mac[32];
    char expected[44];
    if (ofc_hmac_key_mac_parts(k, parts, lens, 5, mac, NULL) != 0)
      return luaL_error(L, "webhook_svix: OpenSSL failure");
    ofc_base64_encode(mac, sizeof mac, 0, expected);
    for (int c = 0; c < ncand; c++) {
      if (cand[c].len == sizeof expected &&
          CRYPTO_memcmp(expected, cand[c].p, sizeof expected) == 0) {
        push_meta_svix(L, id, idlen, t);
        lua_pushboolean(L, plain_ascii(body, bodylen));
        return 2;
      }
    }
  }
  if (lua_type(L, 5) == LUA_TTABLE && lua_rawlen(L, 5) == 0) return fail(L, "bad_secret");
  return fail(L, "bad_signature");
}

/* The checklist header: comma-separated parts "<alnum>=<value>", whitespace
 * around a part trimmed; t= once (twice is ambiguous), v1= up to MAX_SIGS
 * times, other parts ignored. Each v1 is 64 hex digits. */
static const char *parse_checklist(const char *h, size_t len, Span *ts, Span *v1, int *nv1) {
  *nv1 = 0;
  ts->p = NULL;
  ts->len = 0;
  size_t i = 0;
  while (i < len) {
    size_t start = i;
    while (i < len && h[i] != ',') i++;
    size_t end = i;
    if (i < len) i++; /* the comma */
    if (end == start) continue;
    size_t a = start, b = end;
    while (a < b && is_space((unsigned char)h[a])) a++;
    size_t k = a;
    while (k < b && is_alnum((unsigned char)h[k])) k++;
    if (k == a || k >= b || h[k] != '=') continue; /* not key=value: ignored */
    while (b > k + 1 && is_space((unsigned char)h[b - 1])) b--;
    Span val = {h + k + 1, b - k - 1};
    if (k - a == 1 && h[a] == 't') {
      if (ts->p != NULL) return "malformed_header"; /* two timestamps */
      *ts = val;
    } else if (k - a == 2 && h[a] == 'v' && h[a + 1] == '1') {
      if (*nv1 == MAX_SIGS) return "malformed_header";
      v1[(*nv1)++] = val;
    }
  }
  if (ts->p == NULL || ts->len == 0 || *nv1 == 0) return "malformed_header";
  for (int s = 0; s < *nv1; s++) {
    if (v1[s].len != 64) return "malformed_header";
    for (size_t j = 0; j < 64; j++)
      if (!is_hex((unsigned char)v1[s].p[j])) return "malformed_header";
  }
  return NULL;
}

/* webhook_checklist(body, header, secret, now, tolerance) */
static int webhook_checklist(lua_State *L) {
  KeyCache *cache = lua_touserdata(L, lua_upvalueindex(1));
  size_t bodylen, hlen;
  const char *body = luaL_checklstring(L, 1, &bodylen);
  const char *h = luaL_checklstring(L, 2, &hlen);
  luaL_checkany(L, 3);
  lua_Number now = luaL_checknumber(L, 4), tol = luaL_checknumber(L, 5);
  if (hlen > MAX_CHECKLIST) return fail(L, "malformed_header");
  Span ts, v1[MAX_SIGS];
  int nv1 = 0;
  const char *perr = parse_checklist(h, hlen, &ts, v1, &nv1);
  if (perr != NULL) return fail(L, perr);
  int64_t t = 0;
  const char *terr = check_time(now, tol, ts.p, ts.len, &t);
  if (terr != NULL) return fail(L, terr);

  const void *parts[3] = {ts.p, ".", body};
  size_t lens[3] = {ts.len, 1, bodylen};
  for (lua_Integer i = 1; secret_at(L, 3, i); i++) {
    size_t slen = 0;
    const char *s = lua_tolstring(L, -1, &slen);
    ofc_hmac_key *k = s != NULL ? key_for(L, cache, SCHEME_CHECKLIST, s, slen) : NULL;
    lua_pop(L, 1);
    if (k == NULL) return fail(L, "bad_secret");
    unsigned char mac[32];
    char expected[64], got[64];
    if (ofc_hmac_key_mac_parts(k, parts, lens, 3, mac, NULL) != 0)
      return luaL_error(L, "webhook_checklist: OpenSSL failure");
    ofc_hex_encode(mac, sizeof mac, expected);
    for (int c = 0; c < nv1; c++) {
      for (size_t j = 0; j < 64; j++) {
        unsigned char ch = (unsigned char)v1[c].p[j];
        got[j] = (char)(ch >= 'A' && ch <= 'F' ? ch + 32 : ch);
      }
      if (CRYPTO_memcmp(expected, got, 64) == 0) {
        unsigned char digest[32];
        char key[7 + 64];
        if (ofc_sha256(body, bodylen, digest) != 0)
          return luaL_error(L, "webhook_checklist: OpenSSL failure");
        memcpy(key, "sha256:", 7);
        ofc_hex_encode(digest, sizeof digest, key + 7);
        lua_createtable(L, 0, 3);
        lua_pushliteral(L, "checklist");
        lua_setfield(L, -2, "scheme");
        lua_pushlstring(L, key, sizeof key);
        lua_setfield(L, -2, "idempotency_key");
        lua_pushinteger(L, (lua_Integer)t);
        lua_setfield(L, -2, "timestamp");
        lua_pushboolean(L, plain_ascii(body, bodylen));
        return 2;
      }
    }
  }
  if (lua_type(L, 3) == LUA_TTABLE && lua_rawlen(L, 3) == 0) return fail(L, "bad_secret");
  return fail(L, "bad_signature");
}

/* Adds webhook_svix, webhook_checklist and webhook_max_signatures to the
 * module table on the top of the stack. */
void ofc_webhook_register(lua_State *L) {
  KeyCache *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, cache_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, webhook_svix, 1);
  lua_setfield(L, -3, "webhook_svix");
  lua_pushcclosure(L, webhook_checklist, 1);
  lua_setfield(L, -2, "webhook_checklist");
  lua_pushinteger(L, MAX_SIGS);
  lua_setfield(L, -2, "webhook_max_signatures");
}
