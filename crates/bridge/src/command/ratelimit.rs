//! Token buckets that bound how many commands the bridge accepts, overall and per guest,
//! so a flood on the command topics (a runaway automation, a hostile client) cannot turn
//! into a flood of Proxmox calls or of result messages.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

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

/// How long one result stands for every refusal of its kind: a guest over its limit gets
/// one `rate limited` result per window, and the whole bridge over its limit one too, not
/// one per message (a flood would otherwise turn into a flood of results).
pub const NOTICE_WINDOW: Duration = Duration::from_secs(10);

/// Guests tracked at most. Full buckets are forgotten first; past this even busy ones
/// are, so a flood of distinct topics cannot grow the map (the overall bucket still
/// bounds what gets through).
const MAX_TRACKED: usize = 10_000;

/// A command over a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The first refusal of its guest (or, for the overall limit, of the bridge) in this
    /// [`NOTICE_WINDOW`]: it gets a result; the others get none.
    pub notify: bool,
}

/// One guest's bucket and when its last refusal was reported.
#[derive(Clone, Debug)]
struct GuestLimit {
    bucket: Bucket,
    noticed: Option<Instant>,
}

/// Whether a refusal noticed at `last` may be reported again `now`; records it if so.
fn notice_due(last: &mut Option<Instant>, now: Instant) -> bool {
    let due = last.is_none_or(|t| now.saturating_duration_since(t) >= NOTICE_WINDOW);
    if due {
        *last = Some(now);
    }
    due
}

/// The overall bucket and one per guest. Guests are keyed by a hash of (cluster, vmid),
/// not the cluster's text: the cluster comes from the topic, and a flood of long,
/// distinct topic names must not be kept in memory.
#[derive(Debug)]
pub struct RateLimiter {
    overall: Bucket,
    overall_noticed: Option<Instant>,
    guests: HashMap<u64, GuestLimit>,
    hasher: RandomState,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        RateLimiter {
            overall: Bucket::new(OVERALL_RATE, OVERALL_BURST, now),
            overall_noticed: None,
            guests: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// `Err` when this command is over a limit.
    pub fn check(&mut self, cluster: &str, vmid: u32, now: Instant) -> Result<(), Refusal> {
        if self.guests.len() >= MAX_TRACKED {
            self.guests.retain(|_, g| !g.bucket.full(now));
            if self.guests.len() >= MAX_TRACKED {
                self.guests.clear();
            }
        }
        let key = self.hasher.hash_one((cluster, vmid));
        let guest = self.guests.entry(key).or_insert_with(|| GuestLimit {
            bucket: Bucket::new(GUEST_RATE, GUEST_BURST, now),
            noticed: None,
        });
        if !guest.bucket.take(now) {
            return Err(Refusal {
                reason: format!(
                    "rate limited: at most {GUEST_BURST} commands at once and {GUEST_RATE} per second per guest"
                ),
                notify: notice_due(&mut guest.noticed, now),
            });
        }
        if !self.overall.take(now) {
            return Err(Refusal {
                reason: format!(
                    "rate limited: the bridge takes at most {OVERALL_BURST} commands at once and {OVERALL_RATE} per second"
                ),
                notify: notice_due(&mut self.overall_noticed, now),
            });
        }
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.guests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .reason
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

    #[test]
    fn a_limited_guest_gets_one_result_per_window_not_one_per_message() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0);
        for _ in 0..10 {
            limiter.check("c", 100, t0).unwrap();
        }
        let notices = |limiter: &mut RateLimiter, vmid: u32, at: Instant| {
            (0..50)
                .filter_map(|_| limiter.check("c", vmid, at).err())
                .filter(|r| r.notify)
                .count()
        };
        assert_eq!(notices(&mut limiter, 100, t0), 1);
        assert_eq!(notices(&mut limiter, 100, t0 + Duration::from_secs(5)), 0);
        assert_eq!(notices(&mut limiter, 100, t0 + NOTICE_WINDOW), 1);
        // The overall limit: one result per window for the whole bridge.
        let mut limiter = RateLimiter::new(t0);
        let refusals: Vec<Refusal> = (0..500u32)
            .filter_map(|i| limiter.check("c", 1000 + i, t0).err())
            .collect();
        assert_eq!(refusals.len(), 500 - OVERALL_BURST as usize);
        assert_eq!(refusals.iter().filter(|r| r.notify).count(), 1);
    }

    #[test]
    fn a_flood_of_distinct_guests_keeps_the_map_bounded() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0);
        let long = "x".repeat(1000);
        for i in 0..(3 * MAX_TRACKED as u32) {
            let _ = limiter.check(&format!("{long}{i}"), 100, t0);
        }
        assert!(limiter.tracked() <= MAX_TRACKED, "{}", limiter.tracked());
    }
}
