# Webhooks: receiving Svix-signed deliveries on 127.0.0.1, 2 workers each.
#   oflua verify   `oflua serve` with a handler doing ofauth.webhooks.verify
#                  (signature, timestamp, JSON parse) and answering
#   oflua durable  ofauth.webhooks.app over oflua.store (SQLite, group
#                  commit): verify, dedupe, encrypted inbox insert, 200; a
#                  no-op handler run from the inbox by the app's tick (the
#                  default, process = "background")
#   oflua inline   the same with process = "inline": the handler runs, and
#                  its done mark is queued, before the 200
#   mhd            bench/peers/mhd_webhook.c: libmicrohttpd + OpenSSL HMAC +
#                  cJSON parse, nothing else (the ceiling of this stack)
#   openresty      bench/peers/openresty_webhook.conf: nginx + ngx_http_lua
#                  (LuaJIT), HMAC through the FFI, cjson.safe (the strongest
#                  Lua-extended peer); skipped with a note when nginx or its
#                  Lua module is missing (scripts/bootstrap --bench installs them)
#   node           bench/peers/node_webhook.js: http cluster, crypto HMAC,
#                  JSON.parse (what most integrators write)
# Load: wrk -t2 -c50 --latency with bench/wrk/webhook.lua, which sends
# deliveries signed beforehand by oflua (fresh timestamps; unique ids for the
# durable path), then a run with bad signatures (rejections). Rounds
# alternate between servers; the best round counts. Prints the load average
# (the machine is shared). Progress lines go to stdout.
#   BENCH_WEBHOOK_SECONDS (5) wrk duration, BENCH_WEBHOOK_ROUNDS (2) rounds
set -euo pipefail
[ -n "${BENCH_DEBUG:-}" ] && set -x
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
root=$(dirname "$here")
WORKERS=2
SECS=${BENCH_WEBHOOK_SECONDS:-5}
ROUNDS=${BENCH_WEBHOOK_ROUNDS:-2}
THREADS=2
CONNS=50

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

secret=$("$OFLUA_BIN" -e 'print(require("ofauth.webhooks").new_secret())')
store_key=$("$OFLUA_BIN" -e 'print(require("oflua.store").keygen())')
export BENCH_SECRET=$secret

# shellcheck disable=SC2046
gcc -O2 -o "$tmp/mhd_webhook" "$here/peers/mhd_webhook.c" \
  $(pkg-config --cflags --libs libmicrohttpd libcrypto libcjson)
have_openresty=
if command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] &&
  [ -f /usr/share/lua/5.1/resty/core.lua ]; then
  have_openresty=1
else
  echo "bench/webhook: nginx + libnginx-mod-http-lua + lua-resty-core missing: no OpenResty peer (scripts/bootstrap --bench)"
fi

# ---- request pools (signed by oflua; timestamps now + 60 s: valid for 6 min) ----
# pool FILE COUNT good|bad PREFIX
pool() {
  "$OFLUA_BIN" - "$1" "$2" "$3" "$4" <<'LUA'
local out, count, kind, prefix = ...
local cjson = require("cjson")
local webhooks = require("ofauth.webhooks")
local secret = os.getenv("BENCH_SECRET")
local wrong = webhooks.new_secret()
local t = math.floor(require("oflua.core").now()) + 60
local f = assert(io.open(out, "wb"))
for i = 1, tonumber(count) do
  local id = ("msg_%s_%d"):format(prefix, i)
  local body = cjson.encode({ eventType = "connection.updated", live = false, data = {
    clientReferenceId = "user_" .. i, connection = { id = "conn_bench" .. i, platformUserId = tostring(i),
    status = "active", permissions = { "profile", "subscribers" },
    userData = { userId = tostring(i), name = "Creator " .. i, username = "creator_" .. i } } } })
  local h = webhooks.sign_svix(body, kind == "good" and secret or wrong, id, t)
  f:write(id, "\t", h["svix-timestamp"], "\t", h["svix-signature"], "\t", body, "\n")
end
f:close()
LUA
}
pool "$tmp/good.tsv" 2000 good verify
pool "$tmp/bad.tsv" 2000 bad bad
body_bytes=$(head -1 "$tmp/good.tsv" | cut -f4 | wc -c)

# ---- servers ----
cat >"$tmp/verify.lua" <<'LUA'
-- verify + parse + answer (the oflua counterpart of the peers)
local webhooks = require("ofauth.webhooks")
local secret = os.getenv("BENCH_SECRET")
local ok_body, hdr = '{"ok":true}', { ["content-type"] = "application/json" }
return function(req)
  if req.method ~= "POST" then return 405, '{"error":"method_not_allowed"}', hdr end
  local event, why = webhooks.verify(req.body, req.headers, secret)
  if not event then return webhooks.reasons[why] or 400, '{"error":"' .. why .. '"}', hdr end
  return 200, ok_body, hdr
