//! Rates from counter deltas between polls, and the rounding that keeps idle objects
//! from republishing.
use std::collections::HashMap;

use super::compact::{OptF64, OptU64};

/// The previous counter samples of each guest, kept by the poller between polls so
/// rates can be computed from deltas.
#[derive(Clone, Debug, Default)]
pub struct RateMemory {
    samples: HashMap<u32, CounterSample>,
}

/// 80 bytes a guest with its key, not 144: the numbers are compact (see `compact`).
#[derive(Clone, Debug, PartialEq)]
struct CounterSample {
    /// The counters netin, netout, diskread, diskwrite.
    counters: [OptU64; 4],
    /// Poll time (seconds) when these counters were first seen.
    at: f64,
    /// Rates computed when these counters arrived; kept while the counters stay the same
    /// (Proxmox refreshes them only every ~10 s, so a faster poll sees repeats).
    rates: [OptF64; 4],
}

impl RateMemory {
    /// Rates for a guest's new counters at time `now`, updating the memory.
    pub(super) fn rates(
        &mut self,
        vmid: u32,
        counters: [Option<u64>; 4],
        now: f64,
    ) -> [Option<f64>; 4] {
        let rates = match self.samples.get(&vmid) {
            Some(prev) if prev.counters == counters.map(OptU64::new) => {
                return prev.rates.map(OptF64::get);
            }
            Some(prev) if now > prev.at => {
                let dt = now - prev.at;
                let mut rates = [None; 4];
                for i in 0..4 {
                    rates[i] = match (prev.counters[i].get(), counters[i]) {
                        // A counter that went down was reset (guest restarted): no honest rate.
                        (Some(a), Some(b)) if b >= a => Some(round_rate((b - a) as f64 / dt)),
                        _ => None,
                    };
                }
                rates
            }
            _ => [None; 4],
        };
        self.samples.insert(
            vmid,
            CounterSample {
                counters: counters.map(OptU64::new),
                at: now,
                rates: rates.map(OptF64::new),
            },
        );
        rates
    }

    /// Forget one guest's samples (it stopped: its next start begins afresh).
    pub(super) fn forget(&mut self, vmid: u32) {
        self.samples.remove(&vmid);
    }

    /// Forget guests that no longer exist, so the memory does not grow forever.
    pub(super) fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.samples.retain(|vmid, _| alive(*vmid));
    }
}

/// Percent with one decimal: precise enough for a dashboard, coarse enough that an idle
/// guest does not republish on every poll.
pub fn round_percent(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Rates keep two significant digits (and whole bytes below 100 B/s): rates jitter on
/// every sample, and a dashboard needs no more.
pub fn round_rate(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 0.0;
    }
    if value < 100.0 {
        return value.round();
    }
    let magnitude = 10f64.powi(value.log10().floor() as i32 - 1);
    (value / magnitude).round() * magnitude
}

pub(super) fn percent(part: Option<u64>, whole: Option<u64>) -> Option<f64> {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0 => Some(round_percent(p as f64 * 100.0 / w as f64)),
        _ => None,
    }
}
