/*
 * oflua.h: the public embedding API of oflua (the only public header).
 *
 * A runtime is one configured lua_State: standard libraries, cjson and the
 * native modules (oflua.http, oflua.server, oflua.crypto, oflua.store)
 * preloaded, and package.path pointing at the ofauth Lua tree. Errors come
 * back as an OFLUA_* code plus a message written into a caller-supplied
 * buffer (may be NULL); the library never calls exit() and never prints.
 *
 * A runtime is not thread-safe: use one per thread (or lock around it).
 */
#ifndef OFLUA_H
#define OFLUA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OFLUA_VERSION_STRING "0.1.0"

/* Result codes. */
enum {
  OFLUA_OK = 0,
  OFLUA_ERR_ARG = 1,      /* a bad argument to the API itself */
  OFLUA_ERR_MEM = 2,      /* out of memory */
  OFLUA_ERR_SYNTAX = 3,   /* Lua code failed to compile */
  OFLUA_ERR_RUN = 4,      /* Lua code raised an error */
  OFLUA_ERR_FILE = 5,     /* a file could not be read */
  OFLUA_ERR_NOTFOUND = 6, /* no such global function / no handler loaded */
  OFLUA_ERR_TYPE = 7      /* a Lua value had the wrong type */
};

typedef struct oflua_runtime oflua_runtime;
struct lua_State;

typedef struct oflua_options {
  /* Directory holding the Lua tree (ofauth/, oflua/). NULL: $OFLUA_PATH, else
   * the installed tree if present, else the source tree it was built from. */
  const char *lua_dir;
  /* Command-line style arguments exposed to Lua as the global `arg` table
   * (arg[0] = argv[0]). May be NULL/0. */
  int argc;
  const char *const *argv;
} oflua_options;

/* Open a runtime. opts may be NULL for defaults. Returns NULL on failure with
 * the reason in errbuf. */
oflua_runtime *oflua_open(const oflua_options *opts, char *errbuf, size_t errlen);

/* Run a Lua file / a string of Lua code. chunkname may be NULL. */
int oflua_run_file(oflua_runtime *rt, const char *path, char *errbuf, size_t errlen);
int oflua_run_string(oflua_runtime *rt, const char *code, const char *chunkname,
                     char *errbuf, size_t errlen);

/* Call the global function `name` with nargs string arguments. Its first result
 * is converted to a string (nil gives NULL) and returned in *result (malloc'd,
 * NUL-terminated, free() it; may hold NULs, see *result_len). result and
 * result_len may be NULL when the result is not wanted. */
int oflua_call(oflua_runtime *rt, const char *name, int nargs, const char *const *args,
               char **result, size_t *result_len, char *errbuf, size_t errlen);

/* HTTP requests handed over by a C service that has its own HTTP server. */
typedef struct oflua_header {
  const char *name;
  const char *value;
} oflua_header;

typedef struct oflua_http_request {
  const char *method;          /* "GET", "POST", ... */
  const char *path;            /* "/webhooks/ofauth" (no query) */
  const char *query;           /* raw query string without '?', or NULL */
  const oflua_header *headers; /* names in any case */
  size_t nheaders;
  const char *body;            /* raw bytes, may hold NULs; NULL if none */
  size_t body_len;
  const char *remote_addr;     /* or NULL */
} oflua_http_request;

typedef struct oflua_http_response {
  int status;             /* 0: the handler returned server.DROP (close, no answer) */
  oflua_header *headers;  /* owned by the response */
  size_t nheaders;
  char *body;             /* owned by the response */
  size_t body_len;
} oflua_http_response;

/* Load the handler script: a Lua file returning a function(req) or a router
 * (as for `oflua serve`). Replaces any handler loaded before. */
int oflua_load_handler(oflua_runtime *rt, const char *path, char *errbuf, size_t errlen);

/* Hand one request to the loaded handler. On OFLUA_OK *resp is filled (free it
 * with oflua_http_response_free). A Lua error in the handler gives OFLUA_OK
 * with a generic 500 response and the error (with traceback) in errbuf. */
int oflua_handle_http(oflua_runtime *rt, const oflua_http_request *req,
                      oflua_http_response *resp, char *errbuf, size_t errlen);
void oflua_http_response_free(oflua_http_response *resp);

/* The runtime's lua_State, for what this API does not cover. */
struct lua_State *oflua_lua_state(oflua_runtime *rt);

/* Close a runtime (NULL is fine). */
void oflua_close(oflua_runtime *rt);

/* "0.1.0" */
const char *oflua_version(void);

#ifdef __cplusplus
}
#endif
#endif
