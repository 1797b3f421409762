#!/usr/bin/env bash
# HTTP ingest against the offline whole process on the same file, in one sitting (issue 20):
# `replay --target --max` into `serve` (Bund config, write-ahead log fsynced per batch, N live
# viewers on /ws/live), timed until the engine has taken every record, against `replay --print`
# (no segments, no history) and `replay --config … --data-dir` (the same work a server does:
# segment people, tiers, Parquet history). The viewers are `benches/viewers.rs` (a lean Rust
# client: `cargo bench --bench viewers --no-run` builds it; VIEWERS_BIN=path picks it), or with
# VIEWER_CLIENT=python a Python `websockets` client that decodes every frame (`pip install
# websockets`), which takes several times the CPU from the two cores the server runs on; with
# neither the run has none. Uses loopback port 18181 and /tmp/hb. Usage (from the repository root):
#   python3 benches/gen_pings.py /tmp/pings.ndjson
#   THRONG=target/release/throng VIEWERS=100 benches/http-vs-offline.sh /tmp/pings.ndjson
set -u
T=${THRONG:-${CARGO_TARGET_DIR:-target}/release/throng}; FEED=$1; N=$(wc -l < "$FEED"); V=${VIEWERS:-100}
rm -rf /tmp/hb; mkdir -p /tmp/hb
rate() { python3 -c "print(f'{$N/($2-$1)/1000:.0f}')"; }
s=$(date +%s.%N); $T replay "$FEED" --print >/dev/null 2>&1; e=$(date +%s.%N); print=$(rate $s $e)
s=$(date +%s.%N); $T replay "$FEED" --config fixtures/bund/throng.toml --data-dir /tmp/hb/off >/dev/null 2>&1; e=$(date +%s.%N); dd=$(rate $s $e)
# The Bund config, with room for every viewer from one address (the default allows 50).
(cat fixtures/bund/throng.toml; printf '\n[limits]\nws_per_address = %d\n' $((V + 10))) > /tmp/hb/serve.toml
$T serve --config /tmp/hb/serve.toml --data-dir /tmp/hb/serve --listen 127.0.0.1:18181 --pg-listen 127.0.0.1:0 >/tmp/hb/serve.log 2>&1 & P=$!
until curl -sf -o /dev/null http://127.0.0.1:18181/api/health; do sleep 0.1; done
VP=
VB=${VIEWERS_BIN:-$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/viewers-* 2>/dev/null | grep -v '\.d$' | head -1)}
CLIENT=${VIEWER_CLIENT:-rust}
if [ "$V" -gt 0 ] && [ "$CLIENT" = rust ] && [ -x "$VB" ]; then
  "$VB" ws://127.0.0.1:18181/ws/live "$V" >/tmp/hb/viewers.out 2>&1 & VP=$!
  sleep 2
elif [ "$V" -gt 0 ] && python3 -c 'import websockets' 2>/dev/null; then
  CLIENT=python
  python3 - "$V" >/tmp/hb/viewers.out 2>&1 <<'PY' & VP=$!
import asyncio, signal, sys, websockets
n, frames, connected = int(sys.argv[1]), [0], [0]
async def viewer():
    async with websockets.connect("ws://127.0.0.1:18181/ws/live", max_size=None) as ws:
        connected[0] += 1
        async for _ in ws: frames[0] += 1
async def main():
    ts = [asyncio.create_task(viewer()) for _ in range(n)]
    stop = asyncio.Event(); asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait(); print(f"{connected[0]} of {n} viewers connected, {frames[0]} frames", flush=True)
asyncio.run(main())
PY
  sleep 2
else V=0; CLIENT=none; fi
s=$(date +%s.%N); $T replay "$FEED" --target http://127.0.0.1:18181 --max >/dev/null 2>&1; a=$(date +%s.%N)
# Done when the engine has taken every record (the acknowledgements run ahead by the queue). One
# poller process: a `curl | python3` per poll put a process start on the server's two cores
# every 10 ms while the queue drained.
python3 - "$N" <<'PY'
import json, sys, time, urllib.request
n = int(sys.argv[1])
while True:
    with urllib.request.urlopen("http://127.0.0.1:18181/api/health") as r:
        if sum(s.get("records", 0) for s in json.load(r)["engine"]["sources"]) >= n:
            break
    time.sleep(0.01)
PY
e=$(date +%s.%N)
[ -n "$VP" ] && { kill -TERM $VP; wait $VP; cat /tmp/hb/viewers.out; }
wal=$(du -sb /tmp/hb/serve/wal | cut -f1)
kill -TERM $P; wait $P
http=$(rate $s $e)
echo "offline --print $print k/s; offline --data-dir $dd k/s; http ($V $CLIENT viewers) acknowledged $(rate $s $a) k/s, engine done $http k/s"
python3 -c "print(f'http / --print {$http/$print:.2f}x; http / --data-dir {$http/$dd:.2f}x; log {$wal/$N:.1f} B/record')"
