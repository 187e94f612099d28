/*
 * crypto.c: oflua.crypto, the Lua face of crypto_core.c (OpenSSL 3) plus the
 * byte-string encodings a webhook or a key file needs. Strings in and out are
 * raw bytes; nothing here knows about OFAuth.
 *
 *   hmac(alg, key, data)             -> raw MAC; alg is "sha256", "sha512", "sha1"
 *   sha256(data)                     -> raw 32-byte digest
 *   equal(a, b)                      -> boolean, constant time in the content
 *   random(n)                        -> n bytes from the OpenSSL CSPRNG (n <= 1 MiB)
 *   hex(s) / unhex(s)                -> lower-case hex / bytes (either case accepted)
 *   base64(s) / unbase64(s)          -> RFC 4648 section 4, padded
 *   base64url(s) / unbase64url(s)    -> RFC 4648 section 5, unpadded on output;
 *                                       input may be unpadded or correctly padded
 *   aead_seal(key, pt[, aad])        -> nonce .. ciphertext .. tag: AES-256-GCM,
 *                                       32-byte key, a fresh random 12-byte nonce
 *                                       in front, 16-byte tag at the end
 *   aead_open(key, sealed[, aad])    -> plaintext | nil, "authentication failed"
 *   aead_seal_with_nonce(key, nonce, pt[, aad]) -> same layout with the
 *                                       caller's nonce: known-answer tests ONLY
 *                                       (a reused nonce breaks GCM)
 *   webhook_svix / webhook_checklist -> the native webhook verifier
 *                                       (crypto_webhook.c)
 *   hkdf(alg, ikm, salt, info, len)  -> len bytes (RFC 5869); salt, info may be nil
 *   openssl_version                  -> string (used by `oflua version`)
 *
 * Errors: wrong argument types, unknown algorithms, wrong key or nonce sizes
 * and impossible lengths are programmer errors and raise. Decoding input that
 * is not valid (unhex, unbase64*) returns nil, message: decoders are strict
 * (no whitespace, no stray characters, exact padding, zero unused bits), so
 * each byte string has exactly one accepted encoding.
 */
#include "crypto_core.h"
#include "crypto_webhook.h"
#include "internal.h"

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>

#define RANDOM_MAX (1 << 20)

/* A scratch buffer from Lua's allocator: freed by the GC even if a later
 * call raises, so no path leaks it. */
static unsigned char *scratch(lua_State *L, size_t n) {
  return lua_newuserdatauv(L, n > 0 ? n : 1, 0);
}

static const char *check_alg(lua_State *L, int arg) {
  const char *alg = luaL_checkstring(L, arg);
  if (ofc_md_len(alg) == 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "unsupported digest '%s' (sha256, sha512 or sha1)",
                                          alg));
  return alg;
}

static int crypto_hmac(lua_State *L) {
  const char *alg = check_alg(L, 1);
  size_t keylen, len;
  const char *key = luaL_checklstring(L, 2, &keylen);
  const char *data = luaL_checklstring(L, 3, &len);
  unsigned char out[OFC_MAX_MD_LEN];
  size_t outlen = 0;
  if (ofc_hmac(alg, key, keylen, data, len, out, &outlen) != 0)
    return luaL_error(L, "hmac: OpenSSL failure");
  lua_pushlstring(L, (const char *)out, outlen);
  return 1;
}

static int crypto_sha256(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  unsigned char out[32];
  if (ofc_sha256(data, len, out) != 0) return luaL_error(L, "sha256: OpenSSL failure");
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

/* Time depends only on the lengths, never on where the strings differ. With
 * different lengths the first string is compared with itself so the work is
 * the same shape, and the answer is false. */
static int crypto_equal(lua_State *L) {
  size_t la, lb;
  const char *a = luaL_checklstring(L, 1, &la);
  const char *b = luaL_checklstring(L, 2, &lb);
  int same_len = la == lb;
  int diff = CRYPTO_memcmp(a, same_len ? b : a, la);
  lua_pushboolean(L, same_len & (diff == 0));
  return 1;
}

static int crypto_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= RANDOM_MAX, 1, "must be between 0 and 1048576");
  unsigned char *buf = scratch(L, (size_t)n);
  if (ofc_random(buf, (size_t)n) != 0) return luaL_error(L, "random: RAND_bytes failed");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  ofc_cleanse(buf, (size_t)n);
  return 1;
}

