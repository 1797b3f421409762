//! Per-client limits: WebSocket connections per address, ingest records per second per feed token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;

use super::error::ApiError;

/// Shared limit state.
#[derive(Debug, Default)]
pub struct Limits {
    sockets: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Holds one WebSocket slot of an address; gives it back when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut m = self.limits.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    /// Takes a WebSocket slot for `ip`, or 429 past `max` open ones.
    pub fn socket(self: &Arc<Self>, ip: IpAddr, max: usize) -> Result<SocketSlot, ApiError> {
        let mut m = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{ip} already has {max} WebSocket connections open (limits.ws_per_address)"),
            ));
        }
        *n += 1;
        Ok(SocketSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Takes `n` records from `who`'s token bucket (`rate` per second, burst of two seconds'
    /// worth); Err(seconds to wait) when it would go below zero. `rate` 0 means unlimited.
    pub fn records(&self, who: &str, n: usize, rate: f64) -> Result<(), u64> {
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = burst(rate);
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = m.entry(who.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= n as f64 {
            *tokens -= n as f64;
            Ok(())
        } else {
            Err(((n as f64 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// The most records one request may hold at `rate` records/s: two seconds' worth. A larger one
/// could never be taken, however long its sender waited.
pub fn burst(rate: f64) -> f64 {
    rate * 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let l = Limits::default();
        assert!(l.records("a", 200, 100.0).is_ok(), "burst of two seconds");
        assert_eq!(l.records("a", 150, 100.0), Err(2));
        assert!(l.records("b", 150, 100.0).is_ok(), "buckets are per token");
        assert!(l.records("a", 1_000_000, 0.0).is_ok(), "0 = unlimited");
    }

    #[test]
    fn socket_slots_are_given_back() {
        let l = Arc::new(Limits::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.socket(ip, 2).unwrap();
        let _b = l.socket(ip, 2).unwrap();
        assert!(l.socket(ip, 2).is_err());
        drop(a);
        assert!(l.socket(ip, 2).is_ok());
    }
}
