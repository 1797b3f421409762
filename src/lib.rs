//! throng: a crowd-flow stream processor for large public events.
//!
//! Data flows one way: `ingest` (feeds → validated, pseudonymised, H3-indexed records) →
//! `window` (event-time hopping windows per cell → Arrow batches) → downstream stages
//! `risk` (cells → road segments → tiers and alerts) → live push and history. `pipeline` wires parser and engine for offline use;
//! `app` runs the server; `api` holds its HTTP routes; `cli` the command line.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod durability;
pub mod error;
pub mod history;
pub mod import;
pub mod ingest;
pub mod live;
pub mod model;
pub mod pipeline;
pub mod risk;
pub mod sim;
pub mod tls;
pub mod transport;
pub mod window;
