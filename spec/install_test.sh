#!/usr/bin/env bash
# ctest "install": cmake --install into a temporary prefix, then use it as a
# user would: the standard Lua 5.4 layout, the binary (relocated), every
# module under plain lua5.4, and C programs built with `pkg-config oflua`
# (shared with an rpath, and liboflua.a with `--static`).
set -euo pipefail
cmake=$1 build=$2 sanitize=${3:-OFF}
src=$(cd "$(dirname "$0")/.." && pwd)
extra=()
asan=0
case "$sanitize" in ON|on|1|TRUE|true) extra=(-fsanitize=address,undefined); asan=1 ;; esac
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
libdir=$(sed -n 's/^libdir=${prefix}\///p' "$(find "$prefix" -name oflua.pc | head -1)")

# The standard layout: Lua files under share/lua/5.4, C modules under <libdir>/lua/5.4.
for f in share/lua/5.4/ofauth/init.lua share/lua/5.4/oflua/cliutil.lua \
         "$libdir"/lua/5.4/oflua/{core,crypto,http,server,store}.so \
         include/oflua.h "$libdir"/pkgconfig/oflua.pc "$libdir"/liboflua.a bin/oflua \
         share/man/man1/oflua.1 share/bash-completion/completions/oflua share/doc/oflua/LICENSE; do
  test -f "$prefix/$f" || { echo "install: missing $f" >&2; exit 1; }
done
if find "$prefix" -name 'oflua_*.so' | grep -q .; then echo "install: old side-object names" >&2; exit 1; fi

bin="$prefix/bin/oflua"
out=$(cd / && env -u OFLUA_PATH "$bin" -e 'print(require("oflua.core").lua_dir)')
case "$out" in "$prefix"/*) ;; *) echo "installed binary uses Lua tree '$out', not under $prefix" >&2; exit 1 ;; esac
(cd / && "$bin" version >/dev/null)
(cd / && "$bin" -e 'for _, m in ipairs{"oflua.crypto","oflua.http","oflua.server","oflua.store"} do require(m) end')
# Relocatable: the tree still works once moved elsewhere.
mv "$prefix" "$prefix.moved" && ln -s /nonexistent "$prefix"
(cd / && env -u OFLUA_PATH "$prefix.moved/bin/oflua" -e 'require("oflua.store"); require("ofauth")')
rm "$prefix" && mv "$prefix.moved" "$prefix"

# Plain lua5.4 with LUA_PATH/LUA_CPATH at the tree: every module, a webhook
# verified, a store, the emulator served over HTTP.
if [ "$asan" = 1 ]; then
  echo "install: plain lua5.4 part skipped (ASan-instrumented modules need an ASan interpreter)"
elif command -v lua5.4 >/dev/null; then
  export LUA_PATH="$prefix/share/lua/5.4/?.lua;$prefix/share/lua/5.4/?/init.lua;;"
  export LUA_CPATH="$prefix/$libdir/lua/5.4/?.so;;"
  work=$(mktemp -d); (cd / && timeout 60 lua5.4 "$src/spec/support/plain_lua_smoke.lua" "$work"); rm -rf "$work"
  (cd / && timeout 60 lua5.4 "$src/spec/support/plain_lua_modules.lua" "$prefix/share/lua/5.4")
  unset LUA_PATH LUA_CPATH
else
  echo "install: lua5.4 not installed, plain-Lua part skipped" >&2; exit 1
fi

pcdir="$prefix/$libdir/pkgconfig"
pc() { PKG_CONFIG_PATH="$pcdir" pkg-config "$@" oflua; }
case "$(pc --cflags --libs)" in *..*) echo "install: oflua.pc paths not normalised: $(pc --cflags --libs)" >&2; exit 1 ;; esac
cat >"$prefix/embed.c" <<'C'
#include <oflua.h>
#include <stdio.h>
int main(void) {
  char err[256];
  oflua_runtime *rt = oflua_open(NULL, err, sizeof err);
  if (!rt || oflua_run_string(rt, "assert(require('cjson')); assert(require('oflua.crypto').sha256('x'))", NULL, err, sizeof err) != OFLUA_OK) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  oflua_close(rt);
  puts("embed: ok");
  return 0;
}
C
# The documented one-liner: shared liboflua found through an rpath.
# shellcheck disable=SC2046
cc "${extra[@]}" -o "$prefix/embed" "$prefix/embed.c" $(pc --cflags --libs) -Wl,-rpath,"$(pc --variable=libdir)"
(cd / && env -u LD_LIBRARY_PATH "$prefix/embed")
# Static liboflua with its direct dependencies from --static (no -lzstd & co).
# shellcheck disable=SC2046
cc "${extra[@]}" -o "$prefix/embed_static" "$prefix/embed.c" $(pc --cflags) \
  $(pc --static --libs | sed 's/-loflua/-l:liboflua.a/')
(cd / && "$prefix/embed_static")
if ldd "$prefix/embed_static" | grep -q liboflua; then echo "install: embed_static uses liboflua.so" >&2; exit 1; fi
# The uninstall target removes every installed file.
"$cmake" --build "$build" --target uninstall >/dev/null
left=$(find "$prefix" -type f ! -name 'embed*')
if [ -n "$left" ]; then echo "install: uninstall left: $left" >&2; exit 1; fi
echo "install: ok"
