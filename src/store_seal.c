/*
 * store_seal.c: keys and sealing for oflua.store. Connection ids are
 * credentials, so nothing a caller stores reaches the database in clear: not
 * the values, not the keys, not event ids. Every backend stores only what
 * this file produces.
 *
 * Keys. The master key (32 random bytes, base64 in OFLUA_STORE_KEY or a 0600
 * key file) is never used directly: HKDF-SHA256 with the store's random salt
 * and an info string naming the key id (kid) derives a data key (AES-256-GCM)
 * and an index key (HMAC-SHA256). The kid is a counter in oflua_meta, bumped by
 * rekey, and stored on every row so a row sealed under another key is named
 * as such instead of failing as "tampered".
 *
 * Boxes. A value is sealed as nonce(12) || ciphertext || tag(16) with a
 * random nonce per write, its AAD binding (domain, namespace, key) with
 * length prefixes, so a ciphertext copied to another row or namespace fails
 * to open. Rows are found by a blind index, HMAC(index key, domain ||
 * namespace || key).
 */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void store_bytes_free(store_bytes *b) {
  if (b->p != NULL) ofc_cleanse(b->p, b->n); /* may hold plaintext opened in place */
  free(b->p);
  b->p = NULL;
  b->n = 0;
}

void store_event_clear(store_event *e) {
  store_bytes_free(&e->ebox);
  store_bytes_free(&e->pbox);
  store_bytes_free(&e->rbox);
}

void store_kv_row_clear(store_kv_row *r) {
  store_bytes_free(&r->kbox);
  store_bytes_free(&r->vbox);
}

static void aad_part(store_aad *a, const void *p, size_t n) {
  unsigned char *d = a->b + a->len;
  d[0] = (unsigned char)(n >> 24);
  d[1] = (unsigned char)(n >> 16);
  d[2] = (unsigned char)(n >> 8);
  d[3] = (unsigned char)n;
  if (n > 0) memcpy(d + 4, p, n);
  a->len += 4 + n;
}

const store_aad *store_aad_make(store_aad *a, const char *ns, size_t nslen, const char *domain,
                                const void *item, size_t n) {
  a->len = 0;
  aad_part(a, domain, strlen(domain));
  aad_part(a, ns, nslen);
  if (item != NULL) aad_part(a, item, n);
  return a;
}

const store_aad *store_check_aad(store_aad *a, int64_t kid, const unsigned char *salt) {
  char k[32];
  int n = snprintf(k, sizeof k, "%lld", (long long)kid);
  a->len = 0;
  aad_part(a, D_CHECK, strlen(D_CHECK));
  aad_part(a, k, (size_t)n);
  aad_part(a, salt, SALT_LEN);
  return a;
}

void store_keys_free(store_keys *k) {
  ofc_aead_key_free(k->aead);
  ofc_hmac_key_free(k->index);
  k->aead = NULL;
  k->index = NULL;
}

int store_derive(const unsigned char *master, const unsigned char *salt, int64_t kid,
                 store_keys *k) {
  unsigned char dkey[KEY_LEN], ikey[KEY_LEN];
  char info[96];
  int n = snprintf(info, sizeof info, "oflua.store v1 data key, key id %lld", (long long)kid);
  int rc = ofc_hkdf("sha256", master, KEY_LEN, salt, SALT_LEN, info, (size_t)n, dkey, KEY_LEN);
  n = snprintf(info, sizeof info, "oflua.store v1 index key, key id %lld", (long long)kid);
  if (rc == 0)
    rc = ofc_hkdf("sha256", master, KEY_LEN, salt, SALT_LEN, info, (size_t)n, ikey, KEY_LEN);
  if (rc == 0) {
    k->aead = ofc_aead_key_new(dkey);
    k->index = ofc_hmac_key_new("sha256", ikey, KEY_LEN);
    if (k->aead == NULL || k->index == NULL) {
      store_keys_free(k);
      rc = -1;
    }
  }
  ofc_cleanse(dkey, sizeof dkey);
  ofc_cleanse(ikey, sizeof ikey);
  return rc;
}

int store_blind(ofc_hmac_key *k, const store_aad *a, unsigned char out[IDX_LEN]) {
  size_t n = 0;
  return ofc_hmac_key_mac(k, a->b, a->len, out, &n) == 0 && n == IDX_LEN ? 0 : -1;
}

/* Bumped in the child after fork(): a handle carried into a child must not
 * hand out the nonces its parent will also use. */
static unsigned fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) {
  fork_gen++;
}
static void fork_register(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}
void store_fork_watch(void) {
  pthread_once(&fork_once, fork_register);
}

