# oflua.http: keep-alive request rate against a plain C libcurl loop, and
# request_many against sequential requests. Local fixture server on 127.0.0.1
# (build/http_fixture_server: one thread per connection, keep-alive), which
# stops by itself after 120 s and is killed on exit.
#   1. 10,000 sequential GETs on one kept-alive connection:
#      oflua http.request loop vs bench/peers/curl_loop.c      target >= 0.8
#   2. 16 requests to a server that answers after 20 ms:
#      http.request_many vs 16 sequential http.request        target >= 8x
# Each figure is the best of several interleaved runs (the machine is shared
# and noisy). The C peer sets the options oflua.http sets by default
# (User-Agent, timeouts, size limit), so both make the same request.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
src=$(cd "$(dirname "$0")/.." && pwd)
build=${OFLUA_BUILD_DIR:-$src/build}
N=${HTTP_BENCH_N:-10000}

peer="$build/bench_curl_loop"
cc -O2 -o "$peer" "$src/bench/peers/curl_loop.c" $(pkg-config --cflags --libs libcurl)

out=$(mktemp)
"$build/http_fixture_server" 120 >"$out" &
srv=$!
trap 'kill $srv 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
port=$(cut -d' ' -f1 "$out")
url="http://127.0.0.1:$port"

ours_lua=$(mktemp)
cat >"$ours_lua" <<'LUA'
  local http, core = require("oflua.http"), require("oflua.core")
  local url, n = arg[1], tonumber(arg[2])
  local req = { url = url }
  for _ = 1, 100 do assert(http.request(req).status == 200) end
  local t0 = core.monotonic()
  for _ = 1, n do
    local r = http.request(req)
    if not r or r.status ~= 200 then error("request failed") end
  end
  print(("%.1f"):format(n / (core.monotonic() - t0)))
LUA
# Interleaved runs, best of each: background load hits both sides alike.
ours=0 theirs=0
for _ in 1 2 3 4 5; do
  o=$("$OFLUA_BIN" "$ours_lua" "$url/hello" "$N")
  t=$("$peer" "$url/hello" "$N")
  ours=$(echo "$ours $o" | awk '{print ($2 > $1) ? $2 : $1}')
  theirs=$(echo "$theirs $t" | awk '{print ($2 > $1) ? $2 : $1}')
done
rm -f "$ours_lua"
echo "keep-alive GET: oflua $ours req/s, C libcurl loop $theirs req/s" >&2
result "http keep-alive GET x$N" "$ours" req/s "C libcurl easy loop" "$theirs" ge 0.8

read -r par seq < <("$OFLUA_BIN" - "$url/delay/20" <<'LUA'
  local http, core = require("oflua.http"), require("oflua.core")
  local url = arg[1]
  local reqs = {}
  for i = 1, 16 do reqs[i] = { url = url } end
  http.request_many(reqs) -- warm up: open the 16 connections
  local best_par, best_seq = math.huge, math.huge
  for _ = 1, 3 do
    local t0 = core.monotonic()
    for _, r in ipairs(http.request_many(reqs)) do assert(r.response.status == 200) end
    best_par = math.min(best_par, core.monotonic() - t0)
    t0 = core.monotonic()
    for i = 1, 16 do assert(http.request(reqs[i]).status == 200) end
    best_seq = math.min(best_seq, core.monotonic() - t0)
  end
  print(("%.1f %.1f"):format(16 / best_par, 16 / best_seq))
LUA
)
echo "16 x 20 ms: request_many $par req/s, sequential $seq req/s" >&2
result "http request_many 16 x 20ms" "$par" req/s "sequential http.request" "$seq" ge 8
