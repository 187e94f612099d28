/*
 * util.h: the one copy of the small helpers every C file of liboflua needs
 * (clocks, sleeping, hex digits, HTTP token/value validators, byte
 * duplication, SipHash, random bytes, thread-safe strerror, starting a
 * thread with signals blocked). Plain C:
 * nothing here touches Lua, so any file (and any thread) may use it.
 * Compiled into the binary, liboflua and each side object that needs it.
 * The hex and base64 codecs are crypto_codec.c's (one copy, shared by
 * oflua.crypto, the webhook verifier and the store).
 */
#ifndef OFLUA_UTIL_H
#define OFLUA_UTIL_H

#include <stddef.h>

/* Seconds on the monotonic clock (for deadlines and durations). */
double oflua__mono_now(void);
/* Seconds since the epoch (for timestamps). */
double oflua__wall_now(void);
/* Sleeps s seconds (s >= 0), resuming after signals. */
void oflua__sleep(double s);
/* Absolute CLOCK_MONOTONIC time s seconds from now, for timed waits on a
 * condition variable made with pthread_condattr_setclock(CLOCK_MONOTONIC). */
struct timespec;
void oflua__mono_deadline(struct timespec *ts, double s);

/* Value of a hex digit (either case), or -1. */
int oflua__hexval(unsigned char c);
/* 1 if s[0..n) is an HTTP token (RFC 9110: header names, methods). */
int oflua__is_token(const char *s, size_t n);
/* 1 if s[0..n) has no CR, LF or NUL (safe as an HTTP header value). */
int oflua__is_header_value(const char *s, size_t n);

/* malloc'd copy of s[0..n) plus a NUL, or NULL when out of memory. */
char *oflua__memdup(const char *s, size_t n);

/* SipHash-2-4 of data under a 16-byte key (hash tables with untrusted keys). */
#include <stdint.h>
uint64_t oflua__siphash(const unsigned char key[16], const void *data, size_t len);

/* len bytes from the kernel's random source; 0 or -1. */
int oflua__random_bytes(void *buf, size_t len);

/* strerror(err) into buf (thread-safe); returns buf. */
const char *oflua__strerror(int err, char *buf, size_t len);

/* pthread_create(t, fn, arg) with every signal blocked in the new thread
 * (the process's handlers run on the threads that expect them); t NULL: the
 * thread is detached. 0 or an errno value. */
#include <pthread.h>
int oflua__thread_start(pthread_t *t, void *(*fn)(void *), void *arg);
/* Names the calling thread (at most 15 characters: what top -H and perf
 * show); best effort. */
void oflua__thread_name(const char *name);

#endif
