//! Live push: frames to viewers over WebSockets, newest wins. The only code that knows WebSocket
//! framing for viewers.

pub mod frames;
pub mod hub;
pub mod ws;

pub use hub::{Hub, LiveEvent};
