//! Live push: frames to viewers over WebSockets, newest wins, and the board the API reads. The
//! only code that knows WebSocket framing for viewers. `Publisher` is the flow's live output.

pub mod acks;
pub mod board;
pub mod frames;
pub mod hub;
pub mod publisher;
pub mod ws;

pub use acks::{Ack, AckStore};
pub use board::{Board, Picture};
pub use hub::{Hub, LiveEvent};
pub use publisher::Publisher;
