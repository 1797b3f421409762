//! `throng demo`: the server on the Bund scenario with the simulator feeding it live.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::server;
use crate::tools::sim::{Emitter, Scenario, SimConfig, World};

/// `throng demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Scenario folder; its `throng.toml`, if any, is the default config.
    #[arg(long, default_value = "fixtures/bund")]
    pub scenario: PathBuf,
    /// Scenario seconds per wall-clock second (1: real time; 10 plays the night ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// People simulated.
    #[arg(long, default_value_t = 50_000)]
    pub devices: usize,
    /// Length of the night in scenario seconds (midnight two thirds through).
    #[arg(long, default_value_t = 5400.0)]
    pub duration: f64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Configuration (default: the scenario's throng.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Files and addresses, as for `serve`.
    #[command(flatten)]
    pub place: super::ServerPlace,
    /// Seconds between terminal tables.
    #[arg(long, default_value_t = 3.0)]
    pub table_every: f64,
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.speed > 0.0 && args.speed <= 3600.0) {
        anyhow::bail!("--speed must be in (0, 3600]");
    }
    if !args.place.listen.ip().is_loopback() || !args.place.pg_listen.ip().is_loopback() {
        anyhow::bail!(
            "the demo has no auth tokens: it listens on loopback only (got {} and {})",
            args.place.listen,
            args.place.pg_listen
        );
    }
    let cfg = super::scenario_config(&args.scenario, args.config.as_deref())?;
    let tz = cfg.tz();
    let scenario = Scenario::load(&args.scenario, args.seed).map_err(anyhow::Error::msg)?;
    // Before any thread starts: a server that runs for hours must give freed tables back.
    crate::server::memory::return_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = server::start_with(cfg, args.place.listen, Some(args.place.pg_listen), &args.place.data_dir).await?;
        let pg = server.pg_addr.unwrap_or(args.place.pg_listen);
        println!("throng demo: the Bund, New Year's Eve — http://{}/  (API: /api/segments, /api/alerts; SQL: psql -h {} -p {} -U analyst; Ctrl-C to stop)", server.addr, pg.ip(), pg.port());
        let _ = std::io::stdout().flush();
        let world = World::new(
            scenario,
            SimConfig {
                people: args.devices,
                duration_s: args.duration,
                start_ms: crate::model::now_ms(),
                speed: args.speed,
                seed: args.seed,
                panel: crate::tools::sim::Panel::bund(),
                changes: Default::default(),
            },
        );
        let started = Instant::now();
        let mut em = Emitter::new(&world);
        let mut buf = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_table = Instant::now();
        let stop = super::signals::shutdown();
        tokio::pin!(stop);
        let mut announced = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            let scenario_t = started.elapsed().as_secs_f64() * args.speed;
            em.emit_until(scenario_t, &mut buf);
            if !buf.is_empty() {
                let (accepted, rejected) = server.feed(&buf).await.context("feeding the server")?;
                if rejected > 0 {
                    tracing::warn!(accepted, rejected, "Simulator records rejected.");
                }
                buf.clear();
            }
            if em.done() && !announced {
                println!("The simulated night is over; the server keeps serving until Ctrl-C.");
                announced = true;
            }
            if last_table.elapsed().as_secs_f64() >= args.table_every {
                last_table = Instant::now();
                print_table(&server, scenario_t, &world.cfg, tz);
            }
        }
        server.shutdown().await
    })
}

fn print_table(server: &server::Server, scenario_t: f64, cfg: &SimConfig, tz: chrono_tz::Tz) {
    let mut rows = server.segments();
    rows.sort_by(|a, b| b.people.total_cmp(&a.people));
    let now = chrono::DateTime::from_timestamp_millis(cfg.ts(scenario_t))
        .unwrap_or_default()
        .with_timezone(&tz);
    // The story's clock (the night runs to midnight two thirds in) beside event time, which the
    // dashboard shows: at --speed > 1 the two differ.
    let story = (23.0 * 3600.0 + (scenario_t - cfg.midnight() + 3600.0)).rem_euclid(86_400.0) as u64;
    let mut out = format!(
        "\n{} {} (event time; the simulated night's {:02}:{:02}:{:02}) — busiest segments\n",
        now.format("%H:%M:%S"),
        tz.name(),
        story / 3600,
        story / 60 % 60,
        story % 60
    );
    for s in rows.iter().take(8) {
        out.push_str(&format!(
            "  {} {:>7.0}  {:>5.2} p/m²  {}\n",
            pad_to_width(&s.name, 36),
            s.people,
            s.density,
            s.tier
        ));
    }
    if rows.is_empty() {
        out.push_str("  (waiting for the first window to close)\n");
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// `text` cut and padded to `width` terminal columns: a Chinese character takes two, so counting
/// characters would push every column after a Chinese name out of line.
fn pad_to_width(text: &str, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.extend(std::iter::repeat_n(' ', width - used));
    out
}

#[cfg(test)]
mod tests {
    use super::pad_to_width;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn table_names_are_cut_and_padded_by_display_width_so_chinese_names_keep_columns_aligned() {
        for name in [
            "陈毅广场台阶 Chen Yi Square steps",
            "南京东路（西藏中路–河南中路）East Nanjing Road, Xizang–Henan",
            "Bund promenade",
            "外滩",
        ] {
            let cell = pad_to_width(name, 36);
            assert_eq!(cell.width(), 36, "{cell:?}");
        }
        // A wide character that would straddle the edge is left out, not split.
        assert_eq!(pad_to_width("ab外", 3), "ab ");
    }
}
