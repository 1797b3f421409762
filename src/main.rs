//! The `throng` binary: parses the command line, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use throng::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `throng accuracy` runs dozens of simulated nights: their tier changes are its data, not news.
    let default = match cli.command {
        Command::Accuracy(_) | Command::Rehearse(_) => "info,throng::flow=error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // A log write that fails (standard error redirected to a file on a full disk) is dropped:
    // by default the subscriber reports it with `eprintln!`, which panics on that same failure
    // and took the handler (or the engine task) that logged down with it.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Human => logs
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Flattened so a shipper finds `message` and the event's fields at the top level.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    let result = match cli.command {
        Command::Replay(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            throng::cli::replay::run(&args, &mut out).map(|_| ())
        }
        Command::Serve(args) => throng::cli::serve::run(args),
        Command::Demo(args) => throng::cli::demo::run(args),
        Command::Import(args) => throng::cli::import::run(&args).map(|_| ()),
        Command::Simulate(args) => throng::cli::simulate::run(&args).map(|_| ()),
        Command::Bench(args) => throng::cli::bench::run(&args).map(|_| ()),
        Command::Accuracy(args) => throng::cli::accuracy::run(&args).map(|_| ()),
        Command::Rehearse(args) => throng::cli::rehearse::run(&args).map(|_| ()),
        Command::Wal(args) => match throng::cli::wal::run(&args) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Command::Query(args) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            throng::cli::query::run(&args, &mut out).map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throng: {e:#}");
            ExitCode::FAILURE
        }
    }
}
