//! `throng serve`: the server until Ctrl-C or SIGTERM.

use super::ServeArgs;
use crate::server::{self, Listeners};

/// Runs the server until a stop signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    for addr in [args.place.listen, args.place.pg_listen] {
        if cfg.auth.tokens.is_empty() && !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {addr} with no auth tokens configured: add [[auth.tokens]] to the config or listen on 127.0.0.1"
            );
        }
    }
    let listen = Listeners {
        http: args.place.listen,
        pg: Some(args.place.pg_listen),
    };
    // Before any thread starts: a server that runs for hours must give freed tables back.
    crate::server::memory::return_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Signal handlers first: a stop that comes as soon as the address is printed is a clean stop.
    let stop = {
        let _in_runtime = rt.enter();
        super::signals::shutdown()
    };
    rt.block_on(server::run(cfg, listen, &args.place.data_dir, stop, |server| {
        super::signals::reload_on_hangup(server.control());
        println!(
            "throng is serving on {}://{}/ (health: /api/health, metrics: /metrics); SQL: psql -h {} -p {} -U analyst",
            if server.tls { "https" } else { "http" },
            server.addr,
            server.pg_addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            server.pg_addr.map(|a| a.port()).unwrap_or_default(),
        );
    }))
}
