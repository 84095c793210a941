//! Per-connection rate limit: a token bucket, plus a count of refusals
//! that tells an over-eager client from an abusive one; and the count of
//! connections per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: refuse this frame, keep the connection.
    Limited,
    /// Refused ten times the rate within a second: close the connection.
    Abuse,
}

pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    refused_in_window: u32,
    abuse_threshold: u32,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled: now,
            window_start: now,
            refused_in_window: 0,
            abuse_threshold: rate.saturating_mul(10),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.refused_in_window >= self.abuse_threshold { Verdict::Abuse } else { Verdict::Limited }
    }
}

/// Connections per source address, so that one host cannot take a node's
/// whole capacity. A permit is held for a connection's life.
pub struct ConnectionsPerIp {
    /// 0: no limit.
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's count; released on drop.
pub struct IpPermit {
    ip: IpAddr,
    counts: Arc<ConnectionsPerIp>,
}

impl ConnectionsPerIp {
    pub fn new(limit: usize) -> Self {
        Self { limit, held: Mutex::new(HashMap::new()) }
    }

    /// A permit for one more connection from `ip`, unless it holds the limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(ip).or_insert(0);
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpPermit { ip, counts: self.clone() })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_abuse() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 20, start);
        assert!((0..20).all(|_| limit.check(start) == Verdict::Allow));
        assert_eq!(limit.check(start), Verdict::Limited);
        // A tenth of a second later one more token has come.
        let later = start + Duration::from_millis(100);
        assert_eq!(limit.check(later), Verdict::Allow);
        assert_eq!(limit.check(later), Verdict::Limited);
        // 100 refusals (ten times the rate) within one second: abuse. Two
        // refusals so far, so 97 more are refused and the next is abuse.
        let verdicts: Vec<_> = (0..97).map(|_| limit.check(later)).collect();
        assert!(verdicts.iter().all(|v| *v == Verdict::Limited));
        assert_eq!(limit.check(later), Verdict::Abuse);
    }

    #[test]
    fn refusals_spread_over_seconds_are_not_abuse() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 10, start);
        for _ in 0..10 {
            limit.check(start);
        }
        for second in 1..5u64 {
            // Each second: 10 new tokens spent, then 60 refused: under 100.
            let now = start + Duration::from_secs(second);
            for _ in 0..10 {
                assert_eq!(limit.check(now), Verdict::Allow);
            }
            for _ in 0..60 {
                assert_eq!(limit.check(now), Verdict::Limited);
            }
        }
    }

    #[test]
    fn connections_per_ip_are_counted_until_dropped() {
        let per_ip = Arc::new(ConnectionsPerIp::new(2));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = per_ip.try_acquire(a).unwrap();
        let _second = per_ip.try_acquire(a).unwrap();
        assert!(per_ip.try_acquire(a).is_none());
        assert!(per_ip.try_acquire(b).is_some());
        drop(first);
        assert!(per_ip.try_acquire(a).is_some());
        let unlimited = Arc::new(ConnectionsPerIp::new(0));
        let held: Vec<_> = (0..1000).map(|_| unlimited.try_acquire(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
