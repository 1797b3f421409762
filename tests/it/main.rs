//! End-to-end tests through throng's real interfaces (the binary, HTTP). One binary, many modules.

mod access;
mod bench;
mod browser;
mod crash;
mod demo;
mod disk;
mod flow;
mod grafana;
mod history;
mod hostile;
mod http;
mod importers;
mod late;
mod live;
mod mqtt;
mod ops;
mod positions;
mod privacy;
mod recovery;
mod replay;
mod scenario;
mod segments;
mod serve;
mod simulation;
mod support;
mod transports;
