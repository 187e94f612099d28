/*
 * http_fixture_server.c: a tiny HTTP/1.1 server on plain sockets for the
 * oflua.http specs and bench/http.sh. Not a test itself (no test_ prefix).
 *
 *   http_fixture_server [lifetime_s]   listen on 127.0.0.1:<ephemeral>, print
 *                                      "<port> <pid>\n" on stdout, serve until
 *                                      killed or lifetime_s (default 60) passed
 *   http_fixture_server --closed-port  print a port that nothing listens on
 *   http_fixture_server --no-accept [lifetime_s]
 *                                      like the first form, but the listen
 *                                      queue is full and never drained, so a
 *                                      client's connect() stalls (connect timeout)
 *
 * One thread per connection, keep-alive, so a client can be checked for
 * connection reuse (every response carries X-Conn: <connection number>).
 * Paths (any method):
 *   /hello            200 "hello"
 *   /echo             200, body = the raw request (head and body, as received)
 *   /status/N         status N, body "status N"
 *   /headers          repeated and odd headers (Set-Cookie twice, X-Multi twice, ...)
 *   /early-hints      a 103 response with a Link header, then 200
 *   /delay/MS         sleep MS milliseconds, then 200 "delayed"
 *   /slow/N           N body bytes in 10 pieces, 50 ms apart (Content-Length N)
 *   /huge/N           N body bytes with Content-Length
 *   /chunked/N        N body bytes, chunked (no Content-Length)
 *   /stall            read the request, never answer
 *   /truncate         promise 1000 bytes, send 10, close (FIN)
 *   /reset            promise 100000 bytes, send 100, reset the connection (RST)
 *   /garbage          reply with bytes that are not HTTP, close
 *   /redirect         302 to /hello
 *   /goto/N/URL       status N (a redirect) with Location: URL (the rest of
 *                     the target, as sent)
 *   /close            200 with Connection: close, then close
 * A request that does not parse (e.g. a TLS ClientHello) gets a 400 and close.
 * A request in absolute form (http://host/path, as sent to a proxy) is served
 * by its path, so the server can stand in for an HTTP proxy.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ_MAX (1024 * 1024) /* whole request, head and body */

static atomic_int conn_seq;

typedef struct {
  int fd;
  int id;
  char buf[REQ_MAX + 1];
  size_t len; /* bytes in buf */
  int head;   /* the current request is HEAD: no body in the reply */
} conn_t;

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Writes n bytes of filler in pieces of up to 64 KiB. */
static int write_filler(int fd, size_t n) {
  static char block[65536];
  if (block[0] == 0) memset(block, 'x', sizeof block);
  while (n > 0) {
    size_t k = n < sizeof block ? n : sizeof block;
    if (write_all(fd, block, k) != 0) return -1;
    n -= k;
  }
  return 0;
}

static int respond(conn_t *c, int status, const char *reason, const char *extra, const char *body,
                   size_t blen, int close_after) {
  char head[1024];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nX-Conn: %d\r\nContent-Length: %zu\r\n%s%s\r\n", status,
                   reason, c->id, blen, extra ? extra : "",
                   close_after ? "Connection: close\r\n" : "");
  if (write_all(c->fd, head, (size_t)n) != 0) return -1;
  if (blen > 0 && !c->head && write_all(c->fd, body, blen) != 0) return -1;
  return close_after ? -1 : 0;
}

/* Reads more bytes into c->buf; -1 on EOF/error. */
static int fill(conn_t *c) {
  if (c->len >= REQ_MAX) return -1;
  ssize_t r;
  do r = recv(c->fd, c->buf + c->len, REQ_MAX - c->len, 0);
  while (r < 0 && errno == EINTR);
  if (r <= 0) return -1;
  c->len += (size_t)r;
  c->buf[c->len] = '\0';
  return 0;
}

static const char *find_header(const char *head, const char *name) {
  size_t nl = strlen(name);
  const char *p = strstr(head, "\r\n");
  while (p != NULL && p[2] != '\r') {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      p += nl + 1;
      while (*p == ' ') p++;
      return p;
    }
    p = strstr(p, "\r\n");
  }
  return NULL;
}