end
LUA
cat >"$tmp/durable.lua" <<'LUA'
-- the full durable path: ofauth.webhooks.app over oflua.store, no-op handler
local webhooks = require("ofauth.webhooks")
local st = assert(require("oflua.store").open({ path = os.getenv("BENCH_STORE"),
  key = os.getenv("BENCH_STORE_KEY") }))
local mode = os.getenv("BENCH_PROCESS") or "background"
local app = webhooks.app({ secret = os.getenv("BENCH_SECRET"), store = st, process = mode })
app:on("*", function() end)
local r = require("oflua.router").new()
r:post("/webhooks/ofauth", app:handler())
if mode == "background" then -- the default: handlers run in the tick VM, in batches
  return { handler = r, tick = app:tick(), tick_interval = app.tick_interval }
end
return r
LUA

wait_for() {
  for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done
  echo "bench/webhook: $1 stayed empty" >&2
  return 1
}

# OFAUTH_LOG=warn: no info line per accepted delivery (the peers log nothing)
OFAUTH_LOG=warn "$OFLUA_BIN" serve "$tmp/verify.lua" --port 0 --workers "$WORKERS" \
  >"$tmp/oflua.out" 2>"$tmp/oflua.err" &
oflua_pid=$!
pids+=($!)
"$tmp/mhd_webhook" "$WORKERS" >"$tmp/mhd.out" &
mhd_pid=$!
pids+=($!)
node "$here/peers/node_webhook.js" "$WORKERS" >"$tmp/node.out" &
node_pid=$!
pids+=($!)
peers=(oflua mhd node)
if [ -n "$have_openresty" ]; then
  # nginx binds the port itself (reuseport, one socket per worker): take a
  # free one from the kernel first. Its own prefix, pid file and logs in $tmp;
  # daemon off, so the PID we keep is the master's and SIGTERM stops it.
  or_port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
  mkdir -p "$tmp/openresty/logs"
  sed -e "s|@DIR@|$tmp/openresty|g" -e "s|@PORT@|$or_port|g" -e "s|@WORKERS@|$WORKERS|g" \
    "$here/peers/openresty_webhook.conf" >"$tmp/openresty/nginx.conf"
  nginx -p "$tmp/openresty" -c "$tmp/openresty/nginx.conf" -e "$tmp/openresty/error.log" \
    >"$tmp/openresty.out" 2>&1 &
  openresty_pid=$!
  pids+=($!)
  openresty_url="http://127.0.0.1:$or_port"
  for _ in $(seq 100); do curl -s -o /dev/null "$openresty_url/" && break; sleep 0.05; done
  peers+=(openresty)
fi
wait_for "$tmp/oflua.out"
wait_for "$tmp/mhd.out"
wait_for "$tmp/node.out"
oflua_url="$(sed -n 's/^listening on //p' "$tmp/oflua.out")"
mhd_url="http://127.0.0.1:$(head -1 "$tmp/mhd.out")"
node_url="http://127.0.0.1:$(head -1 "$tmp/node.out")"

# durable (the default: handlers in the tick) and inline (handlers before
# the answer): a fresh
# store per round (deliveries must be new to it)
durable_pid=
durable_url=
inline_pid=
inline_url=
start_durable() { # start_durable NAME MODE
  local name=$1 mode=$2 pid_var="${1}_pid" url_var="${1}_url"
  if [ -n "${!pid_var}" ]; then kill -TERM "${!pid_var}"; wait "${!pid_var}" 2>/dev/null || true; fi
  rm -f "$tmp/$name.out" "$tmp/$name".db*
  BENCH_STORE="$tmp/$name.db" BENCH_STORE_KEY="$store_key" BENCH_PROCESS="$mode" OFAUTH_LOG=warn \
    "$OFLUA_BIN" serve "$tmp/durable.lua" --port 0 --workers "$WORKERS" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  printf -v "$pid_var" '%s' "$!"
  pids+=("${!pid_var}")
  wait_for "$tmp/$name.out"
  printf -v "$url_var" '%s' "$(sed -n 's/^listening on //p' "$tmp/$name.out")"
}
start_durable durable background
start_durable inline inline

