/* Bench peer: a bare libmicrohttpd server answering "ok", with the thread
 * settings oflua.server uses (epoll, internal thread pool, ITC, same
 * per-connection memory and timeout). usage: mhd_ok WORKERS
 * Prints the port it listens on (127.0.0.1, ephemeral), runs until killed. */
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <unistd.h>

static struct MHD_Response *ok;

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls) {
  (void)cls, (void)url, (void)method, (void)version, (void)data;
  if (*con_cls == NULL) { /* first call: headers only */
    *con_cls = c;
    return MHD_YES;
  }
  if (*size > 0) {
    *size = 0;
    return MHD_YES;
  }
  return MHD_queue_response(c, MHD_HTTP_OK, ok);
}

int main(int argc, char **argv) {
  unsigned workers = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
  ok = MHD_create_response_from_buffer(2, (void *)"ok", MHD_RESPMEM_PERSISTENT);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC, 0, NULL, NULL, on_request, NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      (size_t)(16384 + 16384), MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT,
      1024u, workers > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, workers,
      MHD_OPTION_END);
  if (d == NULL) {
    fprintf(stderr, "mhd_ok: cannot start\n");
    return 1;
  }
  printf("%u\n", (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
  fflush(stdout);
  for (;;) pause();
}
