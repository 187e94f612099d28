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
 *   aead_seal(key, nonce, pt[, aad]) -> ciphertext .. 16-byte tag (AES-256-GCM,
 *                                       32-byte key, 12-byte nonce)
 *   aead_open(key, nonce, ct[, aad]) -> plaintext | nil, "authentication failed"
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
  static const char digits[] = "0123456789abcdef";
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len <= (SIZE_MAX - 1) / 2, 1, "too long");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len * 2);
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[s[i] >> 4];
    out[2 * i + 1] = digits[s[i] & 15];
  }
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

/* ---- base64 ----------------------------------------------------------------
 * By hand rather than EVP_EncodeBlock/EVP_DecodeBlock: DecodeBlock skips
 * leading/trailing whitespace, does not report how much padding it saw and
 * accepts non-zero unused bits, all of which the strict decoder must reject. */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_encode(lua_State *L, const char *alphabet, int pad) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len / 3 < SIZE_MAX / 4 - 1, 1, "too long");
  size_t full = len / 3, rest = len % 3;
  size_t outlen = full * 4 + (rest == 0 ? 0 : pad ? 4 : rest + 1);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, outlen);
  char *o = out;
  for (size_t i = 0; i < full; i++, s += 3) {
    uint32_t v = (uint32_t)s[0] << 16 | (uint32_t)s[1] << 8 | s[2];
    *o++ = alphabet[v >> 18];
    *o++ = alphabet[(v >> 12) & 63];
    *o++ = alphabet[(v >> 6) & 63];
    *o++ = alphabet[v & 63];
  }
  if (rest > 0) {
    uint32_t v = (uint32_t)s[0] << 16 | (rest == 2 ? (uint32_t)s[1] << 8 : 0);
    *o++ = alphabet[v >> 18];
    *o++ = alphabet[(v >> 12) & 63];
    if (rest == 2) *o++ = alphabet[(v >> 6) & 63];
    if (pad) {
      if (rest == 1) *o++ = '=';
      *o++ = '=';
    }
  }
  luaL_pushresultsize(&b, (size_t)(o - out));
  return 1;
}

static int b64_fail(lua_State *L, const char *why) {
  lua_pushnil(L);
  lua_pushfstring(L, "invalid base64: %s", why);
  return 2;
}

/* pad: 1 = padding required (standard), 0 = optional but exact if present (url). */
static int b64_decode(lua_State *L, const char *alphabet, int pad_required) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  signed char val[256];
  memset(val, -1, sizeof val);
  for (int i = 0; i < 64; i++) val[(unsigned char)alphabet[i]] = (signed char)i;

  /* Split off the padding, then the data part must be all alphabet. */
  size_t npad = 0;
  while (npad < len && npad < 3 && s[len - 1 - npad] == '=') npad++;
  size_t dlen = len - npad;
  if (npad > 2) return b64_fail(L, "too much padding");
  if (npad > 0 || pad_required) {
    if (len % 4 != 0) return b64_fail(L, pad_required ? "length is not a multiple of 4"
                                                      : "wrong padding");
    if (npad > 0 && dlen % 4 != 4 - npad) return b64_fail(L, "wrong padding");
  }
  if (dlen % 4 == 1) return b64_fail(L, "truncated input");
  luaL_Buffer b;
  size_t outlen = dlen / 4 * 3 + (dlen % 4 == 0 ? 0 : dlen % 4 - 1);
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, outlen);
  unsigned char *o = out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < dlen; i++) {
    int v = val[s[i]];
    if (v < 0) {
      return b64_fail(L, s[i] == '=' ? "padding inside the data"
                                     : lua_pushfstring(L, "bad character at position %d",
                                                       (int)(i + 1)));
    }
    acc = (acc << 6 | (uint32_t)v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      *o++ = (unsigned char)(acc >> bits);
    }
  }
  /* Leftover bits (2 or 4) must be zero: otherwise two encodings would
   * decode to the same bytes. */
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return b64_fail(L, "non-zero trailing bits");
  luaL_pushresultsize(&b, (size_t)(o - out));
  return 1;
}

static int crypto_base64(lua_State *L) { return b64_encode(L, b64_std, 1); }
static int crypto_unbase64(lua_State *L) { return b64_decode(L, b64_std, 1); }
static int crypto_base64url(lua_State *L) { return b64_encode(L, b64_url, 0); }
static int crypto_unbase64url(lua_State *L) { return b64_decode(L, b64_url, 0); }

/* ---- AEAD ------------------------------------------------------------------ */

static const unsigned char *check_key_nonce(lua_State *L, const unsigned char **nonce) {
  size_t klen, nlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *n = luaL_checklstring(L, 2, &nlen);
  luaL_argcheck(L, klen == OFC_AEAD_KEY_LEN, 1, "key must be 32 bytes");
  luaL_argcheck(L, nlen == OFC_AEAD_NONCE_LEN, 2, "nonce must be 12 bytes");
  *nonce = (const unsigned char *)n;
  return (const unsigned char *)key;
}

static int crypto_aead_seal(lua_State *L) {
  const unsigned char *nonce;
  const unsigned char *key = check_key_nonce(L, &nonce);
  size_t ptlen, aadlen;
  const char *pt = luaL_checklstring(L, 3, &ptlen);
  const char *aad = luaL_optlstring(L, 4, "", &aadlen);
  luaL_argcheck(L, ptlen <= (size_t)INT32_MAX - OFC_AEAD_TAG_LEN, 3, "too long");
  unsigned char *out = scratch(L, ptlen + OFC_AEAD_TAG_LEN);
  if (ofc_aead_seal(key, nonce, pt, ptlen, aad, aadlen, out) != 0)
    return luaL_error(L, "aead_seal: OpenSSL failure");
  lua_pushlstring(L, (const char *)out, ptlen + OFC_AEAD_TAG_LEN);
  return 1;
}

static int crypto_aead_open(lua_State *L) {
  const unsigned char *nonce;
  const unsigned char *key = check_key_nonce(L, &nonce);
  size_t ctlen, aadlen;
  const char *ct = luaL_checklstring(L, 3, &ctlen);
  const char *aad = luaL_optlstring(L, 4, "", &aadlen);
  if (ctlen < OFC_AEAD_TAG_LEN || ctlen > (size_t)INT32_MAX) {
    lua_pushnil(L);
    lua_pushliteral(L, "authentication failed");
    return 2;
  }
  size_t ptlen = ctlen - OFC_AEAD_TAG_LEN;
  unsigned char *out = scratch(L, ptlen);
  if (ofc_aead_open(key, nonce, ct, ctlen, aad, aadlen, out) != 0) {
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
  return 1;
}