# one good and one bad delivery to each: right answers before measuring
check() { # check URL POOL STATUS
  local line f status
  line=$(head -1 "$2")
  f() { printf '%s' "$line" | cut -f"$1"; }
  status=$(printf '%s' "$(f 4)" | curl -s -o "$tmp/check.out" -w '%{http_code}' --max-time 5 \
    -H "Content-Type: application/json" -H "svix-id: $(f 1)" -H "svix-timestamp: $(f 2)" \
    -H "svix-signature: $(f 3)" --data-binary @- "$1/webhooks/ofauth")
  if [ "$status" != "$3" ]; then
    echo "bench/webhook: $1 answered $status ($(cat "$tmp/check.out")), expected $3" >&2
    exit 1
  fi
}
for name in "${peers[@]}" durable inline; do
  url_var="${name}_url"
  check "${!url_var}" "$tmp/good.tsv" 200
  check "${!url_var}" "$tmp/bad.tsv" 401
done
start_durable durable background
start_durable inline inline

# bench_wrk URL POOL SECONDS -> "requests_per_s p99_ms requests non2xx wrapped"
# (wrapped = 1 when a wrk thread ran through its share of the pool and sent
# deliveries again)
bench_wrk() {
  WEBHOOK_POOL="$2" WEBHOOK_THREADS=$THREADS wrk -t$THREADS -c$CONNS -d"$3"s --latency \
    -s "$here/wrk/webhook.lua" "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      p99 = v }
    / requests in / { n = $1 }
    /Non-2xx or 3xx responses/ { bad = $5 }
    /^POOL WRAPPED/ { wrapped = 1 }
    END { printf "%s %s %s %s %s\n", rps, p99, n, bad + 0, wrapped + 0 }'
}

