#!/usr/bin/env bash
# Renders docs/images/dashboard.png, the main panels of
# dashboard.json drawn from real samples: the example app
# (examples/webhook_receiver.lua under `oflua serve`) takes signed webhook
# deliveries from load.lua for DURATION seconds while its /metrics is scraped
# every second; gnuplot (Debian: gnuplot-nox) plots the same rates the
# Grafana panels compute. Loopback only; everything stops at the end.
#   examples/monitoring/figure.sh [OUT.png] [DURATION]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$root/docs/images/dashboard.png}")
duration=${2:-20}
bin=${OFLUA_BIN:-$root/build/oflua}
command -v gnuplot >/dev/null || { echo "figure: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

"$bin" store keygen --out store.key 2>/dev/null
export OFLUA_STORE=$work/app.db OFLUA_STORE_KEY_FILE=$work/store.key OFAUTH_LOG=off
export OFAUTH_API_KEY=sk_test_figure OFAUTH_BASE_URL=http://127.0.0.1:9   # the app calls no API here
OFAUTH_WEBHOOK_SECRET=$("$bin" -e 'print(require("ofauth.webhooks").new_secret())')
export OFAUTH_WEBHOOK_SECRET
"$bin" serve "$root/examples/webhook_receiver.lua" --port 0 --workers 2 --ready-file ready >serve.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s ready ] && break; sleep 0.1; done
[ -s ready ] || { cat serve.log >&2; exit 1; }
app=$(cat ready)

# Scrape /metrics every second: "<seconds since start> <series> <value>".
(
  start=$(date +%s.%N)
  while :; do
    now=$(date +%s.%N)
    curl -s --max-time 2 "$app/metrics" | awk -v t="$(echo "$now - $start" | bc)" '!/^#/ && NF == 2 {print t, $1, $2}'
    sleep 1
  done
) >samples.txt &
pids+=($!)
sleep 2
"$bin" "$here/load.lua" "$app/webhooks/ofauth" "$OFAUTH_WEBHOOK_SECRET" "$duration"
sleep 3

# Counters to per-second rates, one file per panel, columns per series.
rate() { # rate SERIES-REGEX... -> t r1 r2 ...
  awk -v pats="$*" '
    BEGIN { n = split(pats, p, " ") }
    { t = $1; for (i = 1; i <= n; i++) if ($2 ~ p[i]) v[t, i] = $3; if (!(t in ts)) { ts[t] = 1; times[++m] = t } }
    END {
      for (k = 2; k <= m; k++) {
        a = times[k - 1]; b = times[k]; line = b
        for (i = 1; i <= n; i++) line = line " " (v[b, i] - v[a, i]) / (b - a)
        print line
      }
    }' samples.txt
}
rate 'result="received"' 'result="accepted"' 'result="duplicate"' >deliveries.dat
rate 'reason="bad_signature"' 'reason="stale_timestamp"' 'reason="missing_header"' >rejected.dat
rate '^ofauth_webhook_handler_failures_total' '^ofauth_webhook_dead_lettered_total' >failures.dat
[ "$(wc -l <deliveries.dat)" -ge 5 ] || { echo "figure: too few samples" >&2; cat samples.txt >&2; exit 1; }

gnuplot <<GP
set terminal pngcairo size 1200,760 font "DejaVu Sans,10" noenhanced
set output "$out"
set multiplot layout 2,2 title "oflua webhooks under load — the main panels of examples/monitoring/dashboard.json (${duration} s run, scraped every 1 s)"
set grid
set key top left
set xlabel "seconds"
set ylabel "deliveries/s"
set title "Webhook deliveries (rate of ofauth_webhook_deliveries_total)"
plot "deliveries.dat" using 1:2 with lines lw 2 title "received", \
     "" using 1:3 with lines lw 2 title "accepted", \
     "" using 1:4 with lines lw 2 title "duplicate"
set title "Rejected deliveries by reason (ofauth_webhook_rejected_total)"
set ylabel "rejections/s"
plot "rejected.dat" using 1:2 with lines lw 2 title "bad_signature", \
     "" using 1:3 with lines lw 2 title "stale_timestamp", \
     "" using 1:4 with lines lw 2 title "missing_header"
set title "Share of deliveries rejected"
set ylabel "%"
set yrange [0:100]
plot "< paste deliveries.dat rejected.dat" using 1:((\$2 > 0) ? 100 * (\$6 + \$7 + \$8) / \$2 : 0) with lines lw 2 title "rejected / received"
set yrange [*:*]
set title "Handler failures and dead letters"
set ylabel "events/s"
plot "failures.dat" using 1:2 with lines lw 2 title "handler failures", \
     "" using 1:3 with lines lw 2 title "dead-lettered"
unset multiplot
GP
echo "figure: wrote $out"
