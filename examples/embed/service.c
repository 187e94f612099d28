/*
 * service.c: a small C service with its own HTTP loop that embeds oflua.
 *
 * It stands for an existing C program (a gateway, a daemon) that already
 * owns its sockets and wants OFAuth webhooks handled by the ofauth Lua
 * library without running `oflua serve`: it opens a runtime (oflua_open),
 * loads a handler script (oflua_load_handler; here handler.lua, which builds
 * an ofauth.webhooks app), turns each HTTP request it reads into an
 * oflua_http_request, hands it to oflua_handle_http and writes the response
 * back. About once a second it calls the script's global `embed_tick` with
 * oflua_call (the webhook app retries failed handlers from its inbox there).
 *
 *   make && ./service --port 8080 --handler handler.lua
 *
 * The HTTP side is deliberately minimal: one connection at a time on
 * 127.0.0.1, HTTP/1.1 with Content-Length bodies (no chunked uploads, no
 * keep-alive), 16 KiB of headers, 1 MiB of body, a 5 s read timeout. A real
 * service keeps its own server; what matters is the four oflua.h calls.
 * Stops cleanly on SIGINT / SIGTERM (the runtime is closed, nothing leaks).
 *
 * Options:
 *   --port N          port on 127.0.0.1 (default 8080; 0 = any free port)
 *   --handler PATH    the Lua handler script (default handler.lua)
 *   --lua-dir DIR     the oflua Lua tree (default $OFLUA_PATH, else the one
 *                     this program was built against: see the Makefile)
 * Prints "listening on http://127.0.0.1:PORT (pid N)" once ready.
 */
#include <oflua.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef EMBED_LUA_DIR
#define EMBED_LUA_DIR NULL /* the library's default */
#endif

#define MAX_HEAD 16384
#define MAX_BODY (1024 * 1024)
#define MAX_HEADERS 64
#define READ_TIMEOUT_S 5

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
  (void)sig;
  stopping = 1;
}

typedef struct request {
  char head[MAX_HEAD + 1]; /* request line and headers, split in place */
  char *body;
  size_t body_len;
  oflua_header headers[MAX_HEADERS];
  size_t nheaders;
  char *method, *path, *query;
} request;

static const char *reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void send_response(int fd, int status, const oflua_header *headers, size_t nheaders,
                          const char *body, size_t body_len) {
  char line[512];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
  if (write_all(fd, line, (size_t)n) != 0) return;
  for (size_t i = 0; i < nheaders; i++) {
    const char *name = headers[i].name;
    /* Framing is ours: drop what the handler might have set. */
    if (strcasecmp(name, "content-length") == 0 || strcasecmp(name, "connection") == 0 ||
        strcasecmp(name, "transfer-encoding") == 0)
      continue;
    if (write_all(fd, name, strlen(name)) != 0 || write_all(fd, ": ", 2) != 0 ||
        write_all(fd, headers[i].value, strlen(headers[i].value)) != 0 ||
        write_all(fd, "\r\n", 2) != 0)
      return;
  }
  n = snprintf(line, sizeof line, "Content-Length: %zu\r\nConnection: close\r\n\r\n", body_len);
  if (write_all(fd, line, (size_t)n) != 0) return;
  if (body_len > 0) write_all(fd, body, body_len);
}

static void send_error(int fd, int status) {
  static const oflua_header text[] = {{"Content-Type", "text/plain; charset=utf-8"}};
  const char *msg = reason_phrase(status);
  send_response(fd, status, text, 1, msg, strlen(msg));
}

/* Reads and parses one request. Returns 0, or the HTTP status to answer with
 * (-1: the peer went away or timed out, answer nothing). */
static int read_request(int fd, request *r) {
  size_t len = 0;
  char *end = NULL;
  while (end == NULL) {
    if (len == MAX_HEAD) return 431;
    ssize_t got = recv(fd, r->head + len, MAX_HEAD - len, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    len += (size_t)got;
    r->head[len] = '\0';
    end = strstr(r->head, "\r\n\r\n");
  }
  *end = '\0';
  char *extra = end + 4; /* body bytes read together with the head */
  size_t extra_len = len - (size_t)(extra - r->head);

  /* Request line: METHOD SP TARGET SP HTTP/1.x */
  char *save = NULL;
  char *line = strtok_r(r->head, "\r\n", &save);
  if (line == NULL) return 400;
  char *sp1 = strchr(line, ' ');
  char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
  if (sp1 == NULL || sp2 == NULL || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) return 400;
  *sp1 = '\0';
  *sp2 = '\0';
  r->method = line;
  r->path = sp1 + 1;
  if (r->path[0] != '/') return 400;
  char *q = strchr(r->path, '?');
  r->query = NULL;
  if (q != NULL) {
    *q = '\0';
    r->query = q + 1;
  }

  /* Headers: "Name: value", optional whitespace around the value. */
  long long content_length = 0;
  r->nheaders = 0;
  while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line) return 400;
    *colon = '\0';
    char *value = colon + 1;
    while (*value == ' ' || *value == '\t') value++;
    size_t vlen = strlen(value);
    while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) value[--vlen] = '\0';
    if (r->nheaders == MAX_HEADERS) return 431;
    r->headers[r->nheaders].name = line;
    r->headers[r->nheaders].value = value;
    r->nheaders++;
    if (strcasecmp(line, "transfer-encoding") == 0) return 411; /* no chunked uploads here */
    if (strcasecmp(line, "content-length") == 0) {
      char *e = NULL;
      errno = 0;
      content_length = strtoll(value, &e, 10);
      if (errno != 0 || e == value || *e != '\0' || content_length < 0) return 400;
    }
  }
  if (content_length > MAX_BODY) return 413;
  if ((long long)extra_len > content_length) return 400; /* no pipelining */

  /* Body: exactly Content-Length bytes, the raw bytes the signature covers. */
  r->body_len = (size_t)content_length;
  r->body = NULL;
  if (r->body_len > 0) {
    r->body = malloc(r->body_len);
    if (r->body == NULL) return 503;
    memcpy(r->body, extra, extra_len);
    size_t have = extra_len;
    while (have < r->body_len) {
      ssize_t got = recv(fd, r->body + have, r->body_len - have, 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return -1;
      have += (size_t)got;
    }
  }
  return 0;
}