/* ---- hex ------------------------------------------------------------------ */

static int crypto_hex(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len <= (SIZE_MAX - 1) / 2, 1, "too long");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len * 2);
  ofc_hex_encode(s, len, out);
  luaL_pushresultsize(&b, len * 2);
  return 1;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int crypto_unhex(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  if (len % 2 != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "invalid hex: odd length");
    return 2;
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len / 2);
  for (size_t i = 0; i < len; i += 2) {
    int hi = hexval(s[i]), lo = hexval(s[i + 1]);
    if (hi < 0 || lo < 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "invalid hex: bad character at position %d", (int)(hi < 0 ? i + 1 : i + 2));
      return 2;
    }
    out[i / 2] = (char)(hi << 4 | lo);
  }
  luaL_pushresultsize(&b, len / 2);
  return 1;
}

/* ---- base64 (crypto_codec.c) -------------------------------------------- */

static int b64_encode(lua_State *L, int url) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len / 3 < SIZE_MAX / 4 - 1, 1, "too long");
  size_t outlen = ofc_base64_len(len, url);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, outlen);
  luaL_pushresultsize(&b, ofc_base64_encode(s, len, url, out));
  return 1;
}

static int b64_decode(lua_State *L, int url) {
  size_t len, outlen = 0, badpos = 0;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
  const char *err = ofc_base64_decode(s, len, url, out, &outlen, &badpos);
  if (err != NULL) {
    lua_pushnil(L);
    if (badpos > 0 && err[0] == 'b')
      lua_pushfstring(L, "invalid base64: %s at position %d", err, (int)badpos);
    else
      lua_pushfstring(L, "invalid base64: %s", err);
    return 2;
  }
  luaL_pushresultsize(&b, outlen);
  return 1;
}

static int crypto_base64(lua_State *L) { return b64_encode(L, 0); }
static int crypto_unbase64(lua_State *L) { return b64_decode(L, 0); }
static int crypto_base64url(lua_State *L) { return b64_encode(L, 1); }
static int crypto_unbase64url(lua_State *L) { return b64_decode(L, 1); }

/* ---- AEAD ------------------------------------------------------------------
 * Sealed layout: nonce (12) .. ciphertext .. tag (16). aead_seal draws the
 * nonce from the CSPRNG, so a caller cannot reuse one (a repeated nonce under
 * one GCM key reveals the XOR of two plaintexts and lets tags be forged).
 * With random 96-bit nonces a key must seal fewer than 2^32 messages (NIST
 * SP 800-38D). aead_seal_with_nonce takes the nonce from the caller: it exists
 * for known-answer tests only and must not be used for real data. */

static const unsigned char *check_key(lua_State *L, int arg) {
  size_t klen;
  const char *key = luaL_checklstring(L, arg, &klen);
  luaL_argcheck(L, klen == OFC_AEAD_KEY_LEN, arg, "key must be 32 bytes");
  return (const unsigned char *)key;
}

/* seal with key at 1, plaintext at pt_arg, aad at pt_arg + 1, nonce given */
static int seal(lua_State *L, const unsigned char *nonce, int pt_arg) {
  const unsigned char *key = check_key(L, 1);
  size_t ptlen, aadlen;
  const char *pt = luaL_checklstring(L, pt_arg, &ptlen);
  const char *aad = luaL_optlstring(L, pt_arg + 1, "", &aadlen);
  luaL_argcheck(L, ptlen <= (size_t)INT32_MAX - OFC_AEAD_TAG_LEN - OFC_AEAD_NONCE_LEN, pt_arg,
                "too long");
  size_t total = OFC_AEAD_NONCE_LEN + ptlen + OFC_AEAD_TAG_LEN;
  unsigned char *out = scratch(L, total);
  if (nonce == NULL) {
    if (ofc_random(out, OFC_AEAD_NONCE_LEN) != 0) return luaL_error(L, "aead_seal: RAND_bytes failed");
  } else {
    memcpy(out, nonce, OFC_AEAD_NONCE_LEN);
  }
  if (ofc_aead_seal(key, out, pt, ptlen, aad, aadlen, out + OFC_AEAD_NONCE_LEN) != 0)
    return luaL_error(L, "aead_seal: OpenSSL failure");
  lua_pushlstring(L, (const char *)out, total);
  return 1;
}

