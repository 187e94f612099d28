# Server: `oflua serve` with a handler returning "ok" vs (a) a bare C
# libmicrohttpd server with the same thread settings and (b) a Node.js http
# cluster with the same worker count; wrk -t2 -c50 --latency on 127.0.0.1.
# Also: idle RSS with 2 workers, and RSS growth from 10,000 to 200,000
# requests. Rounds alternate between servers; the best round counts.
# Progress lines go to stdout (scripts/bench shows non-RESULT lines).
#   BENCH_SERVER_SECONDS (5) wrk duration, BENCH_SERVER_ROUNDS (2) rounds
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
root=$(dirname "$here")
WORKERS=2
SECS=${BENCH_SERVER_SECONDS:-5}
ROUNDS=${BENCH_SERVER_ROUNDS:-2}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck disable=SC2046
gcc -O2 -o "$tmp/mhd_ok" "$here/peers/mhd_ok.c" $(pkg-config --cflags --libs libmicrohttpd)

# wait_for FILE: until FILE has a line (10 s at most)
wait_for() {
  for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done
  echo "bench/server: $1 stayed empty" >&2
  return 1
}

# bench_wrk URL SECONDS -> "requests_per_s p99_ms requests"
bench_wrk() {
  wrk -t2 -c50 -d"$2"s --latency "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      p99 = v }
    / requests in / { n = $1 }
    END { printf "%s %s %s\n", rps, p99, n }'
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- start the three servers ----
"$OFLUA_BIN" serve "$root/spec/fixtures/servers/hello.lua" --port 0 --workers "$WORKERS" \
  >"$tmp/oflua.out" 2>"$tmp/oflua.err" &
oflua_pid=$!
pids+=("$oflua_pid")
"$tmp/mhd_ok" "$WORKERS" >"$tmp/mhd.out" &
pids+=($!)
node "$here/peers/node_ok.js" "$WORKERS" >"$tmp/node.out" &
pids+=($!)
wait_for "$tmp/oflua.out"
wait_for "$tmp/mhd.out"
wait_for "$tmp/node.out"
oflua_url="$(sed -n 's/^listening on //p' "$tmp/oflua.out")/"
mhd_url="http://127.0.0.1:$(head -1 "$tmp/mhd.out")/"
node_url="http://127.0.0.1:$(head -1 "$tmp/node.out")/"
for u in "$oflua_url" "$mhd_url" "$node_url"; do
  [ "$(curl -s --max-time 5 "$u")" = "ok" ] || { echo "bench/server: $u does not answer ok" >&2; exit 1; }
done

sleep 0.5
idle_kb=$(rss_kb "$oflua_pid")

# ---- first 10,000 requests (warm-up), RSS ----
served=3
while [ "$served" -lt 10000 ]; do
  read -r _ _ n < <(bench_wrk "$oflua_url" 1)
  served=$((served + n))
done
rss_10k=$(rss_kb "$oflua_pid")
bench_wrk "$mhd_url" 1 >/dev/null
bench_wrk "$node_url" 1 >/dev/null

# ---- throughput and p99, alternating, best round ----
best() { # best NAME rps p99: keep the highest rps (and its p99)
  local name=$1 rps=$2 p99=$3 cur
  cur=$(cat "$tmp/$name.best" 2>/dev/null || echo "0 0")
  if awk -v a="$rps" -v b="${cur%% *}" 'BEGIN { exit !(a > b) }'; then
    echo "$rps $p99" >"$tmp/$name.best"
  fi
}
for round in $(seq "$ROUNDS"); do
  for name in oflua mhd node; do
    url_var="${name}_url"
    read -r rps p99 n < <(bench_wrk "${!url_var}" "$SECS")
    echo "bench/server: round $round $name: $rps req/s, p99 $p99 ms ($n requests)"
    best "$name" "$rps" "$p99"
    if [ "$name" = oflua ]; then served=$((served + n)); fi
  done
done
read -r oflua_rps oflua_p99 <"$tmp/oflua.best"
read -r mhd_rps mhd_p99 <"$tmp/mhd.best"
read -r node_rps node_p99 <"$tmp/node.best"

# ---- up to 200,000 requests, RSS ----
while [ "$served" -lt 200000 ]; do
  read -r _ _ n < <(bench_wrk "$oflua_url" 2)
  served=$((served + n))
done
rss_200k=$(rss_kb "$oflua_pid")
echo "bench/server: RSS idle ${idle_kb} kB, after 10k ${rss_10k} kB, after ${served} requests ${rss_200k} kB"

# ---- graceful stop ----
kill -TERM "$oflua_pid"
if ! wait "$oflua_pid"; then echo "bench/server: oflua serve did not exit 0 on SIGTERM" >&2; fi

kb_to_mb() { awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }
result "server req/s (hello, 2 workers)" "$oflua_rps" "req/s" "libmicrohttpd C (mhd_ok.c)" "$mhd_rps" ge 0.7
result "server req/s vs node (hello, 2 workers)" "$oflua_rps" "req/s" "node http cluster (node_ok.js)" "$node_rps" ge 1.5
result "server p99 latency vs libmicrohttpd" "$oflua_p99" "ms" "libmicrohttpd C (mhd_ok.c)" "$mhd_p99"
result "server p99 latency vs node" "$oflua_p99" "ms" "node http cluster (node_ok.js)" "$node_p99"
result "server idle RSS (2 workers)" "$(kb_to_mb "$idle_kb")" "MB" "limit" 15 le 1
result "server RSS after 200k requests" "$(kb_to_mb "$rss_200k")" "MB" "RSS after 10k requests" "$(kb_to_mb "$rss_10k")" le 1.2
