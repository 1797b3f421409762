//! Network transports that pull feeds in (MQTT). Each gets a `durability::FeedSink` and a
//! shutdown token, nothing else; pushed feeds (HTTP, WebSocket) are routes in `server::api`.

pub mod mqtt;
