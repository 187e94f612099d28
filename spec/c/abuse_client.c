/*
 * abuse_client: the attacks of spec/abuse_server_spec.lua against a server
 * on loopback, from a chosen source address (127.0.0.2 stands for another
 * client). Bounded in time; prints key=value results on stdout.
 *
 *   abuse_client hold HOST PORT SRC N idle|slow SECONDS
 *       opens N connections from SRC and holds them SECONDS: "idle" sends
 *       nothing, "slow" sends a request line and then one header line every
 *       0.5 s without ever ending the head. Prints
 *       connected=C refused=R closed=X open=O (refused: connect failed or
 *       closed within 0.5 s of opening; closed: closed by the server later).
 *   abuse_client chunked HOST PORT SRC MAX_BYTES
 *       sends an endless chunked body (64 KiB chunks) until an answer
 *       arrives, the server closes, MAX_BYTES are sent or 10 s pass. Prints
 *       status=S sent=N (S: the answer's status code, 0 if none).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_conn(const char *host, int port, const char *src) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  if (inet_pton(AF_INET, src, &a.sin_addr) != 1 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  a.sin_port = htons((unsigned short)port);
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
      connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* 1 if the peer closed (or reset) fd; data is read and dropped. */
static int peer_closed(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) continue;
    if (n == 0) return 1;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : 1;
  }
}

static int hold(const char *host, int port, const char *src, int n, int slow, double secs) {
  int *fds = calloc((size_t)n, sizeof *fds);
  double *opened = calloc((size_t)n, sizeof *opened);
  if (fds == NULL || opened == NULL) return 2;
  int connected = 0, refused = 0, closed = 0;
  for (int i = 0; i < n; i++) {
    fds[i] = open_conn(host, port, src);
    opened[i] = now();
    if (fds[i] < 0) refused++;
    else connected++;
    if (fds[i] >= 0 && slow) {
      const char *line = "GET /slow HTTP/1.1\r\nHost: x\r\n";
      if (send(fds[i], line, strlen(line), MSG_NOSIGNAL) < 0) { /* closed: seen below */
      }
    }
  }
  double end = now() + secs, next_line = now() + 0.5;
  while (now() < end) {
    usleep(50000);
    int send_now = slow && now() >= next_line;
    if (send_now) next_line = now() + 0.5;
    for (int i = 0; i < n; i++) {
      if (fds[i] < 0) continue;
      if (send_now) send(fds[i], "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
      if (peer_closed(fds[i])) {
        if (now() - opened[i] < 0.5) refused++;
        else closed++;
        close(fds[i]);
        fds[i] = -1;
      }
    }
  }
  int open = 0;
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) {
      open++;
      close(fds[i]);
    }
  printf("connected=%d refused=%d closed=%d open=%d\n", connected, refused, closed, open);
  free(fds);
  free(opened);
  return 0;
}

static int chunked(const char *host, int port, const char *src, long long max) {
  int fd = open_conn(host, port, src);
  if (fd < 0) {
    printf("status=0 sent=0 connect=failed\n");
    return 0;
  }
  const char *head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  send(fd, head, strlen(head), MSG_NOSIGNAL);
  static char chunk[65536 + 16];
  int hl = snprintf(chunk, sizeof chunk, "%x\r\n", 65536);
  memset(chunk + hl, 'x', 65536);
  memcpy(chunk + hl + 65536, "\r\n", 2);
  size_t clen = (size_t)hl + 65536 + 2, off = 0;
  long long sent = 0;
  char resp[512];
  size_t rlen = 0;
  double end = now() + 10;
  int status = 0;
  while (now() < end && sent < max) {
    struct pollfd p = {fd, POLLIN | POLLOUT, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = recv(fd, resp + rlen, sizeof resp - 1 - rlen, 0);
      if (r > 0) {
        rlen += (size_t)r;
        resp[rlen] = '\0';
        if (sscanf(resp, "HTTP/1.%*d %d", &status) == 1) break;
        continue;
      }
      break; /* closed or reset */
    }
    if (p.revents & POLLOUT) {
      ssize_t w = send(fd, chunk + off, clen - off, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN) break;
      if (w > 0) {
        sent += w;
        off = (off + (size_t)w) % clen;
      }
    }
  }
  printf("status=%d sent=%lld\n", status, sent);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 8 && strcmp(argv[1], "hold") == 0)
    return hold(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), strcmp(argv[6], "slow") == 0,
                atof(argv[7]));
  if (argc >= 6 && strcmp(argv[1], "chunked") == 0)
    return chunked(argv[2], atoi(argv[3]), argv[4], atoll(argv[5]));
  fprintf(stderr, "usage: abuse_client hold HOST PORT SRC N idle|slow SECONDS\n"
                  "       abuse_client chunked HOST PORT SRC MAX_BYTES\n");
  return 2;
}
