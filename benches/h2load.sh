#!/usr/bin/env bash
# Route against the health check under an independent HTTP/2 client, h2load
# (Debian's nghttp2-client): the same server, the same run, interleaved rounds.
#
# The load generator in benches/load.rs is a tonic client on the same two
# cores as the server, so it spends some of the machine itself; h2load sends
# pre-encoded gRPC frames and spends less, so the server gets more of the
# machine, as it would beside an agent in a pod.
#
# usage: benches/h2load.sh [ROUNDS [SECONDS]]      (default 8 rounds of 3 s)
#   SWITCHYARD_BIN: the server binary (default: this tree's release build).
#   H2LOAD_ARGS: h2load's concurrency (default: -c 4 -m 16, 4 connections x 16 streams).
#
# Scenarios (each round runs health, then each Route scenario, in turn):
#   health             grpc.health.v1.Health/Check
#   route-repeated-1k  Route with a system message of about 1,000 o200k tokens and a
#                      short question, the same bytes every call (h2load sends one body),
#                      so every message's count comes from the context cache
#   route-short        Route with a short prompt, the same every call
# Each round's ratio is route ÷ health in requests a second; the result is the
# median of the rounds' ratios.
set -euo pipefail

rounds=${1:-8}
secs=${2:-3}
conc=${H2LOAD_ARGS:--c 4 -m 16}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v h2load >/dev/null || { echo "h2load.sh: h2load is not installed (apt-get install nghttp2-client)" >&2; exit 1; }

bin=${SWITCHYARD_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin="${CARGO_TARGET_DIR:-$root/target}/release/switchyard"
fi

work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cp routing-rules/default.toml "$work/rules.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --rules "$work/rules.toml" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --state-dir "$work" >"$work/stdout" 2>"$work/stderr" &
server=$!
for _ in $(seq 100); do
    grep -q "switchyard listening" "$work/stdout" 2>/dev/null && break
    sleep 0.1
done
grep -q "switchyard listening" "$work/stdout" || { cat "$work/stderr" >&2; exit 1; }

# The context: clauses until `switchyard explain` counts about 1,000 o200k tokens.
python3 - "$work" "$bin" <<'PY'
import json, subprocess, sys
work, bin = sys.argv[1], sys.argv[2]
clauses, text = 0, ""
while True:
    text = "".join(
        f"Clause {i}: for order {i}, check the ledger, cite the policy, and never promise a refund before review. "
        for i in range(clauses)
    )
    out = subprocess.run([bin, "explain", "--rules", f"{work}/rules.toml", "--state-dir", work, text or "x"],
                         capture_output=True, text=True, check=True)
    if json.loads(out.stdout)["input_tokens_by_encoding"]["o200k"] >= 1000:
        break
    clauses += 4

def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def field(num, payload):  # length-delimited
    return varint(num << 3 | 2) + varint(len(payload)) + payload

def message(role, content):
    return field(1, role.encode()) + field(2, content.encode())

def route(messages):
    body = field(1, b"general") + b"".join(field(3, message(r, c)) for r, c in messages) + varint(4 << 3) + varint(1)
    return body

def frame(body):
    return b"\x00" + len(body).to_bytes(4, "big") + body

open(f"{work}/health.bin", "wb").write(frame(b""))
open(f"{work}/route-repeated-1k.bin", "wb").write(frame(route([("system", text), ("user", "Question: is order 7 late?")])))
open(f"{work}/route-short.bin", "wb").write(frame(route([("user", "What is the capital of France?")])))
PY

run() {  # scenario path -> requests a second
    h2load -D "$secs" $conc -d "$work/$1.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port$2" 2>/dev/null | awk '/^finished in/ { gsub(",", "", $4); print $4 }'
}

# Each body gets one answer checked by hand: gRPC reports errors in trailers,
# which h2load does not read.
for s in route-repeated-1k route-short; do
    h2load -n 1 -c 1 -d "$work/$s.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/switchyard.v1.Router/Route" >/dev/null 2>&1
done
if command -v curl >/dev/null && curl --version | grep -q HTTP2; then
    for s in route-repeated-1k route-short; do
        curl -s --http2-prior-knowledge -o /dev/null -D - --data-binary "@$work/$s.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$port/switchyard.v1.Router/Route" -w '' -v 2>&1 | grep -qi 'grpc-status: 0' \
            || { echo "h2load.sh: $s was not answered OK" >&2; exit 1; }
    done
fi

printf '%-6s %12s %18s %12s %12s %12s\n' round health/s repeated-1k/s ratio short/s ratio
ratios_1k=(); ratios_short=()
for r in $(seq "$rounds"); do
    h=$(run health /grpc.health.v1.Health/Check)
    a=$(run route-repeated-1k /switchyard.v1.Router/Route)
    b=$(run route-short /switchyard.v1.Router/Route)
    r1=$(python3 -c "print(f'{$a / $h:.3f}')"); r2=$(python3 -c "print(f'{$b / $h:.3f}')")
    ratios_1k+=("$r1"); ratios_short+=("$r2")
    printf '%-6s %12.0f %18.0f %12s %12.0f %12s\n' "$r" "$h" "$a" "$r1" "$b" "$r2"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median route-repeated-1k ÷ health: $(median "${ratios_1k[@]}")   route-short ÷ health: $(median "${ratios_short[@]}")   ($rounds rounds of ${secs} s, h2load $conc)"
