//! `throng import --format FORMAT FILE... [--out FILE] [--registry-out FILE]`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::tools::import::{geolife, melbourne, mta, sptcc, Format, Summary};

/// `throng import`.
#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Input files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Where the NDJSON records go (`-`: standard output).
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Also write the registry the records need (stations.json or sensors.json shape).
    #[arg(long)]
    pub registry_out: Option<PathBuf>,
    /// mta-turnstile: the UNIT → station location table (JSON).
    #[arg(long)]
    pub units: Option<PathBuf>,
    /// sptcc-card: the station name → location table (JSON, GCJ-02).
    #[arg(long)]
    pub stations: Option<PathBuf>,
}

fn read(p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// Runs the import; returns what it did.
pub fn run(args: &ImportArgs) -> anyhow::Result<Summary> {
    let mut out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?,
        ))
    };
    let mut s = Summary::default();
    let units = match (args.format, &args.units) {
        (Format::MtaTurnstile, Some(p)) => Some(mta::units(&read(p)?).map_err(anyhow::Error::msg)?),
        (Format::MtaTurnstile, None) => {
            anyhow::bail!("mta-turnstile needs --units FILE (the UNIT → station table)")
        }
        _ => None,
    };
    let stations = match (args.format, &args.stations) {
        (Format::SptccCard, Some(p)) => Some(sptcc::stations(&read(p)?).map_err(anyhow::Error::msg)?),
        (Format::SptccCard, None) => {
            anyhow::bail!("sptcc-card needs --stations FILE (the station name table)")
        }
        _ => None,
    };
    for f in &args.files {
        let input = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let r = match args.format {
            Format::MtaTurnstile => mta::import(
                input,
                units.as_ref().unwrap_or(&Default::default()),
                &mut out,
                &mut s,
            ),
            Format::MelbourneCounts => melbourne::import(input, &mut out, &mut s),
            Format::GeolifePlt => {
                let device = format!(
                    "geolife-{}",
                    f.file_stem().and_then(|x| x.to_str()).unwrap_or("track")
                );
                geolife::import(input, &device, &mut out, &mut s)
            }
            Format::SptccCard => sptcc::import(
                input,
                stations.as_ref().unwrap_or(&Default::default()),
                &mut out,
                &mut s,
            ),
        };
        r.map_err(anyhow::Error::msg)
            .with_context(|| format!("importing {}", f.display()))?;
    }
    s.finish(&mut out)?;
    out.flush()?;
    if let Some(p) = &args.registry_out {
        std::fs::write(p, serde_json::to_vec_pretty(&s.registry)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    for (how, n) in &s.resolved {
        tracing::info!(rows = n, "Matched a name written differently: {how}.");
    }
    for (why, n) in &s.skipped {
        tracing::warn!(rows = n, "Skipped: {why}.");
    }
    tracing::info!(
        records = s.records,
        registry_entries = s.registry.len(),
        "Import finished."
    );
    Ok(s)
}
