/*
 * main.c: the oflua binary, a thin user of oflua.h.
 *
 *   oflua [options] [script [args]]   behaves like lua5.4 (same options, `arg`
 *                                     table, exit codes, LUA_INIT)
 *   oflua <command> [args]            runs lua/oflua/cli/<command>.lua
 *
 * A first argument that contains '/' or ends in ".lua" is always a script; any
 * other word is a subcommand if one of that name exists, else a script file if
 * one exists, else an error. The argument parsing and REPL follow lua.c so the
 * two interpreters accept the same command lines.
 */
#include "oflua.h"

#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static const char *progname = "oflua";

static void print_usage(const char *badoption) {
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "%s: '%s' needs argument (see '%s help')\n", progname, badoption, progname);
  else
    fprintf(stderr, "%s: unrecognized option '%s' (see '%s help')\n", progname, badoption,
            progname);
}

static void l_message(const char *pname, const char *msg) {
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    l_message(progname, msg);
    lua_pop(L, 1);
  }
  return status;
}

/* Error handler: traceback for strings, plain text for error objects that
 * describe themselves (subcommands raise those for user errors). */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static lua_State *globalL = NULL;

static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void laction(int i) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  signal(i, SIG_DFL);
  lua_sethook(globalL, lstop, flag, 1);
}

/* Error handler of subcommands: a CLI error object (a table with an integer
 * `status`, raised by oflua.cliutil) is kept as is, for its status. */
static int cli_msghandler(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE && lua_getfield(L, 1, "status") == LUA_TNUMBER) {
    lua_pop(L, 1);
    return 1;
  }
  lua_settop(L, 1);
  return msghandler(L);
}

static int docall_with(lua_State *L, int narg, int nres, lua_CFunction handler) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, handler);
  lua_insert(L, base);
  globalL = L;
  signal(SIGINT, laction);
  int status = lua_pcall(L, narg, nres, base);
  signal(SIGINT, SIG_DFL);
  lua_remove(L, base);
  return status;
}

static int docall(lua_State *L, int narg, int nres) { return docall_with(L, narg, nres, msghandler); }

static void print_version(void) {
  printf("oflua %s (%s)\n", oflua_version(), LUA_RELEASE);
  fflush(stdout);
}

/* arg table as lua.c builds it: script at 0, options before it negative. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0;
  int narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

static int dolibrary(lua_State *L, char *globname) {
  char *modname = strchr(globname, '=');
  if (modname == NULL) {
    modname = globname;
  } else {
    *modname = '\0';
    modname++;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, globname);
  return report(L, status);
}

static int pushargs(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE) luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  int i;
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  int status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = docall(L, n, 0);
  }
  return report(L, status);
}

#define has_error 1
#define has_i 2
#define has_v 4
#define has_e 8
#define has_E 16

static int collectargs(char **argv, int *first) {
  int args = 0;
  int i;
  if (argv[0] != NULL) {
    if (argv[0][0]) progname = "oflua";
  } else {
    *first = -1;
    return 0;
  }
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] != '\0') return has_error;
        *first = i + 1;
        return args;
      case '\0':
        return args;
      case 'E':
        if (argv[i][2] != '\0') return has_error;
        args |= has_E;
        break;
      case 'W':
        if (argv[i][2] != '\0') return has_error;
        break;
      case 'i':
        args |= has_i; /* FALLTHROUGH */
      case 'v':
        if (argv[i][2] != '\0') return has_error;
        args |= has_v;
        break;
      case 'e':
        args |= has_e; /* FALLTHROUGH */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return has_error;
        }
        break;
      default:
        return has_error;
    }
  }
  *first = i;
  return args;
}

