/*
 * server_log.c: the server's log, one JSON line per event on stderr, written
 * with a single write(2) so lines from several threads never interleave.
 * Request headers, bodies, paths and queries are never logged: they carry
 * secrets.
 */
#include "server_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Appends s as a JSON string body (no quotes) to buf at *pos, truncating. */
static void json_escape(char *buf, size_t cap, size_t *pos, const char *s) {
  static const char hex[] = "0123456789abcdef";
  for (; *s != '\0' && *pos + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = (char)c;
    } else if (c == '\n') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = 'n';
    } else if (c == '\t') {
      buf[(*pos)++] = '\\';
      buf[(*pos)++] = 't';
    } else if (c < 0x20 || c == 0x7f) {
      memcpy(buf + *pos, "\\u00", 4);
      buf[*pos + 4] = hex[c >> 4];
      buf[*pos + 5] = hex[c & 15];
      *pos += 6;
    } else {
      buf[(*pos)++] = (char)c;
    }
  }
}

/* One JSON line on stderr, written with a single write(2) so lines from
 * several threads do not interleave. Fields are (name, value) pairs. */
void srv_log(const char *level, const char *event, int worker_id, const char *k1,
                     const char *v1, const char *k2, const char *v2) {
  char buf[8192];
  size_t pos = 0;
  int n = snprintf(buf, sizeof buf, "{\"ts\":%.3f,\"level\":\"%s\",\"event\":\"%s\"", oflua__wall_now(),
                   level, event);
  if (n < 0) return;
  pos = (size_t)n;
  if (worker_id > 0 && pos < sizeof buf) {
    n = snprintf(buf + pos, sizeof buf - pos, ",\"worker\":%d", worker_id);
    if (n > 0) pos += (size_t)n;
  }
  const char *keys[2] = {k1, k2}, *vals[2] = {v1, v2};
  for (int i = 0; i < 2; i++) {
    if (keys[i] == NULL || vals[i] == NULL || pos + 16 >= sizeof buf) continue;
    buf[pos++] = ',';
    buf[pos++] = '"';
    json_escape(buf, sizeof buf - 8, &pos, keys[i]);
    buf[pos++] = '"';
    buf[pos++] = ':';
    buf[pos++] = '"';
    json_escape(buf, sizeof buf - 8, &pos, vals[i]);
    buf[pos++] = '"';
  }
  if (pos + 3 > sizeof buf) pos = sizeof buf - 3;
  buf[pos++] = '}';
  buf[pos++] = '\n';
  size_t off = 0;
  while (off < pos) {
    ssize_t w = write(2, buf + off, pos - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
}
