# Startup: `oflua -e ''` vs `lua5.4 -e ''`, hyperfine in one run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
json=$(mktemp)
hyperfine -N --warmup 20 --runs 300 --export-json "$json" \
  "$OFLUA_BIN -e ''" "lua5.4 -e ''" >&2
read -r ours theirs < <("$OFLUA_BIN" - "$json" <<'LUA'
  local d = require("cjson").decode(io.open(arg[1]):read("a"))
  print(d.results[1].mean * 1e3, d.results[2].mean * 1e3)
LUA
)
rm -f "$json"
result "startup (oflua -e '')" "$ours" ms "lua5.4 -e ''" "$theirs" le 2
