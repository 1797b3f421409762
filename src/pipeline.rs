//! The offline pipeline: configuration → parser + engine, shared by `replay`, `serve` and the benches.

use std::sync::Arc;

use h3o::Resolution;

use crate::config::Config;
use crate::error::Result;
use crate::ingest::{Parser, Pseudonymiser, Registry, Sources};
use crate::window::{Engine, HexWindow};

/// A parser and the engine it feeds, built from one configuration.
pub struct Pipeline {
    /// Parses and validates records.
    pub parser: Parser,
    /// Aggregates them into windows.
    pub engine: Engine,
    /// The shared source table.
    pub sources: Arc<Sources>,
    /// Sensors, stations and their feed points.
    pub registry: Arc<Registry>,
}

/// The configured H3 resolution as h3o's type (validated by `Config::validate`).
pub fn resolution(cfg: &Config) -> Resolution {
    Resolution::try_from(cfg.h3.resolution).unwrap_or(Resolution::Eleven)
}

impl Pipeline {
    /// Loads the scenario's registries and builds the parser and engine.
    pub fn from_config(cfg: &Config) -> Result<Pipeline> {
        let res = resolution(cfg);
        let registry = Registry::load_dir(&cfg.scenario, res)?;
        Ok(Pipeline::with_registry(cfg, Arc::new(registry)))
    }

    /// Builds the parser and engine over an already loaded registry.
    pub fn with_registry(cfg: &Config, registry: Arc<Registry>) -> Pipeline {
        let sources = Arc::new(Sources::new(&cfg.lbs));
        let parser = Parser::new(
            registry.clone(),
            Pseudonymiser::new(&cfg.privacy.hash_key).rotating(cfg.privacy.rotate.as_millis() as i64),
            sources.clone(),
            resolution(cfg),
            cfg.lbs.max_accuracy_m,
            cfg.ingest.max_future.as_millis() as i64,
        );
        let engine = Engine::new(&cfg.window, &cfg.registers, sources.scales());
        Pipeline {
            parser,
            engine,
            sources,
            registry,
        }
    }

    /// Runs NDJSON bytes (in arrival order) through parser and engine, flushing at the end; each
    /// closed window is handed to `on_window`. Returns (accepted, rejected). Processing time is the
    /// newest event time seen, as in offline replay.
    pub fn process_ndjson(
        &mut self,
        bytes: &[u8],
        mut on_window: impl FnMut(HexWindow) -> Result<()>,
    ) -> Result<(u64, u64)> {
        let (mut ok, mut bad) = (0u64, 0u64);
        let mut now = i64::MIN;
        for line in bytes.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match self.parser.parse_line(line, None) {
                Ok(rec) => {
                    ok += 1;
                    now = now.max(rec.ts.millis());
                    self.engine.ingest(&rec, now);
                    for w in self.engine.advance(now) {
                        on_window(w)?;
                    }
                }
                Err(_) => bad += 1,
            }
            self.refresh_scales();
        }
        for w in self.engine.flush() {
            on_window(w)?;
        }
        Ok((ok, bad))
    }

    /// Brings the engine's scale factors up to date when new sources appeared.
    pub fn refresh_scales(&mut self) {
        if self.engine.scales_known() != self.sources.len() {
            self.engine.set_scales(self.sources.scales());
        }
    }
}
