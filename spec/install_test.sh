#!/usr/bin/env bash
# ctest "install": cmake --install into a temporary prefix, then use it as a
# user would: the binary, its subcommands and native modules, and a C program
# built with `pkg-config oflua`.
set -euo pipefail
cmake=$1 build=$2 sanitize=${3:-OFF}
extra=()
case "$sanitize" in ON|on|1|TRUE|true) extra=(-fsanitize=address,undefined) ;; esac
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
bin="$prefix/bin/oflua"
out=$(cd / && env -u OFLUA_PATH "$bin" -e 'print(require("oflua.core").lua_dir)')
case "$out" in "$prefix"/*) ;; *) echo "installed binary uses Lua tree '$out', not under $prefix" >&2; exit 1 ;; esac
(cd / && "$bin" version >/dev/null)
(cd / && "$bin" -e 'for _, m in ipairs{"oflua.crypto","oflua.http","oflua.server","oflua.store"} do require(m) end')
test -f "$prefix/include/oflua.h"
pcdir=$(dirname "$(find "$prefix" -name oflua.pc | head -1)")
cat >"$prefix/embed.c" <<'C'
#include <oflua.h>
#include <stdio.h>
int main(void) {
  char err[256];
  oflua_runtime *rt = oflua_open(NULL, err, sizeof err);
  if (!rt || oflua_run_string(rt, "assert(require('cjson'))", NULL, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  oflua_close(rt);
  return 0;
}
C
# shellcheck disable=SC2046
cc "${extra[@]}" -o "$prefix/embed" "$prefix/embed.c" $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs oflua)
LD_LIBRARY_PATH="$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir oflua)" "$prefix/embed"
echo "install: ok"
