#!/usr/bin/env bash
# ctest "package": the Debian package as scripts/package makes it (prefix
# /usr, cpack -G DEB), built in a temporary directory: its Depends, its
# contents (binary, library, header, pkg-config file, Lua tree, native
# modules, man page, completion, docs), and its binary run from the
# extracted tree.
set -euo pipefail
cmake=$1
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DOFLUA_BUILD_TESTS=OFF >/dev/null
"$cmake" --build "$work/build" -j 2 >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
(cd "$work/build" && cpack -G DEB -B "$work/out" >"$work/cpack.log" 2>&1) || { cat "$work/cpack.log" >&2; exit 1; }
deb=$(ls "$work"/out/oflua_*.deb)
fail() { echo "package: $*" >&2; exit 1; }

depends=$(dpkg-deb -f "$deb" Depends)
for d in libcurl4 libmicrohttpd12 libssl3 libsqlite3-0 liblua5.4-0 lua-cjson; do
  case ", $depends" in *", $d"*) ;; *) fail "Depends lacks $d: $depends" ;; esac
done
# Whatever the modules link (libpq once the PostgreSQL backend is in) is a dependency.
if ldd "$work"/build/lua/oflua/store.so | grep -q 'libpq\.so'; then
  case "$depends" in *libpq5*) ;; *) fail "store.so links libpq but Depends lacks libpq5" ;; esac
fi

ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
contents=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
for f in /usr/bin/oflua /usr/include/oflua.h "/usr/lib/$ma/liboflua.so.0" "/usr/lib/$ma/liboflua.a" \
         "/usr/lib/$ma/pkgconfig/oflua.pc" /usr/share/lua/5.4/ofauth/init.lua \
         /usr/share/lua/5.4/oflua/cli/serve.lua /usr/share/man/man1/oflua.1 \
         /usr/share/bash-completion/completions/oflua /usr/share/doc/oflua/LICENSE; do
  printf '%s\n' "$contents" | grep -qx "$f" || fail "missing $f"
done
for m in core crypto http server store; do
  printf '%s\n' "$contents" | grep -qx "/usr/lib/$ma/lua/5.4/oflua/$m.so" || fail "missing module $m"
done
if printf '%s\n' "$contents" | grep -q '^/usr/local/'; then fail "files under /usr/local"; fi

root="$work/root"
dpkg-deb -x "$deb" "$root"
grep -qx 'prefix=/usr' "$root/usr/lib/$ma/pkgconfig/oflua.pc" || fail "oflua.pc prefix is not /usr"
# The extracted binary finds its own tree (relocatable), modules included.
out=$(cd / && env -u OFLUA_PATH -u OFLUA_MODULE_DIR "$root/usr/bin/oflua" -e '
  for _, m in ipairs{"oflua.crypto","oflua.http","oflua.server","oflua.store","ofauth"} do require(m) end
  print(require("oflua.core").lua_dir)')
[ "$out" = "$root/usr/share/lua/5.4" ] || fail "extracted binary uses Lua tree '$out'"
# (outputs captured first: grep -q would close the pipe early under pipefail)
v=$(cd / && "$root/usr/bin/oflua" version)
case "$v" in "oflua "*) ;; *) fail "oflua version: $v" ;; esac
help=$(cd / && "$root/usr/bin/oflua" help webhook trigger)
case "$help" in *--wait*) ;; *) fail "help webhook trigger lacks --wait" ;; esac
man=$(MANWIDTH=80 man -l "$root/usr/share/man/man1/oflua.1" 2>/dev/null)
case "$man" in *"oflua webhook trigger"*) ;; *) fail "man page does not render the commands" ;; esac
echo "package: ok ($(basename "$deb"), Depends: $depends)"
