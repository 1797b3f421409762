//! Network transports that pull feeds in (MQTT, Kafka) and the Kafka producer the CLI feeds with. Each gets a `durability::FeedSink` and a
//! shutdown token, nothing else; pushed feeds (HTTP, WebSocket) are routes in `server::api`.

pub mod kafka;
pub mod mqtt;
