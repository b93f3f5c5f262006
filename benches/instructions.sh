#!/usr/bin/env bash
# Instructions the running server executes per call, counted by callgrind.
#
# Wall-clock figures on a shared 2-core machine move by 10-20% between runs;
# callgrind's counts move by about 1%, so a change of a few per cent shows.
# They leave out the kernel (socket calls, page faults), so they complement
# the load figures rather than replace them.
#
# usage: benches/instructions.sh [SCENARIO [CALLS]]
#   SWITCHYARD_PACING: even or traffic paces the budgeted workflow (the
#   route-usage and route-repeated-1k-budgeted scenarios); unset, its budget
#   steps down at a soft threshold.
#   SCENARIO: any of benches/load.rs's (default route-short); CALLS default 2000.
#   SWITCHYARD_BIN: the server binary to measure (default: this tree's release build).
#   SWITCHYARD_CALLGRIND_OUT: keep the callgrind dump at this path, for callgrind_annotate.
#
# Needs valgrind (apt-get install valgrind). The server starts under callgrind
# with the shipped rules, takes 300 calls to warm up, then the counters are
# zeroed and CALLS calls (plus the load generator's own 200 warm-up calls)
# are counted, over 4 connections with 4 in flight.
set -euo pipefail

scenario=${1:-route-short}
calls=${2:-2000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

bin=${SWITCHYARD_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
fi
cargo bench --bench load --no-run --quiet 2>/dev/null

work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cp routing-rules/default.toml "$work/rules.toml"
# The route-usage scenarios route to a budgeted workflow, as benches/load.rs
# adds when it starts its own server.
printf '\n[[workflows]]\nname = "budgeted"\n[workflows.budget]\nlimit_usd = 1000000\nperiod = "day"\nsoft_threshold_pct = 80\n' >>"$work/rules.toml"
[ -n "${SWITCHYARD_PACING:-}" ] && printf 'pacing = "%s"\n' "$SWITCHYARD_PACING" >>"$work/rules.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" serve \
    --rules "$work/rules.toml" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --state-dir "$work" >"$work/stdout" 2>"$work/stderr" &
server=$!
for _ in $(seq 240); do
    grep -q "switchyard listening" "$work/stdout" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
    sleep 0.5
done
grep -q "switchyard listening" "$work/stdout" || { echo "instructions.sh: the server did not start" >&2; exit 1; }

load() {
    cargo bench --quiet --bench load -- --target "127.0.0.1:$port" --scenario "$scenario" \
        --concurrency 4 --duration 600 "$@" 2>/dev/null
}
echo "warming up ($scenario, 300 calls under callgrind)..." >&2
load --requests 300 >/dev/null
callgrind_control --zero "$server" >/dev/null 2>&1
echo "counting $calls calls..." >&2
load --requests "$calls" --json >"$work/load.json"
callgrind_control --dump "$server" >/dev/null 2>&1
kill "$server"
wait "$server" 2>/dev/null || true

if [ -n "${SWITCHYARD_CALLGRIND_OUT:-}" ]; then
    latest=$(ls -S "$work"/callgrind.out* | head -1)
    cp "$latest" "$SWITCHYARD_CALLGRIND_OUT"
fi
# The dump holds everything since the counters were zeroed.
total=$(grep -h '^totals:' "$work"/callgrind.out* | awk '{print $2}' | sort -n | tail -1)
python3 - "$work/load.json" "$total" "$scenario" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))[0]
calls = result["requests"] + 200  # the load generator's warm-up calls are counted too
print(f"{sys.argv[3]}: {int(sys.argv[2]) / calls:,.0f} instructions per call ({calls} calls, {result['errors']} errors)")
if result["errors"]:
    # A refused call costs less than an answered one: the count would flatter.
    sys.exit(f"instructions.sh: {result['errors']} calls failed, so the count is not of the scenario")
PY