/* Serves one request; returns 0 to keep the connection, -1 to close it. */
static int serve_one(conn_t *c) {
  char *end;
  while ((end = strstr(c->buf, "\r\n\r\n")) == NULL) {
    if (fill(c) != 0) return -1;
    /* A request line starts with a method in capitals; anything else (a TLS
     * ClientHello starts with 0x16) will never end with CRLFCRLF: answer now. */
    if (c->buf[0] < 'A' || c->buf[0] > 'Z')
      return respond(c, 400, "Bad Request", NULL, "bad request", 11, 1);
  }
  size_t head_len = (size_t)(end - c->buf) + 4;
  char method[32], target[2048], version[16];
  if (sscanf(c->buf, "%31s %2047s %15s", method, target, version) != 3 ||
      strncmp(version, "HTTP/1.", 7) != 0)
    return respond(c, 400, "Bad Request", NULL, "bad request", 11, 1);
  c->head = strcmp(method, "HEAD") == 0;
  const char *cl = find_header(c->buf, "Content-Length");
  size_t body_len = cl ? strtoul(cl, NULL, 10) : 0;
  const char *conn_hdr = find_header(c->buf, "Connection");
  int client_close = conn_hdr != NULL && strncasecmp(conn_hdr, "close", 5) == 0;
  const char *expect = find_header(c->buf, "Expect");
  if (expect != NULL && strncasecmp(expect, "100-continue", 12) == 0)
    write_all(c->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  if (head_len + body_len > REQ_MAX) return respond(c, 413, "Too Large", NULL, "", 0, 1);
  while (c->len < head_len + body_len)
    if (fill(c) != 0) return -1;
  size_t req_len = head_len + body_len;

  /* absolute-form (a request sent through a proxy): serve it by its path */
  if (strncmp(target, "http://", 7) == 0) {
    char *path = strchr(target + 7, '/');
    memmove(target, path != NULL ? path : "/", strlen(path != NULL ? path : "/") + 1);
  }
  int rc;
  long arg = 0;
  if (strcmp(target, "/hello") == 0) {
    rc = respond(c, 200, "OK", "Content-Type: text/plain\r\n", "hello", 5, client_close);
  } else if (strcmp(target, "/echo") == 0) {
    rc = respond(c, 200, "OK", "Content-Type: application/octet-stream\r\n", c->buf, req_len,
                 client_close);
  } else if (sscanf(target, "/status/%ld", &arg) == 1) {
    char body[32];
    int n = snprintf(body, sizeof body, "status %ld", arg);
    rc = respond(c, (int)arg, "Whatever", NULL, body, (size_t)n, client_close);
  } else if (strcmp(target, "/headers") == 0) {
    rc = respond(c, 200, "OK",
                 "Set-Cookie: a=1; Path=/\r\n"
                 "Set-Cookie: b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT\r\n"
                 "X-Multi: one\r\n"
                 "X-Mixed-CASE: Yes\r\n"
                 "X-Multi: two\r\n"
                 "X-Empty:\r\n"
                 "X-Spaces:    padded value   \r\n",
                 "h", 1, client_close);
  } else if (strcmp(target, "/early-hints") == 0) {
    const char *hints = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n";
    write_all(c->fd, hints, strlen(hints));
    rc = respond(c, 200, "OK", "X-Final: yes\r\n", "final", 5, client_close);
  } else if (sscanf(target, "/delay/%ld", &arg) == 1) {
    sleep_ms(arg);
    rc = respond(c, 200, "OK", NULL, "delayed", 7, client_close);
  } else if (sscanf(target, "/slow/%ld", &arg) == 1) {
    char head[128];
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: %ld\r\n\r\n",
                     c->id, arg);
    rc = write_all(c->fd, head, (size_t)n);
    for (int i = 0; i < 10 && rc == 0; i++) {
      size_t piece = (size_t)arg / 10 + (i == 9 ? (size_t)arg % 10 : 0);
      sleep_ms(50);
      rc = write_filler(c->fd, piece);
    }
    if (client_close) rc = -1;
  } else if (sscanf(target, "/huge/%ld", &arg) == 1) {
    char head[128];
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: %ld\r\n\r\n",
                     c->id, arg);
    rc = write_all(c->fd, head, (size_t)n) == 0 && write_filler(c->fd, (size_t)arg) == 0 && !client_close ? 0 : -1;
  } else if (sscanf(target, "/chunked/%ld", &arg) == 1) {
    char head[128];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nX-Conn: %d\r\nTransfer-Encoding: chunked\r\n\r\n", c->id);
    rc = write_all(c->fd, head, (size_t)n);
    size_t left = (size_t)arg;
    while (rc == 0 && left > 0) {
      size_t k = left < 65536 ? left : 65536;
      n = snprintf(head, sizeof head, "%zx\r\n", k);
      rc = write_all(c->fd, head, (size_t)n) == 0 && write_filler(c->fd, k) == 0 &&
                   write_all(c->fd, "\r\n", 2) == 0 ? 0 : -1;
      left -= k;
    }
    if (rc == 0) rc = write_all(c->fd, "0\r\n\r\n", 5);
    if (client_close) rc = -1;
  } else if (strcmp(target, "/stall") == 0) {
    char sink[4096];
    while (recv(c->fd, sink, sizeof sink, 0) > 0) {
    }
    rc = -1;
  } else if (strcmp(target, "/truncate") == 0) {
    const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
    write_all(c->fd, r, strlen(r));
    rc = -1;
  } else if (strcmp(target, "/reset") == 0) {
    const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    write_all(c->fd, r, strlen(r));
    write_filler(c->fd, 100);
    sleep_ms(20); /* let the client read what was sent before the RST */
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    rc = -1;
  } else if (strcmp(target, "/garbage") == 0) {
    const char *r = "this is not http at all\r\n\r\n";
    write_all(c->fd, r, strlen(r));
    rc = -1;
  } else if (strcmp(target, "/redirect") == 0) {
    rc = respond(c, 302, "Found", "Location: /hello\r\n", "", 0, client_close);
  } else if (sscanf(target, "/goto/%ld/", &arg) == 1) {
    const char *dest = strchr(target + 6, '/') + 1;
    char loc[900];
    int n = snprintf(loc, sizeof loc, "Location: %s\r\n", dest);
    rc = n > 0 && (size_t)n < sizeof loc ? respond(c, (int)arg, "Redirect", loc, "", 0, client_close)
                                         : respond(c, 400, "Bad Request", NULL, "", 0, 1);
  } else if (strcmp(target, "/close") == 0) {
    rc = respond(c, 200, "OK", NULL, "bye", 3, 1);
  } else {
    rc = respond(c, 404, "Not Found", NULL, "not found", 9, client_close);
  }
  /* keep pipelined bytes for the next request */
  memmove(c->buf, c->buf + req_len, c->len - req_len);
  c->len -= req_len;
  c->buf[c->len] = '\0';
  return rc;
}

