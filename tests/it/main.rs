//! End-to-end tests through throng's real interfaces (the binary, HTTP). One binary, many modules.

mod replay;
mod serve;
mod support;
