//! throng: a crowd-flow stream processor for large public events.
//!
//! The modules are layers, listed here from the bottom up; each imports only those above it in
//! this list (a test, `layers`, fails otherwise). Data flows the same way: feeds (`ingest`) →
//! event-time windows (`window`) → segment tiers (`risk`) → the one closed-window loop (`flow`) →
//! viewers (`live`) and files (`history`) → SQL (`query`). `server` and `cli` wire them up;
//! `tools` are the simulator and importers, feeds like any other. ARCHITECTURE.md has the map.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod durability;
pub mod error;
pub mod faults;
pub mod flow;
pub mod history;
pub mod ingest;
pub mod live;
pub mod model;
pub mod net;
pub mod pipeline;
pub mod query;
pub mod risk;
pub mod scenario;
pub mod server;
pub mod tools;
pub mod transport;
pub mod window;

#[cfg(test)]
mod layers;