static int next_nonce(store_handle *s, unsigned char *out) {
  if (s->pool_pos + NONCE_LEN > sizeof s->pool || s->pool_gen != fork_gen) {
    if (ofc_random(s->pool, sizeof s->pool) != 0) return -1;
    s->pool_pos = 0;
    s->pool_gen = fork_gen;
  }
  memcpy(out, s->pool + s->pool_pos, NONCE_LEN);
  memset(s->pool + s->pool_pos, 0, NONCE_LEN); /* each nonce is handed out once */
  s->pool_pos += NONCE_LEN;
  return 0;
}

int store_seal(store_handle *s, ofc_aead_key *k, const void *pt, size_t n, const store_aad *a,
               unsigned char *out) {
  if (next_nonce(s, out) != 0) return -1;
  return ofc_aead_key_seal(k, out, pt, n, a->b, a->len, out + NONCE_LEN);
}

int store_unseal(ofc_aead_key *k, const void *box, size_t boxlen, const store_aad *a,
                 unsigned char *out) {
  if (box == NULL || boxlen < BOX_OVERHEAD) return -1;
  const unsigned char *b = box;
  return ofc_aead_key_open(k, b, b + NONCE_LEN, boxlen - NONCE_LEN, a->b, a->len, out);
}

/* ---- the master key's text form ------------------------------------------- */

/* One base64 for the codebase: crypto_codec.c's (RFC 4648, padded). */
void store_b64_encode(const unsigned char *in, size_t n, char *out) {
  out[ofc_base64_encode(in, n, 0, out)] = '\0';
}

/* Strict decoding of a 32-byte key from padded base64, surrounding white
 * space allowed (key files end with a newline): exactly 44 characters, one
 * '=', zero trailing bits (ofc_base64_decode is strict). 0 or -1; never says
 * why in terms of the text (the decoder's message and position are
 * dropped), so the key cannot leak into a message. */
int store_decode_key(const char *text, size_t n, unsigned char key[KEY_LEN]) {
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' ' ||
                   text[n - 1] == '\t'))
    n--;
  while (n > 0 && (text[0] == '\n' || text[0] == '\r' || text[0] == ' ' || text[0] == '\t')) {
    text++;
    n--;
  }
  if (n != 44 || text[43] != '=' || text[42] == '=') return -1;
  unsigned char out[44 / 4 * 3 + 3];
  size_t got = 0;
  int ok = ofc_base64_decode(text, n, 0, out, &got, NULL) == NULL && got == KEY_LEN;
  if (ok) memcpy(key, out, KEY_LEN);
  ofc_cleanse(out, sizeof out);
  return ok ? 0 : -1;
}

int store_read_key_file(const char *path, unsigned char key[KEY_LEN], char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open key file %s: %s", path, STORE_STRERROR(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    snprintf(err, errlen, "cannot stat key file %s: %s", path, STORE_STRERROR(e));
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    snprintf(err, errlen, "key file %s is not a regular file", path);
    return -1;
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    snprintf(err, errlen,
             "key file %s is accessible by group or others (mode %04o); run: chmod 600 %s", path,
             (unsigned)(st.st_mode & 07777), path);
    return -1;
  }
  char buf[256];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, buf + got, sizeof buf - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      ofc_cleanse(buf, sizeof buf);
      snprintf(err, errlen, "cannot read key file %s: %s", path, STORE_STRERROR(e));
      return -1;
    }
    if (r == 0 || (got += (size_t)r) == sizeof buf) break;
  }
  close(fd);
  int rc = got < sizeof buf ? store_decode_key(buf, got, key) : -1;
  ofc_cleanse(buf, sizeof buf);
  if (rc != 0) {
    snprintf(err, errlen, "key file %s: " KEY_FORMAT_MSG, path);
    return -1;
  }
  return 0;
}

int store_write_key_file(const char *path, const unsigned char key[KEY_LEN], char *err,
                         size_t errlen) {
  char line[48];
  store_b64_encode(key, KEY_LEN, line);
  size_t len = strlen(line);
  line[len++] = '\n';
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    ofc_cleanse(line, sizeof line);
    if (e == EEXIST) snprintf(err, errlen, "%s already exists; not overwriting it", path);
    else snprintf(err, errlen, "cannot create %s: %s", path, STORE_STRERROR(e));
    return -1;
  }
  size_t off = 0;
  int e = 0;
  while (off < len) {
    ssize_t w = write(fd, line + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      e = errno;
      break;
    }
    off += (size_t)w;
  }
  ofc_cleanse(line, sizeof line);
  if (e == 0 && fsync(fd) != 0) e = errno;
  if (close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    unlink(path);
    snprintf(err, errlen, "cannot write %s: %s", path, STORE_STRERROR(e));
    return -1;
  }
  return 0;
}