# CPU time (utime + stime, clock ticks) of a server: the process (all its
# threads) and its direct children (node's and nginx's workers). Divided by
# the requests served it gives CPU per request, which a busy shared machine
# disturbs far less than requests per second.
cpu_ticks() {
  local total=0 p t
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
least_cpu() { # least_cpu NAME TICKS REQUESTS: keep the lowest CPU us per request
  local us cur
  us=$(awk -v t="$2" -v n="$3" -v u="$tick_us" 'BEGIN { printf "%.2f", (n > 0 ? t * u / n : 0) }')
  cur=$(cat "$tmp/$1.cpu" 2>/dev/null || echo 0)
  if [ "$cur" = 0 ] || awk -v a="$us" -v b="$cur" 'BEGIN { exit !(a < b) }'; then echo "$us" >"$tmp/$1.cpu"; fi
  echo "$us"
}

best() { # best NAME rps p99: keep the highest rps (and its p99)
  local name=$1 rps=$2 p99=$3 cur
  cur=$(cat "$tmp/$name.best" 2>/dev/null || echo "0 0")
  if awk -v a="$rps" -v b="${cur%% *}" 'BEGIN { exit !(a > b) }'; then
    echo "$rps $p99" >"$tmp/$name.best"
  fi
}

# warm-up
for name in "${peers[@]}"; do url_var="${name}_url"; bench_wrk "${!url_var}" "$tmp/good.tsv" 1 >/dev/null; done

echo "bench/webhook: load average before: $(cut -d' ' -f1-3 /proc/loadavg); body $body_bytes bytes"
for round in $(seq "$ROUNDS"); do
  # the durable path needs a delivery it has not seen for every request
  # (30k/s: far above the durable rate, so that no wrk thread runs out of
  # its share even when the machine favours one of them)
  pool "$tmp/durable.tsv" $((SECS * 30000)) good "r$round"
  if [ "$round" -gt 1 ]; then start_durable durable background; start_durable inline inline; fi
  for name in "${peers[@]}" durable inline; do
    url_var="${name}_url"
    p="$tmp/good.tsv"
    [ "$name" = durable ] || [ "$name" = inline ] && p="$tmp/durable.tsv"
    pid_var="${name}_pid"
    c0=$(cpu_ticks "${!pid_var}")
    read -r rps p99 n bad wrapped < <(bench_wrk "${!url_var}" "$p" "$SECS")
    if { [ "$name" = durable ] || [ "$name" = inline ]; } && [ "$wrapped" = 1 ]; then
      # duplicates are answered without a write: the round would flatter the durable path
      echo "bench/webhook: round $round $name: the pool ran out in a wrk thread (duplicates sent): round discarded" >&2
      continue
    fi
    cpu=$(least_cpu "$name" $(($(cpu_ticks "${!pid_var}") - c0)) "$n")
    echo "bench/webhook: round $round $name: $rps req/s, p99 $p99 ms, $cpu us CPU/request ($n requests, $bad not 2xx)"
    if [ "$bad" != 0 ]; then echo "bench/webhook: $name answered $bad requests with an error" >&2; fi
    best "$name" "$rps" "$p99"
  done
  for name in "${peers[@]}"; do
    url_var="${name}_url"
    pid_var="${name}_pid"
    c0=$(cpu_ticks "${!pid_var}")
    read -r rps p99 n bad _ < <(bench_wrk "${!url_var}" "$tmp/bad.tsv" "$SECS")
    cpu=$(least_cpu "${name}_bad" $(($(cpu_ticks "${!pid_var}") - c0)) "$n")
    echo "bench/webhook: round $round $name bad signatures: $rps req/s, p99 $p99 ms, $cpu us CPU/request ($n requests, $bad rejected)"
    if [ "$bad" != "$n" ]; then echo "bench/webhook: $name accepted a bad signature" >&2; fi
    best "${name}_bad" "$rps" "$p99"
  done
done
echo "bench/webhook: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
sleep 0.5 # the tick works on the backlog meanwhile (what is left shows as open)
for name in durable inline; do
  stats=$("$OFLUA_BIN" -e "local s = assert(require('oflua.store').open({path='$tmp/$name.db', key='$store_key'}))
    local t = s:inbox_stats(); print(t.total, t.done, t.pending + t.claimed, t.dead)")
  echo "bench/webhook: $name inbox after the last round (total done open dead): $stats"
done

for name in "${peers[@]}" durable inline oflua_bad mhd_bad node_bad ${have_openresty:+openresty_bad}; do
  read -r rps p99 < <(cat "$tmp/$name.best" 2>/dev/null || echo "0 0")
  printf -v "${name}_rps" '%s' "$rps"
  printf -v "${name}_p99" '%s' "$p99"
done

for name in "${peers[@]}" durable oflua_bad mhd_bad; do
  printf -v "${name}_cpu" '%s' "$(cat "$tmp/$name.cpu" 2>/dev/null || echo 0)"
done
mhd_peer="libmicrohttpd C + OpenSSL HMAC + cJSON (mhd_webhook.c)"
or_peer="OpenResty: nginx + ngx_http_lua, FFI HMAC, cjson.safe (openresty_webhook.conf)"
result "webhook verify+parse req/s vs libmicrohttpd+OpenSSL+cJSON" "$oflua_rps" "req/s" \
  "$mhd_peer" "$mhd_rps" ge 0.85
# CPU per request (server side, user + system, lowest round): lower is better
result "webhook verify+parse server CPU us/request vs libmicrohttpd+OpenSSL+cJSON" "$oflua_cpu" \
  "us" "$mhd_peer" "$mhd_cpu"
result "webhook bad-signature server CPU us/request vs libmicrohttpd+OpenSSL" "$oflua_bad_cpu" \
  "us" "$mhd_peer" "$mhd_bad_cpu"
result "webhook durable path server CPU us/request vs node verify+parse" "$durable_cpu" "us" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_cpu"
if [ -n "$have_openresty" ]; then
  result "webhook verify+parse server CPU us/request vs OpenResty" "$oflua_cpu" "us" "$or_peer" \
    "$openresty_cpu" le 1.0
  result "webhook verify+parse req/s vs OpenResty" "$oflua_rps" "req/s" "$or_peer" "$openresty_rps" ge 1.0
  result "webhook verify+parse p99 vs OpenResty" "$oflua_p99" "ms" "$or_peer" "$openresty_p99"
  result "webhook bad-signature rejections/s vs OpenResty" "$oflua_bad_rps" "req/s" \
    "$or_peer" "$openresty_bad_rps"
fi
result "webhook verify+parse req/s vs node" "$oflua_rps" "req/s" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_rps" ge 1.5
result "webhook durable path req/s vs node verify+parse" "$durable_rps" "req/s" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_rps" ge 1.0
result "webhook durable path, handlers inline, req/s vs node verify+parse" "$inline_rps" "req/s" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_rps" ge 1.0
result "webhook verify+parse p99 vs libmicrohttpd+OpenSSL+cJSON" "$oflua_p99" "ms" \
  "$mhd_peer" "$mhd_p99"
result "webhook verify+parse p99 vs node" "$oflua_p99" "ms" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_p99"
result "webhook durable path p99 vs node verify+parse" "$durable_p99" "ms" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_p99" le 2.0
result "webhook bad-signature rejections/s vs libmicrohttpd+OpenSSL" "$oflua_bad_rps" "req/s" \
  "$mhd_peer" "$mhd_bad_rps" ge 0.7
result "webhook bad-signature rejections/s vs node" "$oflua_bad_rps" "req/s" \
  "node http cluster + crypto + JSON.parse (node_webhook.js)" "$node_bad_rps"
