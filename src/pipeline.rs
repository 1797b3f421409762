//! Configuration → parser + engine: the records half of every run (`serve`, `replay`, the
//! simulator's checks, the benches). What happens to a closed window is `flow`'s.

use std::sync::Arc;

use crate::config::Config;
use crate::error::Result;
use crate::ingest::{Parser, Pseudonymiser, Sources};
use crate::scenario::Registry;
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

impl Pipeline {
    /// Loads the scenario's registries and builds the parser and engine.
    pub fn from_config(cfg: &Config) -> Result<Pipeline> {
        Pipeline::resuming(cfg, &[])
    }

    /// As `from_config`, with the source ids a data dir's log already uses (see
    /// [`Sources::resuming`]).
    pub fn resuming(cfg: &Config, known_sources: &[String]) -> Result<Pipeline> {
        let res = cfg.resolution();
        let registry = Registry::load_dir(&cfg.scenario, res)?;
        Ok(Pipeline::build(cfg, Arc::new(registry), known_sources))
    }

    /// Builds the parser and engine over an already loaded registry.
    pub fn with_registry(cfg: &Config, registry: Arc<Registry>) -> Pipeline {
        Pipeline::build(cfg, registry, &[])
    }

    /// As `with_registry`, with the source ids a checkpoint already uses.
    pub fn resuming_with(cfg: &Config, registry: Arc<Registry>, known_sources: &[String]) -> Pipeline {
        Pipeline::build(cfg, registry, known_sources)
    }

    fn build(cfg: &Config, registry: Arc<Registry>, known_sources: &[String]) -> Pipeline {
        let sources = Arc::new(Sources::resuming(&cfg.lbs, known_sources));
        let parser = Parser::new(
            registry.clone(),
            Pseudonymiser::new(&cfg.privacy.hash_key).rotating(cfg.privacy.rotate.as_millis() as i64),
            sources.clone(),
            cfg.resolution(),
            cfg.lbs.max_accuracy_m,
            cfg.ingest.max_future.as_millis() as i64,
        );
        let mut engine = Engine::new(&cfg.window, &cfg.registers, sources.scales());
        engine.apply_lbs(&cfg.lbs);
        engine.set_profiles(sources.profiles());
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
        let mut failed = None;
        let max_line = usize::MAX;
        crate::ingest::decode::each_line(&self.parser.clone(), bytes, None, max_line, |_, r| {
            if failed.is_some() {
                return;
            }
            match r {
                Ok(rec) => {
                    ok += 1;
                    now = now.max(rec.ts.millis());
                    self.engine.ingest(&rec, now);
                    for w in self.engine.advance(now) {
                        if let Err(e) = on_window(w) {
                            failed = Some(e);
                            return;
                        }
                    }
                }
                Err(_) => bad += 1,
            }
            self.refresh_scales();
        });
        if let Some(e) = failed {
            return Err(e);
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
