#!/usr/bin/env bash
# ctest "luarocks": `luarocks make` of rockspecs/oflua-*.rockspec from a copy of
# the checkout into a temporary tree, offline (Debian's lua-cjson is not a
# rock: --deps-mode=none), then every module under plain lua5.4 from that
# tree and the tree's `oflua` binary.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
command -v luarocks >/dev/null || { echo "luarocks: not installed (apt-get install luarocks)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The checkout's files (tracked or not, never build directories).
(cd "$src" && tar cf - --exclude='./build*' --exclude='./.git' .) | (mkdir "$work/src" && cd "$work/src" && tar xf -)
rockspec=$(cd "$work/src" && ls rockspecs/oflua-*.rockspec | sort -V | tail -1)
tree="$work/tree"
(cd "$work/src" && timeout 600 luarocks --lua-version 5.4 --tree "$tree" make --deps-mode=none "$rockspec" >"$work/make.log" 2>&1) \
  || { cat "$work/make.log" >&2; echo "luarocks make failed" >&2; exit 1; }
luarocks --lua-version 5.4 --tree "$tree" list | grep -q '^oflua$' || { echo "oflua not listed in the tree" >&2; exit 1; }
eval "$(luarocks --lua-version 5.4 --tree "$tree" path)"
(cd / && timeout 60 lua5.4 "$src/spec/support/plain_lua_modules.lua" "$tree/share/lua/5.4")
(cd / && timeout 60 lua5.4 "$src/spec/support/plain_lua_smoke.lua" "$work")
out=$(cd / && env -u OFLUA_PATH "$tree/bin/oflua" -e 'require("oflua.store"); print(require("oflua.core").lua_dir)')
[ "$out" = "$tree/share/lua/5.4" ] || { echo "tree binary uses Lua tree '$out'" >&2; exit 1; }
echo "luarocks: ok"
