//! Live viewers for a load test: N WebSocket clients on a server's `/ws/live` that read every
//! frame and keep nothing, until SIGTERM or SIGINT; then one line: how many connected, how many
//! frames and bytes they read. `benches/http-vs-offline.sh` runs it beside `serve` so that the
//! viewers' own CPU (on the same two cores as the server) is that of a lean client, not of a
//! Python one decoding every frame (issue 20).
//!
//! ```sh
//! cargo bench --bench viewers --no-run   # then run the binary it names:
//! target/release/deps/viewers-… ws://127.0.0.1:18181/ws/live 100
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<usize>().ok())) else {
        eprintln!("usage: viewers WS_URL COUNT (for example ws://127.0.0.1:18181/ws/live 100)");
        std::process::exit(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viewers: no runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let frames = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let mut connected = 0usize;
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let connect = tokio_tungstenite::connect_async(url.as_str());
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok((ws, _))) => {
                    connected += 1;
                    let (frames, bytes) = (frames.clone(), bytes.clone());
                    tasks.push(tokio::spawn(async move {
                        let (_tx, mut rx) = ws.split();
                        while let Some(Ok(m)) = rx.next().await {
                            frames.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                        }
                    }));
                }
                Ok(Err(e)) => eprintln!("viewers: a viewer could not connect to {url}: {e}"),
                Err(_) => eprintln!("viewers: a viewer could not connect to {url} in 10 s"),
            }
        }
        eprintln!("viewers: {connected} of {n} connected");
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("viewers: cannot wait for SIGTERM: {e}");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        for t in &tasks {
            t.abort();
        }
        println!(
            "{connected} of {n} viewers connected, {} frames, {:.1} MB",
            frames.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed) as f64 / 1e6
        );
    });
}
