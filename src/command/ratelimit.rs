//! Token buckets that bound how many commands the bridge accepts, overall and per guest,
//! so a flood on the command topics (a runaway automation, a hostile client) cannot turn
//! into a flood of Proxmox calls or of result messages.

use std::collections::HashMap;
use std::time::Instant;

/// Commands per second, sustained, for the whole bridge.
pub const OVERALL_RATE: f64 = 20.0;
/// Commands the whole bridge takes in one burst.
pub const OVERALL_BURST: f64 = 40.0;
/// Commands per second, sustained, for one guest.
pub const GUEST_RATE: f64 = 2.0;
/// Commands one guest takes in one burst.
pub const GUEST_BURST: f64 = 10.0;

/// A classic token bucket, with time passed in so it can be tested without sleeping.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }
}

/// The overall bucket and one per guest (forgotten once full again, so the map stays small).
#[derive(Debug)]
pub struct RateLimiter {
    overall: Bucket,
    guests: HashMap<(String, u32), Bucket>,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        RateLimiter {
            overall: Bucket::new(OVERALL_RATE, OVERALL_BURST, now),
            guests: HashMap::new(),
        }
    }

    /// `Err(reason)` when this command is over a limit.
    pub fn check(&mut self, cluster: &str, vmid: u32, now: Instant) -> Result<(), String> {
        if self.guests.len() > 10_000 {
            self.guests.retain(|_, b| !b.full(now));
        }
        let guest = self
            .guests
            .entry((cluster.to_string(), vmid))
            .or_insert_with(|| Bucket::new(GUEST_RATE, GUEST_BURST, now));
        if !guest.take(now) {
            return Err(format!(
                "rate limited: at most {GUEST_BURST} commands at once and {GUEST_RATE} per second per guest"
            ));
        }
        if !self.overall.take(now) {
            return Err(format!(
                "rate limited: the bridge takes at most {OVERALL_BURST} commands at once and {OVERALL_RATE} per second"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_guest_gets_its_burst_then_two_per_second() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0);
        for _ in 0..10 {
            assert!(limiter.check("c", 100, t0).is_ok());
        }
        assert!(limiter
            .check("c", 100, t0)
            .unwrap_err()
            .contains("per guest"));
        // another guest is not affected
        assert!(limiter.check("c", 101, t0).is_ok());
        assert!(limiter
            .check("c", 100, t0 + Duration::from_millis(500))
            .is_ok());
        assert!(limiter
            .check("c", 100, t0 + Duration::from_millis(550))
            .is_err());
    }

    #[test]
    fn the_whole_bridge_is_bounded_too() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0);
        let accepted = (0..100u32)
            .filter(|vmid| limiter.check("c", 100 + vmid, t0).is_ok())
            .count();
        assert_eq!(accepted, OVERALL_BURST as usize);
        let later = t0 + Duration::from_secs(1);
        let accepted = (200..300u32)
            .filter(|vmid| limiter.check("c", *vmid, later).is_ok())
            .count();
        assert_eq!(accepted, OVERALL_RATE as usize);
    }
}
