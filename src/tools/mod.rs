//! Feeds that are not sensors: the scenario simulator (`sim`, records with their ground truth) and
//! importers of real public datasets (`import`), and rehearsals of a night before it happens
//! (`rehearse`, the simulator through the engine). They produce NDJSON records like any feed and
//! reach the engine only through the same parser.

pub mod import;
pub mod rehearse;
pub mod sim;
