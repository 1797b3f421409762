//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (fixtures live there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real `throng` binary with a bounded time.
pub fn throng(args: &[&str]) -> Output {
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
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("throng {args:?} did not finish in 120 s");
        }
    }
}

/// `throng query --data-dir DATA --format csv SQL` against a stopped server's data dir: the CSV.
pub fn query(data: &std::path::Path, sql: &str) -> String {
    let out = throng(&[
        "query",
        "--data-dir",
        &data.display().to_string(),
        "--format",
        "csv",
        sql,
    ]);
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

/// A child process killed (and reaped) on drop, so a failing test leaves nothing behind.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary with these arguments, run from the repository root, stderr discarded.
pub fn throng_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_throng"));
    c.args(args)
        .current_dir(root())
        .stderr(std::process::Stdio::null());
    c
}

/// Starts a server-like command (`serve`, `demo`) and waits for the address it prints; the rest of
/// its standard output is drained on a thread.
pub fn serving(mut cmd: Command) -> (Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = Child(
        cmd.stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn throng"),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .expect("read stdout");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest
                .split('/')
                .next()
                .expect("host:port")
                .parse()
                .expect("an address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// `throng serve` on an ephemeral loopback port with this data dir and extra arguments.
pub fn serve_command(data: &std::path::Path, extra: &[&str]) -> Command {
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
    throng_command(&args)
}