static void serve_one(oflua_runtime *rt, int fd, const char *peer) {
  struct timeval tv = {READ_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  request *r = calloc(1, sizeof *r);
  if (r == NULL) {
    send_error(fd, 503);
    return;
  }
  int rc = read_request(fd, r);
  if (rc > 0) send_error(fd, rc);
  if (rc == 0) {
    oflua_http_request req = {r->method, r->path,   r->query,     r->headers,
                              r->nheaders, r->body, r->body_len, peer};
    oflua_http_response resp;
    char err[2048];
    if (oflua_handle_http(rt, &req, &resp, err, sizeof err) != OFLUA_OK) {
      fprintf(stderr, "service: %s\n", err);
      send_error(fd, 500);
    } else {
      /* On a Lua error the response is a generic 500 and err says why:
       * the details go to our log, never to the client. err has been
       * through the runtime's error filter (ofauth.redact, loaded by
       * handler.lua, installs it; a failing filter gives a fixed
       * placeholder), as have the errors of oflua_call and oflua_run_*. */
      if (err[0] != '\0') fprintf(stderr, "service: handler error: %s\n", err);
      /* Status 0: the handler returned server.DROP (close without answering). */
      if (resp.status != 0)
        send_response(fd, resp.status, resp.headers, resp.nheaders, resp.body, resp.body_len);
      oflua_http_response_free(&resp);
    }
  }
  free(r->body);
  free(r);
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The script's background work, if it defines `embed_tick`. */
static void tick(oflua_runtime *rt) {
  char err[1024];
  int rc = oflua_call(rt, "embed_tick", 0, NULL, NULL, NULL, err, sizeof err);
  if (rc != OFLUA_OK && rc != OFLUA_ERR_NOTFOUND) fprintf(stderr, "service: embed_tick: %s\n", err);
}

int main(int argc, char **argv) {
  const char *handler = "handler.lua";
  const char *lua_dir = EMBED_LUA_DIR;
  const char *env = getenv("OFLUA_PATH");
  if (env != NULL && env[0] != '\0') lua_dir = env;
  long port = 8080;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
      char *e = NULL;
      port = strtol(argv[++i], &e, 10);
      if (*e != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "service: bad --port\n");
        return 2;
      }
    } else if (strcmp(argv[i], "--handler") == 0 && i + 1 < argc) {
      handler = argv[++i];
    } else if (strcmp(argv[i], "--lua-dir") == 0 && i + 1 < argc) {
      lua_dir = argv[++i];
    } else {
      fprintf(stderr, "usage: %s [--port N] [--handler PATH] [--lua-dir DIR]\n", argv[0]);
      return 2;
    }
  }

  char err[4096];
  oflua_options opts = {lua_dir, argc, (const char *const *)argv};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  if (rt == NULL) {
    fprintf(stderr, "service: oflua_open: %s\n", err);
    return 1;
  }
  if (oflua_load_handler(rt, handler, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "service: loading %s: %s\n", handler, err);
    oflua_close(rt);
    return 1;
  }

  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof addr;
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
    fprintf(stderr, "service: cannot listen on 127.0.0.1:%ld: %s\n", port, strerror(errno));
    if (lfd >= 0) close(lfd);
    oflua_close(rt);
    return 1;
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  printf("listening on http://127.0.0.1:%u (pid %ld)\n", (unsigned)ntohs(addr.sin_port), (long)getpid());
  fflush(stdout);

  double last_tick = monotonic();
  while (!stopping) {
    struct pollfd pfd = {lfd, POLLIN, 0};
    int ready = poll(&pfd, 1, 1000);
    if (ready > 0) {
      struct sockaddr_in peer;
      socklen_t plen = sizeof peer;
      int fd = accept(lfd, (struct sockaddr *)&peer, &plen);
      if (fd >= 0) {
        char ip[INET_ADDRSTRLEN] = "";
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
        serve_one(rt, fd, ip);
        close(fd);
      }
    }
    if (monotonic() - last_tick >= 1.0) {
      tick(rt);
      last_tick = monotonic();
    }
  }

  close(lfd);
  oflua_close(rt);
  fprintf(stderr, "service: stopped\n");
  return 0;
}
