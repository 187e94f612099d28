/*
 * util.c: see util.h. Small, dependency-free helpers shared by the C files
 * of oflua, so that there is one copy of each (and one place to fix).
 */
#include "util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double oflua__mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double oflua__wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void oflua__sleep(double s) {
  if (!(s > 0)) return;
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void oflua__mono_deadline(struct timespec *ts, double s) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  if (!(s > 0)) return;
  if (s > 1e9) s = 1e9;
  time_t whole = (time_t)s;
  ts->tv_sec += whole;
  ts->tv_nsec += (long)((s - (double)whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec += 1;
    ts->tv_nsec -= 1000000000L;
  }
}

int oflua__hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void oflua__hex_encode(char *out, const unsigned char *in, size_t n) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
}

const char oflua__b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const char oflua__b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t oflua__b64_len(size_t n, int pad) {
  size_t rest = n % 3;
  return n / 3 * 4 + (rest == 0 ? 0 : pad ? 4 : rest + 1);
}

void oflua__b64_encode(char *o, const unsigned char *s, size_t len, const char *a, int pad) {
  size_t full = len / 3, rest = len % 3;
  for (size_t i = 0; i < full; i++, s += 3) {
    uint32_t v = (uint32_t)s[0] << 16 | (uint32_t)s[1] << 8 | s[2];
    *o++ = a[v >> 18 & 63];
    *o++ = a[v >> 12 & 63];
    *o++ = a[v >> 6 & 63];
    *o++ = a[v & 63];
  }
  if (rest > 0) {
    uint32_t v = (uint32_t)s[0] << 16 | (rest == 2 ? (uint32_t)s[1] << 8 : 0);
    *o++ = a[v >> 18 & 63];
    *o++ = a[v >> 12 & 63];
    if (rest == 2) *o++ = a[v >> 6 & 63];
    else if (pad) *o++ = '=';
    if (pad) *o++ = '=';
  }
}

static int b64_index(const char *alphabet, unsigned char c) {
  if (c == 0) return -1;
  const char *p = memchr(alphabet, c, 64);
  return p != NULL ? (int)(p - alphabet) : -1;
}

long long oflua__b64_decode(unsigned char *out, const char *in, size_t n, const char *a, int pad,
                            const char **why) {
  size_t npad = 0;
  if (pad) {
    if (n % 4 != 0) {
      *why = "length is not a multiple of 4";
      return -1;
    }
    while (npad < 2 && npad < n && in[n - 1 - npad] == '=') npad++;
  } else if (n % 4 == 1) {
    *why = "bad length";
    return -1;
  }
  size_t data = n - npad;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < data; i++) {
    int v = b64_index(a, (unsigned char)in[i]);
    if (v < 0) {
      *why = "bad character";
      return -1;
    }
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits & 0xff);
    }
  }
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) {
    *why = "non-canonical trailing bits";
    return -1;
  }
  return (long long)o;
}

int oflua__is_token(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 32 || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c) != NULL) return 0;
  }
  return 1;
}

int oflua__is_header_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r' || c == '\n' || c == '\0') return 0;
  }
  return 1;
}

char *oflua__memdup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p != NULL) {
    if (n > 0) memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

const char *oflua__strerror(int err, char *buf, size_t len) {
  if (len == 0) return buf;
  buf[0] = '\0';
  /* _DEFAULT_SOURCE gives the GNU strerror_r, which may return a static string */
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  const char *m = strerror_r(err, buf, len);
  if (m != buf) {
    strncpy(buf, m, len - 1);
    buf[len - 1] = '\0';
  }
#else
  if (strerror_r(err, buf, len) != 0) {
    strncpy(buf, "unknown error", len - 1);
    buf[len - 1] = '\0';
  }
#endif
  return buf;
}
