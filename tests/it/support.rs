//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (fixtures live there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real `throng` binary with a bounded time.
pub fn throng(args: &[&str]) -> Output {
    throng_within(args, std::time::Duration::from_secs(120))
}

/// `throng` killed (and the test failed, its stderr shown) if it runs longer than `limit`: for a
/// command that must exit at once, such as a `serve` that has to refuse to start.
pub fn throng_within(args: &[&str], limit: std::time::Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_throng"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn throng");
    // Read the pipes on another thread so a chatty child never blocks on a full pipe.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            // Killed, the child's pipes close and the thread hands back what it wrote.
            let stderr = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .ok()
                .and_then(Result::ok)
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "throng {args:?} did not finish in {limit:?}; its stderr ended:\n{}",
                tail.join("\n")
            );
        }
    }
}

/// `throng query --data-dir DATA --format csv SQL` against a stopped server's data dir: the CSV.
pub fn query(data: &std::path::Path, sql: &str) -> String {
    query_with(data, None, sql)
}

/// `query` under a config file (its `privacy.k` decides what is suppressed).
pub fn query_with(data: &std::path::Path, cfg: Option<&std::path::Path>, sql: &str) -> String {
    let data = data.display().to_string();
    let mut args = vec!["query", "--data-dir", &data, "--format", "csv"];
    let cfg = cfg.map(|c| c.display().to_string());
    if let Some(c) = &cfg {
        args.extend(["--config", c.as_str()]);
    }
    args.push(sql);
    let out = throng(&args);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A small deterministic PRNG (xorshift), so tests need no extra crate and repeat exactly.
pub struct Rng(pub u64);

impl Rng {
    /// Next raw value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [a, b).
    pub fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (b - a)
    }
}

/// A child process killed (and reaped) on drop, so a failing test leaves nothing behind. When
/// its standard error went to a file (`serving`), a failing test prints the file's tail.
pub struct Child(pub std::process::Child, pub Option<tempfile::NamedTempFile>);

impl Child {
    /// A child whose standard error is not kept.
    pub fn new(c: std::process::Child) -> Child {
        Child(c, None)
    }

    /// The last lines the child wrote to standard error (empty when it was not kept).
    pub fn stderr_tail(&self) -> String {
        let Some(f) = &self.1 else {
            return String::new();
        };
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() && self.1.is_some() {
            eprintln!(
                "--- stderr of child {} (last lines) ---\n{}\n---",
                self.0.id(),
                self.stderr_tail()
            );
        }
    }
}

/// The real binary with these arguments, run from the repository root (`serving` keeps its
/// standard error for the failure message; other callers discard it).
pub fn throng_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_throng"));
    c.args(args)
        .current_dir(root())
        .stderr(std::process::Stdio::null());
    c
}

/// How long a started server may take to print its address.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts a server-like command (`serve`, `demo`) and waits, bounded, for the address it prints;
/// the rest of its standard output is drained on a thread. Its standard error goes to a file
/// that a failing test prints.
pub fn serving(cmd: Command) -> (Child, std::net::SocketAddr) {
    let (child, addr, _) = serving_line(cmd);
    (child, addr)
}

/// `serving`, also giving the PostgreSQL port `serve` prints beside its address.
pub fn serving_pg(cmd: Command) -> (Child, std::net::SocketAddr, u16) {
    let (child, addr, line) = serving_line(cmd);
    let port = line
        .split(" -p ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PostgreSQL port in {line:?}"));
    (child, addr, port)
}

fn serving_line(mut cmd: Command) -> (Child, std::net::SocketAddr, String) {
    use std::io::BufRead;
    let err = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Child(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(err.reopen().expect("reopen temp file"))
            .spawn()
            .expect("spawn throng"),
        Some(err),
    );
    let lines = std::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            // After the address nobody listens: keep draining so the child never blocks.
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let addr = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => {
                let status = child.0.try_wait().ok().flatten();
                panic!(
                    "the server printed no address ({e:?}; exit status {status:?}); its stderr:\n{}",
                    child.stderr_tail()
                );
            }
        };
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest
                .split('/')
                .next()
                .expect("host:port")
                .parse()
                .expect("an address");
            break (addr, line);
        }
    };
    (child, addr.0, addr.1)
}
/// Writes `t.toml` into `dir`: the Bund with one-second windows that close within half a second
/// of going idle, and no k-suppression, so a test that watches frames or metrics of a real
/// `serve` sees them at once.
pub fn fast_bund_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("t.toml");
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"1s\"\nslide = \"1s\"\nallowed_lateness = \"100ms\"\nidle_timeout = \"300ms\"\n[privacy]\nk = 0\n",
    )
    .expect("write the test config");
    cfg
}

/// `throng serve` on an ephemeral loopback port with this data dir and extra arguments.
pub fn serve_command(data: &std::path::Path, extra: &[&str]) -> Command {
    let args = serve_args(data, extra);
    throng_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The arguments of `serve_command`, for running `serve` through `throng_within`.
pub fn serve_args(data: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pg-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

/// The value of one exposed series in a Prometheus text page (`name` or `name{labels}` exactly as
/// printed), so a check cannot be satisfied by a longer number or another series.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok()).flatten()
    })
}
