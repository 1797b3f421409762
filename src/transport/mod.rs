//! Network transports that pull feeds in (HTTP and WebSocket ingest live in `api/`).

pub mod mqtt;