/* aead_seal(key, pt[, aad]) -> nonce .. ct .. tag, nonce random */
static int crypto_aead_seal(lua_State *L) { return seal(L, NULL, 2); }

/* aead_seal_with_nonce(key, nonce, pt[, aad]): known-answer tests only */
static int crypto_aead_seal_with_nonce(lua_State *L) {
  size_t nlen;
  const char *nonce = luaL_checklstring(L, 2, &nlen);
  luaL_argcheck(L, nlen == OFC_AEAD_NONCE_LEN, 2, "nonce must be 12 bytes");
  return seal(L, (const unsigned char *)nonce, 3);
}

/* aead_open(key, sealed[, aad]) -> plaintext | nil, "authentication failed" */
static int crypto_aead_open(lua_State *L) {
  const unsigned char *key = check_key(L, 1);
  size_t len, aadlen;
  const char *in = luaL_checklstring(L, 2, &len);
  const char *aad = luaL_optlstring(L, 3, "", &aadlen);
  if (len < OFC_AEAD_NONCE_LEN + OFC_AEAD_TAG_LEN || len > (size_t)INT32_MAX) {
    lua_pushnil(L);
    lua_pushliteral(L, "authentication failed");
    return 2;
  }
  const unsigned char *nonce = (const unsigned char *)in;
  size_t ctlen = len - OFC_AEAD_NONCE_LEN, ptlen = ctlen - OFC_AEAD_TAG_LEN;
  unsigned char *out = scratch(L, ptlen);
  if (ofc_aead_open(key, nonce, in + OFC_AEAD_NONCE_LEN, ctlen, aad, aadlen, out) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "authentication failed");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, ptlen);
  ofc_cleanse(out, ptlen);
  return 1;
}

/* ---- HKDF ------------------------------------------------------------------ */

static int crypto_hkdf(lua_State *L) {
  const char *alg = check_alg(L, 1);
  size_t ikmlen, saltlen, infolen;
  const char *ikm = luaL_checklstring(L, 2, &ikmlen);
  const char *salt = luaL_optlstring(L, 3, "", &saltlen);
  const char *info = luaL_optlstring(L, 4, "", &infolen);
  lua_Integer n = luaL_checkinteger(L, 5);
  lua_Integer max = 255 * (lua_Integer)ofc_md_len(alg);
  luaL_argcheck(L, n >= 1 && n <= max, 5,
                lua_pushfstring(L, "length must be between 1 and %d for %s", (int)max, alg));
  unsigned char *out = scratch(L, (size_t)n);
  if (ofc_hkdf(alg, ikm, ikmlen, salt, saltlen, info, infolen, out, (size_t)n) != 0)
    return luaL_error(L, "hkdf: OpenSSL failure");
  lua_pushlstring(L, (const char *)out, (size_t)n);
  ofc_cleanse(out, (size_t)n);
  return 1;
}

static const luaL_Reg crypto_funcs[] = {
    {"hmac", crypto_hmac},           {"sha256", crypto_sha256},
    {"equal", crypto_equal},         {"random", crypto_random},
    {"hex", crypto_hex},             {"unhex", crypto_unhex},
    {"base64", crypto_base64},       {"unbase64", crypto_unbase64},
    {"base64url", crypto_base64url}, {"unbase64url", crypto_unbase64url},
    {"aead_seal", crypto_aead_seal}, {"aead_open", crypto_aead_open},
    {"aead_seal_with_nonce", crypto_aead_seal_with_nonce},
    {"hkdf", crypto_hkdf},           {NULL, NULL}};

int luaopen_oflua_crypto(lua_State *L) {
  luaL_newlib(L, crypto_funcs);
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "openssl_version");
  lua_pushinteger(L, OFC_AEAD_KEY_LEN);
  lua_setfield(L, -2, "aead_key_len");
  lua_pushinteger(L, OFC_AEAD_NONCE_LEN);
  lua_setfield(L, -2, "aead_nonce_len");
  lua_pushinteger(L, OFC_AEAD_TAG_LEN);
  lua_setfield(L, -2, "aead_tag_len");
  ofc_webhook_register(L);
  return 1;
}
