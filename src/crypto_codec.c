/*
 * crypto_codec.c: hex and base64 (RFC 4648) on C buffers, shared by
 * oflua.crypto's Lua functions and the native webhook verifier
 * (crypto_webhook.c). Decoders are strict: no whitespace, no stray
 * characters, exact padding, zero unused bits, so each byte string has
 * exactly one accepted encoding.
 * By hand rather than EVP_EncodeBlock/EVP_DecodeBlock: DecodeBlock skips
 * leading/trailing whitespace, does not report how much padding it saw and
 * accepts non-zero unused bits, all of which the strict decoder must reject.
 */
#include "crypto_core.h"

#include <pthread.h>
#include <stdint.h>

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Decoding tables: -1 for a byte outside the alphabet; filled once. */
static signed char dec_std[256], dec_url[256];
static pthread_once_t dec_once = PTHREAD_ONCE_INIT;

static void dec_fill(void) {
  for (int i = 0; i < 256; i++) dec_std[i] = dec_url[i] = -1;
  for (int i = 0; i < 64; i++) {
    dec_std[(unsigned char)b64_std[i]] = (signed char)i;
    dec_url[(unsigned char)b64_url[i]] = (signed char)i;
  }
}

void ofc_hex_encode(const void *in, size_t len, char *out) {
  static const char digits[] = "0123456789abcdef";
  const unsigned char *s = in;
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[s[i] >> 4];
    out[2 * i + 1] = digits[s[i] & 15];
  }
}

size_t ofc_base64_len(size_t len, int url) {
  size_t rest = len % 3;
  return len / 3 * 4 + (rest == 0 ? 0 : url ? rest + 1 : 4);
}

size_t ofc_base64_encode(const void *in, size_t len, int url, char *out) {
  const char *alphabet = url ? b64_url : b64_std;
  const unsigned char *s = in;
  size_t full = len / 3, rest = len % 3;
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
    if (!url) {
      if (rest == 1) *o++ = '=';
      *o++ = '=';
    }
  }
  return (size_t)(o - out);
}

const char *ofc_base64_decode(const char *in, size_t len, int url, unsigned char *out,
                              size_t *outlen, size_t *badpos) {
  pthread_once(&dec_once, dec_fill);
  const signed char *val = url ? dec_url : dec_std;
  const unsigned char *s = (const unsigned char *)in;
  int pad_required = !url;
  *outlen = 0;
  /* Split off the padding, then the data part must be all alphabet. */
  size_t npad = 0;
  while (npad < len && npad < 3 && s[len - 1 - npad] == '=') npad++;
  size_t dlen = len - npad;
  if (npad > 2) return "too much padding";
  if (npad > 0 || pad_required) {
    if (len % 4 != 0) return pad_required ? "length is not a multiple of 4" : "wrong padding";
    if (npad > 0 && dlen % 4 != 4 - npad) return "wrong padding";
  }
  if (dlen % 4 == 1) return "truncated input";
  unsigned char *o = out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < dlen; i++) {
    int v = val[s[i]];
    if (v < 0) {
      if (badpos != NULL) *badpos = i + 1;
      return s[i] == '=' ? "padding inside the data" : "bad character";
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
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return "non-zero trailing bits";
  *outlen = (size_t)(o - out);
  return NULL;
}