static int runargs(lua_State *L, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    int option = argv[i][1];
    switch (option) {
      case 'e':
      case 'l': {
        char *extra = argv[i] + 2;
        if (*extra == '\0') extra = argv[++i];
        int status = (option == 'e') ? dostring(L, extra, "=(command line)")
                                     : dolibrary(L, extra);
        if (status != LUA_OK) return 0;
        break;
      }
      case 'W':
        lua_warning(L, "@on", 0);
        break;
    }
  }
  return 1;
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dostring(L, init, name);
}

/* ---- REPL ----
 * Line editing and history come from libedit (Debian: libedit2), opened with
 * dlopen only when the REPL starts on a terminal: BSD-licensed (Debian's
 * lua5.4 links GNU readline, whose GPL would then cover this MIT binary), no
 * link-time dependency, and nothing loaded for scripts, -e or piped input.
 * Without libedit the REPL reads plain lines. History: $OFLUA_HISTORY, else
 * ~/.oflua_history (mode 0600), at most 1000 lines. */
static char *(*ed_readline)(const char *);
static int (*ed_add_history)(const char *);
static int (*ed_write_history)(const char *);
static char history_path[PATH_MAX];

static void editing_open(void) {
  if (!isatty(0) || !isatty(1)) return;
  void *h = dlopen("libedit.so.2", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) return;
  int (*read_history)(const char *);
  void (*stifle_history)(int);
  *(void **)(&ed_readline) = dlsym(h, "readline");
  *(void **)(&ed_add_history) = dlsym(h, "add_history");
  *(void **)(&ed_write_history) = dlsym(h, "write_history");
  *(void **)(&read_history) = dlsym(h, "read_history");
  *(void **)(&stifle_history) = dlsym(h, "stifle_history");
  if (ed_readline == NULL || ed_add_history == NULL) {
    ed_readline = NULL;
    return;
  }
  const char *env = getenv("OFLUA_HISTORY"), *home = getenv("HOME");
  if (env != NULL && env[0] != '\0')
    snprintf(history_path, sizeof history_path, "%s", env);
  else if (home != NULL && home[0] != '\0')
    snprintf(history_path, sizeof history_path, "%s/.oflua_history", home);
  if (stifle_history != NULL) stifle_history(1000);
  if (history_path[0] != '\0' && read_history != NULL) read_history(history_path);
}

static void editing_close(void) {
  if (ed_readline == NULL || ed_write_history == NULL || history_path[0] == '\0') return;
  mode_t old = umask(077);
  ed_write_history(history_path);
  umask(old);
}

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    static const char eof[] = "<eof>";
    if (lmsg >= sizeof(eof) - 1 && strcmp(msg + lmsg - (sizeof(eof) - 1), eof) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

static int push_line(lua_State *L) {
  const char *line = lua_touserdata(L, 1);
  if (lua_toboolean(L, 2) && line[0] == '=')
    lua_pushfstring(L, "return %s", line + 1);
  else
    lua_pushstring(L, line);
  return 1;
}

static int pushline(lua_State *L, int firstline) {
  char buffer[512];
  if (ed_readline != NULL) {
    char *line = ed_readline(firstline ? "> " : ">> ");
    if (line == NULL) return 0;
    if (line[0] != '\0') ed_add_history(line);
    /* copied into Lua under lua_pcall: a memory error cannot leak the line */
    int st = LUA_ERRMEM;
    if (lua_checkstack(L, 3)) {
      lua_pushcfunction(L, push_line);
      lua_pushlightuserdata(L, line);
      lua_pushboolean(L, firstline);
      st = lua_pcall(L, 2, 1, 0);
      if (st != LUA_OK) lua_pop(L, 1);
    }
    free(line);
    return st == LUA_OK;
  }
  fputs(firstline ? "> " : ">> ", stdout);
  fflush(stdout);
  if (fgets(buffer, sizeof buffer, stdin) == NULL) return 0;
  size_t l = strlen(buffer);
  if (l > 0 && buffer[l - 1] == '\n') buffer[--l] = '\0';
  if (firstline && buffer[0] == '=')
    lua_pushfstring(L, "return %s", buffer + 1);
  else
    lua_pushlstring(L, buffer, l);
  return 1;
}

static int addreturn(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK)
    lua_remove(L, -2);
  else
    lua_pop(L, 2);
  return status;
}

