#!/usr/bin/env python3
"""The analyst's history queries, throng against DuckDB on the same Parquet files, in one run.

Needs the day of history `cargo bench --bench history` builds (under $CARGO_TARGET_DIR/bench-history)
and DuckDB from PyPI (`pip install duckdb`). Starts `throng serve` read-only over that folder on a
loopback port (history retention off, so nothing is deleted; privacy.k 0, so both see every row), times each query through
`POST /api/sql` (median of N runs, after one warm-up) and the same query in DuckDB over the same
files, and prints both and their ratio. Usage:

    THRONG=target/release/throng python3 benches/sql_vs_duckdb.py [RUNS]

DuckDB's H3 extension downloads at run time (not offline), so `h3_parent(cell, 9)` is written for
DuckDB as the bit operation it is on a valid cell: resolution bits set to 9, digits 10-15 set to 7.
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

import duckdb

TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
THRONG = os.environ.get("THRONG", os.path.join(TARGET, "release", "throng"))
DAY = os.path.join(TARGET, "bench-history")
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
HEX = os.path.join(DAY, "history", "hex_windows", "**", "*.parquet")
SEG = os.path.join(DAY, "history", "segment_windows", "**", "*.parquet")

QUERIES = [
    ("peak density per segment per hour",
     "SELECT segment_id, date_trunc('hour', window_start) AS hour, max(density) AS peak FROM segment_windows GROUP BY 1, 2 ORDER BY 3 DESC",
     f"SELECT segment_id, date_trunc('hour', window_start) AS hour, max(density) AS peak FROM read_parquet('{SEG}') GROUP BY 1, 2 ORDER BY 3 DESC"),
    ("one segment's time series",
     "SELECT window_end, people, density, tier FROM segment_windows WHERE segment_id = 'seg-03' ORDER BY window_end",
     f"SELECT window_end, people, density, tier FROM read_parquet('{SEG}') WHERE segment_id = 'seg-03' ORDER BY window_end"),
    ("top cells in an hour",
     "SELECT h3, max(people) AS peak FROM hex_windows WHERE window_start >= '2025-12-31T15:00:00Z' AND window_start < '2025-12-31T16:00:00Z' GROUP BY h3 ORDER BY peak DESC LIMIT 20",
     f"SELECT h3, max(people) AS peak FROM read_parquet('{HEX}') WHERE window_start >= TIMESTAMPTZ '2025-12-31T15:00:00Z' AND window_start < TIMESTAMPTZ '2025-12-31T16:00:00Z' GROUP BY h3 ORDER BY peak DESC LIMIT 20"),
    ("people per res-9 parent over the day",
     "SELECT h3_parent(cell, 9) AS parent, sum(people) / 8640 AS mean_people FROM hex_windows GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
     f"SELECT ((cell & ~(15::BIGINT << 52)) | (9::BIGINT << 52)) | ((1::BIGINT << 18) - 1) AS parent, sum(people) / 8640 AS mean_people FROM read_parquet('{HEX}') GROUP BY 1 ORDER BY 2 DESC LIMIT 10"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sql(port, q):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/sql", data=json.dumps({"sql": q}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def timed(f):
    f()  # warm-up (file cache, plan caches)
    out = []
    for _ in range(RUNS):
        t = time.perf_counter()
        rows = f()
        out.append(time.perf_counter() - t)
    return statistics.median(out), rows


def main():
    if not os.path.isdir(os.path.join(DAY, "history", "hex_windows")):
        sys.exit(f"no day of history at {DAY}: run `cargo bench --bench history` first")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write('scenario = "fixtures/bund"\n[privacy]\nk = 0\n[history]\nretention_days = 0\n[sql]\ntimeout = "600s"\nmemory_limit_mb = 4096\n')
    cfg.close()
    port = free_port()
    data = tempfile.mkdtemp()
    os.symlink(os.path.abspath(os.path.join(DAY, "history")), os.path.join(data, "history"))
    server = subprocess.Popen([THRONG, "serve", "--config", cfg.name, "--data-dir", data,
                               "--listen", f"127.0.0.1:{port}", "--pg-listen", "127.0.0.1:0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("throng serve did not start")
                time.sleep(0.1)
        con = duckdb.connect()
        con.execute("SET threads TO 2")
        print(f"{'query':<40} {'throng':>10} {'duckdb':>10} {'ratio':>7}  rows")
        for name, tq, dq in QUERIES:
            t, trows = timed(lambda: sql(port, tq))
            d, drows = timed(lambda: con.execute(dq).fetchall())
            # The same answer, or the comparison means nothing: first column of every row, and the
            # numbers of the first row to 6 significant digits.
            tfirst = [list(r.values())[0] for r in trows]
            dfirst = [r[0] for r in drows]
            if name.startswith("people per res-9") and [int(x) for x in tfirst] != [int(x) for x in dfirst]:
                sys.exit(f"{name}: different parents: {tfirst[:3]} vs {dfirst[:3]}")
            if len(trows) != len(drows):
                sys.exit(f"{name}: {len(trows)} rows from throng, {len(drows)} from DuckDB")
            print(f"{name:<40} {t*1000:>8.1f} ms {d*1000:>8.1f} ms {t/d:>6.2f}x  {len(trows)} rows, same")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
