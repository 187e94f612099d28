/* Bench peer: the ceiling for a webhook receiver on this stack. A bare
 * libmicrohttpd server (the thread settings oflua.server uses, as in
 * mhd_ok.c) that verifies Svix-signed deliveries with OpenSSL and nothing
 * else: svix-id / svix-timestamp / svix-signature, |now - t| <= 300 s,
 * HMAC-SHA256 over "<id>.<t>.<body>" with the base64 key after "whsec_",
 * constant-time comparison with every "v1,<base64>" entry, then the body
 * parsed with cJSON (Debian libcjson-dev): it must be an object with a string
 * eventType (or type), as oflua and the Node peer check. No storage.
 * 200 when valid, 401 when not, 400 without the headers or with bad JSON.
 *   usage: BENCH_SECRET=whsec_... mhd_webhook WORKERS
 * Prints the port it listens on (127.0.0.1, ephemeral), runs until killed. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (1024 * 1024)

static unsigned char key[256];
static int key_len;
static EVP_MAC *hmac; /* fetched once */
static struct MHD_Response *r200, *r400, *r401, *r413, *r400json;

typedef struct {
  char *buf;
  size_t len, cap;
  int too_large;
} Body;

/* base64 -> bytes (EVP_DecodeBlock counts '=' padding as zero bytes). */
static int unbase64(const char *in, size_t inlen, unsigned char *out, size_t outcap) {
  if (inlen == 0 || inlen % 4 != 0 || inlen / 4 * 3 > outcap) return -1;
  int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)inlen);
  if (n < 0) return -1;
  if (in[inlen - 1] == '=') n--;
  if (in[inlen - 2] == '=') n--;
  return n;
}

static int verify(struct MHD_Connection *c, const Body *b) {
  const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "svix-id");
  const char *ts = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "svix-timestamp");
  const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "svix-signature");
  if (id == NULL || ts == NULL || sig == NULL) return 400;
  size_t tslen = strlen(ts);
  if (tslen == 0 || tslen > 12 || strspn(ts, "0123456789") != tslen) return 400;
  long long t = atoll(ts), now = (long long)time(NULL);
  if (t - now > 300 || now - t > 300) return 401;
  size_t idlen = strlen(id);
  if (idlen > 256) return 400;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  /* One HMAC context per thread, keyed once; re-initialised per request.
   * The MAC covers id "." ts "." body without copying the body. */
  static __thread EVP_MAC_CTX *ctx;
  if (ctx == NULL) {
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    ctx = EVP_MAC_CTX_new(hmac);
    if (ctx == NULL || !EVP_MAC_init(ctx, key, (size_t)key_len, params)) return 500;
  } else if (!EVP_MAC_init(ctx, NULL, 0, NULL)) {
    return 500;
  }
  size_t outl = 0;
  int ok = EVP_MAC_update(ctx, (const unsigned char *)id, idlen) &&
           EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
           EVP_MAC_update(ctx, (const unsigned char *)ts, tslen) &&
           EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
           EVP_MAC_update(ctx, (const unsigned char *)b->buf, b->len) &&
           EVP_MAC_final(ctx, mac, &outl, sizeof mac);
  if (!ok) return 500;
  maclen = (unsigned int)outl;
  /* space-separated "v1,<base64>" entries */
  const char *p = sig;
  while (*p) {
    while (*p == ' ') p++;
    const char *e = strchr(p, ' ');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len > 3 && strncmp(p, "v1,", 3) == 0) {
      unsigned char got[96];
      int n = unbase64(p + 3, len - 3, got, sizeof got);
      if (n == (int)maclen && CRYPTO_memcmp(got, mac, maclen) == 0) return 200;
    }
    p += len;
  }
  return 401;
}

/* The verified body must be a JSON object with a string eventType or type. */
static int parse(const Body *b) {
  cJSON *v = cJSON_ParseWithLength(b->buf ? b->buf : "", b->len);
  if (v == NULL) return 400;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "eventType");
  if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(v, "type");
  int status = cJSON_IsObject(v) && cJSON_IsString(t) && t->valuestring[0] != '\0' ? 200 : 400;
  cJSON_Delete(v);
  return status;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls) {
  (void)cls, (void)url, (void)version;
  Body *b = *con_cls;
  if (b == NULL) { /* first call: headers only */
    b = calloc(1, sizeof *b);
    if (b == NULL) return MHD_NO;
    *con_cls = b;
    return MHD_YES;
  }
  if (*size > 0) {
    if (b->len + *size > MAX_BODY) {
      b->too_large = 1;
    } else {
      if (b->len + *size > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + *size) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (nb == NULL) return MHD_NO;
        b->buf = nb;
        b->cap = cap;
      }
      memcpy(b->buf + b->len, data, *size);
      b->len += *size;
    }
    *size = 0;
    return MHD_YES;
  }
  if (strcmp(method, "POST") != 0) return MHD_queue_response(c, 405, r400);
  if (b->too_large) return MHD_queue_response(c, 413, r413);
  int status = verify(c, b);
  if (status == 200 && parse(b) != 200)
    return MHD_queue_response(c, 400, r400json);
  return MHD_queue_response(c, (unsigned)status, status == 200 ? r200 : status == 401 ? r401 : r400);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)c, (void)toe;
  Body *b = *con_cls;
  if (b != NULL) {
    free(b->buf);
    free(b);
    *con_cls = NULL;
  }
}

static struct MHD_Response *text(const char *s) {
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), (void *)s, MHD_RESPMEM_PERSISTENT);
  MHD_add_response_header(r, "Content-Type", "application/json");
  return r;
}

int main(int argc, char **argv) {
  unsigned workers = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
  const char *secret = getenv("BENCH_SECRET");
  if (secret == NULL || strncmp(secret, "whsec_", 6) != 0) {
    fprintf(stderr, "mhd_webhook: BENCH_SECRET=whsec_<base64> is required\n");
    return 1;
  }
  key_len = unbase64(secret + 6, strlen(secret + 6), key, sizeof key);
  if (key_len <= 0) {
    fprintf(stderr, "mhd_webhook: the secret is not base64\n");
    return 1;
  }
  hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (hmac == NULL) return 1;
  r200 = text("{\"ok\":true}");
  r400 = text("{\"error\":\"bad_request\"}");
  r401 = text("{\"error\":\"bad_signature\"}");
  r413 = text("{\"error\":\"too_large\"}");
  r400json = text("{\"error\":\"invalid_json\"}");
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC, 0, NULL, NULL, on_request, NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(16384 + 16384), MHD_OPTION_CONNECTION_TIMEOUT,
      10u, MHD_OPTION_CONNECTION_LIMIT, 1024u,
      workers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, workers, MHD_OPTION_END);
  if (d == NULL) {
    fprintf(stderr, "mhd_webhook: cannot start\n");
    return 1;
  }
  printf("%u\n", (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
  fflush(stdout);
  for (;;) pause();
}
