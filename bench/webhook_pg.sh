# The durable webhook path on PostgreSQL beside the same on SQLite: a
# server running ofauth.webhooks.app over oflua.store with the app's defaults
# (group-commit insert, no-op handlers run from the tick, 2 workers) with
# OFLUA's store on a SQLite file, then on a
# throwaway PostgreSQL cluster on 127.0.0.1 (scripts/with-postgres, fsync on:
# each commit is flushed, PostgreSQL's default), and on the same cluster with
# synchronous_commit=off for the database (commits survive a crash of the
# processes, not of the machine: what SQLite's synchronous=NORMAL in WAL mode
# promises). Same signed pools (unique
# ids), same wrk load (-t2 -c50, bench/wrk/webhook.lua); rounds alternate and
# the best counts. The PostgreSQL server shares the machine's 2 cores with
# the receivers and wrk. Kept apart from bench/webhook.sh (its own file, its
# own rows).
#   BENCH_WEBHOOK_SECONDS (5) wrk duration, BENCH_WEBHOOK_ROUNDS (2) rounds
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -z "${OFLUA_TEST_PG_URL:-}" ]; then
  OFLUA_PG_FSYNC=on exec "$root/scripts/with-postgres" bash "$0" "$@"
fi
source "$here/lib.sh"
WORKERS=2
SECS=${BENCH_WEBHOOK_SECONDS:-5}
ROUNDS=${BENCH_WEBHOOK_ROUNDS:-2}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

export BENCH_SECRET BENCH_STORE_KEY
BENCH_SECRET=$("$OFLUA_BIN" -e 'print(require("ofauth.webhooks").new_secret())')
BENCH_STORE_KEY=$("$OFLUA_BIN" -e 'print(require("oflua.store").keygen())')

pool() { # pool FILE COUNT PREFIX: signed deliveries with unique ids
  "$OFLUA_BIN" - "$1" "$2" "$3" <<'LUA'
local out, count, prefix = ...
local cjson = require("cjson")
local webhooks = require("ofauth.webhooks")
local t = math.floor(require("oflua.core").now()) + 60
local f = assert(io.open(out, "wb"))
for i = 1, tonumber(count) do
  local id = ("msg_%s_%d"):format(prefix, i)
  local body = cjson.encode({ eventType = "connection.updated", live = false, data = {
    clientReferenceId = "user_" .. i, connection = { id = "conn_bench" .. i, platformUserId = tostring(i),
    status = "active", permissions = { "profile", "subscribers" },
    userData = { userId = tostring(i), name = "Creator " .. i, username = "creator_" .. i } } } })
  local h = webhooks.sign_svix(body, os.getenv("BENCH_SECRET"), id, t)
  f:write(id, "\t", h["svix-timestamp"], "\t", h["svix-signature"], "\t", body, "\n")
end
f:close()
LUA
}

cat >"$tmp/durable.lua" <<'LUA'
-- bench/webhook.sh's durable server; BENCH_STORE is a file or a postgresql:// URL
local webhooks = require("ofauth.webhooks")
local st = assert(require("oflua.store").open({ path = os.getenv("BENCH_STORE"),
  key = os.getenv("BENCH_STORE_KEY") }))
local app = webhooks.app({ secret = os.getenv("BENCH_SECRET"), store = st })
app:on("*", function() end)
local r = require("oflua.router").new()
r:post("/webhooks/ofauth", app:handler())
-- the app's default: group-commit insert, handlers from the tick (background)
return { handler = r, tick = app:tick(), tick_interval = app.tick_interval }
LUA

db_n=0
start() { # start NAME: a fresh store, a server; sets url
  local name=$1 target
  db_n=$((db_n + 1))
  if [ "$name" = sqlite ]; then
    target="$tmp/sqlite$db_n.db"
  else
    psql "$OFLUA_TEST_PG_URL" -qAtX -c "CREATE DATABASE bench$db_n" >/dev/null
    if [ "$name" = pg_async ]; then
      psql "$OFLUA_TEST_PG_URL" -qAtX -c "ALTER DATABASE bench$db_n SET synchronous_commit = off" >/dev/null
    fi
    target="${OFLUA_TEST_PG_URL%/*}/bench$db_n"
  fi
  BENCH_STORE="$target" OFAUTH_LOG=warn "$OFLUA_BIN" serve "$tmp/durable.lua" --port 0 \
    --workers "$WORKERS" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do [ -s "$tmp/$name.out" ] && break; sleep 0.05; done
  url=$(sed -n 's/^listening on //p' "$tmp/$name.out")
  [ -n "$url" ] || { echo "bench/webhook_pg: $name did not start: $(cat "$tmp/$name.err")" >&2; exit 1; }
}

run_wrk() { # run_wrk URL POOL -> "rps p99_ms requests non2xx"
  WEBHOOK_POOL="$2" WEBHOOK_THREADS=2 wrk -t2 -c50 -d"$SECS"s --latency \
    -s "$here/wrk/webhook.lua" "$1" | awk '
    /Requests\/sec/ { rps = $2 }
    /^ +99%/ { v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      p99 = v }
    / requests in / { n = $1 }
    /Non-2xx or 3xx responses/ { bad = $5 }
    END { printf "%s %s %s %s\n", rps, p99, n, bad + 0 }'
}

echo "bench/webhook_pg: load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for name in sqlite postgresql pg_async; do
    size=$((SECS * 30000))
    pool "$tmp/pool.tsv" "$size" "$name$round"
    start "$name"
    read -r rps p99 n bad < <(run_wrk "$url" "$tmp/pool.tsv")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    echo "bench/webhook_pg: round $round durable on $name: $rps req/s, p99 $p99 ms ($n requests, $bad not 2xx)"
    [ "$bad" = 0 ] || echo "bench/webhook_pg: $name answered $bad requests with an error" >&2
    if [ "$n" -gt "$size" ]; then # duplicates were sent: not the durable path any more
      echo "bench/webhook_pg: round $round $name ran out of unique deliveries; not counted" >&2
      continue
    fi
    cur=$(cat "$tmp/$name.best" 2>/dev/null || echo "0 0")
    if awk -v a="$rps" -v b="${cur%% *}" 'BEGIN { exit !(a > b) }'; then echo "$rps $p99" >"$tmp/$name.best"; fi
  done
done
echo "bench/webhook_pg: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
for name in sqlite postgresql pg_async; do [ -f "$tmp/$name.best" ] || echo "0 0" >"$tmp/$name.best"; done
read -r sq_rps sq_p99 <"$tmp/sqlite.best"
read -r pg_rps pg_p99 <"$tmp/postgresql.best"
read -r pga_rps pga_p99 <"$tmp/pg_async.best"
result "webhook durable path on PostgreSQL req/s vs the same on SQLite" "$pg_rps" "req/s" \
  "oflua durable path on SQLite (WAL, synchronous=NORMAL)" "$sq_rps"
result "webhook durable path on PostgreSQL p99 vs the same on SQLite" "$pg_p99" "ms" \
  "oflua durable path on SQLite (WAL, synchronous=NORMAL)" "$sq_p99"
result "webhook durable path on PostgreSQL, synchronous_commit=off, req/s vs SQLite" "$pga_rps" "req/s" \
  "oflua durable path on SQLite (WAL, synchronous=NORMAL)" "$sq_rps"