static void *conn_main(void *arg) {
  conn_t *c = arg;
  while (serve_one(c) == 0) {
  }
  close(c->fd);
  free(c);
  return NULL;
}

static int listen_socket(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t alen = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

int main(int argc, char **argv) {
  int port;
  int fd = listen_socket(&port);
  if (fd < 0) {
    perror("http_fixture_server: listen");
    return 1;
  }
  if (argc > 1 && strcmp(argv[1], "--closed-port") == 0) {
    close(fd); /* nothing listens there any more */
    printf("%d\n", port);
    return 0;
  }
  int no_accept = argc > 1 && strcmp(argv[1], "--no-accept") == 0;
  const char *life_arg = argc > 1 + no_accept ? argv[1 + no_accept] : "60";
  long lifetime = strtol(life_arg, NULL, 10);
  if (lifetime <= 0) lifetime = 60;
  signal(SIGPIPE, SIG_IGN);
  alarm((unsigned)lifetime); /* default action: terminate, so it never outlives a run */
  if (no_accept) {
    /* backlog 0 holds one pending connection; fill it (and then some) with
     * our own connects so further SYNs are dropped */
    if (listen(fd, 0) != 0) return 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)port);
    for (int i = 0; i < 4; i++) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      if (s < 0) return 1;
      fcntl(s, F_SETFL, O_NONBLOCK);
      (void)connect(s, (struct sockaddr *)&a, sizeof a); /* EINPROGRESS; kept open */
    }
    printf("%d %d\n", port, (int)getpid());
    fflush(stdout);
    for (;;) pause();
  }
  printf("%d %d\n", port, (int)getpid());
  fflush(stdout);
  for (;;) {
    int cfd = accept(fd, NULL, NULL);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE) continue;
      perror("http_fixture_server: accept");
      return 1;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_t *c = malloc(sizeof *c);
    if (c == NULL) {
      close(cfd);
      continue;
    }
    c->fd = cfd;
    c->id = atomic_fetch_add(&conn_seq, 1) + 1;
    c->len = 0;
    c->buf[0] = '\0';
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    if (pthread_create(&th, &at, conn_main, c) != 0) {
      close(cfd);
      free(c);
    }
    pthread_attr_destroy(&at);
  }
}
