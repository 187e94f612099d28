/*
 * util.c: see util.h. Small, dependency-free helpers shared by the C files
 * of oflua, so that there is one copy of each (and one place to fix).
 */
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/types.h>
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

/* tchar (RFC 9110 5.6.2): visible ASCII but the separators
 * "(),/:;<=>?@[\]{} and DQUOTE; one bit a byte, looked up per byte */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,
    ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,
    ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int oflua__is_token(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (!tchar[(unsigned char)s[i]]) return 0;
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

/* ---- SipHash-2-4 (Aumasson & Bernstein), for hash tables whose keys an
 * attacker may choose: with a secret key, collisions cannot be planned. */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                             \
  do {                                                                                       \
    v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);                            \
    v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                                                 \
    v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                                                 \
    v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);                            \
  } while (0)

static uint64_t load64le(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

uint64_t oflua__siphash(const unsigned char key[16], const void *data, size_t len) {
  const unsigned char *in = data;
  uint64_t k0 = load64le(key), k1 = load64le(key + 8);
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
  size_t end = len - len % 8;
  for (size_t i = 0; i < end; i += 8) {
    uint64_t m = load64le(in + i);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t i = 0; i < len % 8; i++) b |= (uint64_t)in[end + i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

int oflua__random_bytes(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int oflua__thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
  sigset_t block, old;
  sigfillset(&block);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  pthread_t own;
  pthread_attr_t at;
  int rc = pthread_attr_init(&at);
  if (rc == 0 && t == NULL) rc = pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  if (rc == 0) rc = pthread_create(t != NULL ? t : &own, &at, fn, arg);
  pthread_attr_destroy(&at);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

void oflua__thread_name(const char *name) {
  (void)prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