static int multiline(lua_State *L) {
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, line, len, "=stdin");
    if (!incomplete(L, status) || !pushline(L, 0)) return status;
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

static int loadline(lua_State *L) {
  lua_settop(L, 0);
  if (!pushline(L, 1)) return -1;
  int status = addreturn(L);
  if (status != LUA_OK) status = multiline(L);
  lua_remove(L, 1);
  return status;
}

static void l_print(lua_State *L) {
  int n = lua_gettop(L);
  if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
      l_message(progname, lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1)));
  }
}

static void doREPL(lua_State *L) {
  int status;
  const char *oldprogname = progname;
  progname = NULL;
  editing_open();
  while ((status = loadline(L)) != -1) {
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK)
      l_print(L);
    else
      report(L, status);
  }
  lua_settop(L, 0);
  editing_close();
  fputc('\n', stdout);
  fflush(stdout);
  progname = oldprogname;
}

/* ---- subcommands ---- */

static int is_command_word(const char *s) {
  if (s == NULL || s[0] == '\0' || s[0] == '-' || strchr(s, '/') != NULL) return 0;
  size_t n = strlen(s);
  if (n >= 4 && strcmp(s + n - 4, ".lua") == 0) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
      return 0;
  return 1;
}

/* Pushes the path of lua/oflua/cli/<name>.lua or returns 0. */
static int find_command(lua_State *L, const char *name) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushfstring(L, "oflua.cli.%s", name);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 1);
  lua_remove(L, -2);
  if (lua_isstring(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

/* Runs the command file on top of the stack with argv[first+1..] as `...`.
 * Returns the exit status. */
static int run_command(lua_State *L, char **argv, int argc, int first) {
  const char *path = lua_tostring(L, -1);
  lua_createtable(L, argc - first, 1);
  for (int i = first; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - first);
  }
  lua_setglobal(L, "arg");
  int status = luaL_loadfile(L, path);
  lua_remove(L, -2);
  if (status != LUA_OK) return report(L, status), EXIT_FAILURE;
  int n = argc - first - 1;
  luaL_checkstack(L, n + 3, "too many arguments");
  for (int i = first + 1; i < argc; i++) lua_pushstring(L, argv[i]);
  status = docall_with(L, n, 1, cli_msghandler);
  if (status != LUA_OK) {
    int code = EXIT_FAILURE, silent = 0;
    if (lua_type(L, -1) == LUA_TTABLE) { /* a CLI error: its status, maybe already printed */
      lua_getfield(L, -1, "status");
      lua_Integer st = lua_tointeger(L, -1);
      if (st > 0 && st < 126) code = (int)st;
      lua_getfield(L, -2, "silent");
      silent = lua_toboolean(L, -1);
      lua_pop(L, 2);
    }
    const char *msg = luaL_tolstring(L, -1, NULL);
    if (!silent) fprintf(stderr, "oflua %s: %s\n", argv[first], msg ? msg : "(error)");
    return code;
  }
  int code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1)
             : lua_toboolean(L, -1) || lua_isnil(L, -1) ? EXIT_SUCCESS
                                                        : EXIT_FAILURE;
  lua_pop(L, 1);
  return code;
}

/* ---- main ---- */

typedef struct {
  int argc;
  char **argv;
  int status; /* exit status */
} pmain_args;

