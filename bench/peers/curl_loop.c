/* curl_loop: the peer for bench/http.sh. N sequential GETs on one libcurl easy
 * handle (so one kept-alive connection), with the options oflua.http sets by
 * default, collecting each body and counting header lines, and printing
 * requests per second.
 *   curl_loop URL N   (after 100 warm-up requests) */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  char *p;
  size_t len, cap;
} buf_t;

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  buf_t *b = ud;
  size_t len = size * n;
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->len + len) cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) return 0;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, len);
  b->len += len;
  return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  (void)p;
  (*(long *)ud)++;
  return size * n;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int get(CURL *e, buf_t *b) {
  b->len = 0;
  long status = 0;
  if (curl_easy_perform(e) != CURLE_OK) return -1;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  return status == 200 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: curl_loop URL N\n");
    return 2;
  }
  long n = strtol(argv[2], NULL, 10);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURL *e = curl_easy_init();
  buf_t b = {0};
  long headers = 0;
  curl_easy_setopt(e, CURLOPT_URL, argv[1]);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  /* the same request as oflua.http makes with its defaults: User-Agent,
   * timeouts and response size limit */
  curl_easy_setopt(e, CURLOPT_USERAGENT, "oflua/0.1.0");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)16 * 1024 * 1024);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &headers);
  for (int i = 0; i < 100; i++)
    if (get(e, &b) != 0) return 1;
  double t0 = now();
  for (long i = 0; i < n; i++)
    if (get(e, &b) != 0) {
      fprintf(stderr, "curl_loop: request %ld failed\n", i);
      return 1;
    }
  printf("%.1f\n", (double)n / (now() - t0));
  free(b.p);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  return 0;
}