static int pmain(lua_State *L) {
  pmain_args *pa = (pmain_args *)lua_touserdata(L, 1);
  int argc = pa->argc;
  char **argv = pa->argv;
  lua_settop(L, 0);
  pa->status = EXIT_FAILURE;
  /* main() stops the collector while the state is set up (as lua.c does);
   * everything from here on runs with it on, subcommands included. */
  lua_gc(L, LUA_GCRESTART);
  lua_gc(L, LUA_GCGEN, 0, 0);

  /* Subcommands and their aliases come first. */
  if (argc >= 2) {
    const char *w = argv[1];
    if (strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0) w = "help";
    if (strcmp(w, "--version") == 0) w = "version";
    if (is_command_word(w)) {
      if (find_command(L, w)) {
        char *saved = argv[1];
        argv[1] = (char *)w;
        pa->status = run_command(L, argv, argc, 1);
        argv[1] = saved;
        return 0;
      }
      if (!file_exists(w)) {
        /* `oflua help --unknown WORD`: did-you-mean, exit status 2 */
        char *fake[] = {"help", "--unknown", (char *)w, NULL};
        if (find_command(L, "help")) {
          pa->status = run_command(L, fake, 3, 0);
          return 0;
        }
        fprintf(stderr, "%s: unknown command or script '%s' (see '%s help')\n", progname, w,
                progname);
        pa->status = 2;
        return 0;
      }
    }
  }

  int script;
  int args = collectargs(argv, &script);
  if (args == has_error) {
    print_usage(argv[script]);
    return 0;
  }
  if (args & has_v) print_version();
  if (args & has_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  createargtable(L, argv, argc, script);
  if (!(args & has_E)) {
    if (handle_luainit(L) != LUA_OK) return 0;
  }
  if (!runargs(L, argv, script)) return 0;
  if (script > 0 && script < argc) {
    if (handle_script(L, argv + script) != LUA_OK) return 0;
  }
  if (args & has_i) {
    doREPL(L);
  } else if (script < 1 || script == argc) {
    if (!(args & (has_e | has_v))) {
      if (isatty(0)) {
        print_version();
        doREPL(L);
      } else {
        if (dochunk(L, luaL_loadfile(L, NULL)) != LUA_OK) return 0;
      }
    }
  }
  pa->status = EXIT_SUCCESS;
  return 0;
}

/* The Lua tree for this binary: the source tree when it runs from the build
 * directory it was built in (so an installed copy does not shadow the code
 * being developed); <exe>/../share/lua/5.4 when installed (wherever the
 * prefix); else NULL for the library's default. $OFLUA_PATH always wins. */
static const char *binary_lua_dir(char *buf, size_t len) {
  const char *env = getenv("OFLUA_PATH");
  if (env != NULL && env[0] != '\0') return NULL;
  char exe[PATH_MAX], build[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash == NULL) return NULL;
  *slash = '\0';
  if (realpath(OFLUA_BUILD_DIR, build) != NULL && strcmp(exe, build) == 0) {
    snprintf(buf, len, "%s", OFLUA_SOURCE_LUA_DIR);
    return buf;
  }
  struct stat st;
  char rel[PATH_MAX];
  int w = snprintf(rel, sizeof rel, "%s/../%s", exe, OFLUA_REL_LUA_DIR);
  if (w > 0 && (size_t)w < sizeof rel && len >= PATH_MAX && realpath(rel, buf) != NULL &&
      stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
    return buf;
  return NULL;
}

int main(int argc, char **argv) {
  char err[1024], dir[PATH_MAX];
  oflua_options opts = {binary_lua_dir(dir, sizeof dir), 0, NULL};
  oflua_runtime *rt = oflua_open(&opts, err, sizeof err);
  if (rt == NULL) {
    l_message(progname, err);
    return EXIT_FAILURE;
  }
  lua_State *L = oflua_lua_state(rt);
  lua_gc(L, LUA_GCSTOP);
  pmain_args pa = {argc, argv, EXIT_FAILURE};
  lua_pushcfunction(L, pmain);
  lua_pushlightuserdata(L, &pa);
  int status = lua_pcall(L, 1, 0, 0);
  report(L, status);
  oflua_close(rt);
  return (status == LUA_OK) ? pa.status : EXIT_FAILURE;
}
