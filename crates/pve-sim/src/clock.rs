//! The stats clock: which instant's figures each endpoint shows.
//!
//! On a real host pvestatd gathers every guest's, node's and storage's figures about
//! every 10 s and broadcasts them; `/cluster/resources` and `/nodes` show the last
//! broadcast, while `status/current` and node status read the live values. Its loop
//! sleeps between rounds, so the broadcasts drift by a few hundred milliseconds and are
//! not aligned with anything a client does. The simulator imitates that:
//! - the windows count from an *epoch* that starts at a random point of the first
//!   interval (a per-simulator offset, so a bridge started with the simulator does not
//!   poll in step with the broadcasts);
//! - each broadcast after the first comes up to [`JITTER`] of an interval late;
//! - a *frozen* clock shows one instant forever, on every endpoint, for tests and the
//!   benchmark's still world.

use std::time::Duration;

/// How late a broadcast may come, as a fraction of the interval (0.5 s at 10 s).
pub(crate) const JITTER: f64 = 0.05;

/// Which instant's figures the simulator serves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatsClock {
    /// How often cluster-wide figures refresh (pvestatd: 10 s); zero = live.
    pub interval: Duration,
    /// Unix time the windows count from.
    pub epoch: f64,
    /// Seeds the per-broadcast lateness.
    pub seed: u64,
    /// Every figure is the one of this instant (frozen mode).
    pub frozen_at: Option<f64>,
}

impl StatsClock {
    /// A moving clock whose first window began `offset` seconds before `now`.
    pub fn moving(interval: Duration, now: f64, offset: f64, seed: u64) -> Self {
        Self {
            interval,
            epoch: now - offset,
            seed,
            frozen_at: None,
        }
    }

    /// Live figures everywhere (no broadcast windows).
    #[cfg(test)]
    pub fn live() -> Self {
        Self {
            interval: Duration::ZERO,
            epoch: 0.0,
            seed: 0,
            frozen_at: None,
        }
    }

    /// When broadcast `k` (counted from the epoch) happened.
    fn broadcast(&self, k: f64, interval: f64) -> f64 {
        let late = if k <= 0.0 {
            0.0
        } else {
            // splitmix64 of (seed, k): reproducible, uncorrelated between broadcasts.
            let mut z = self
                .seed
                .wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        };
        self.epoch + k * interval + late * JITTER * interval
    }

    /// The instant whose figures `/cluster/resources` and `/nodes` show: the last
    /// broadcast at or before `now`.
    pub fn stats_time(&self, now: f64) -> f64 {
        if let Some(frozen) = self.frozen_at {
            return frozen;
        }
        let interval = self.interval.as_secs_f64();
        if interval <= 0.0 {
            return now;
        }
        let k = ((now - self.epoch).max(0.0) / interval).floor();
        let at = self.broadcast(k, interval);
        if now < at && k > 0.0 {
            self.broadcast(k - 1.0, interval)
        } else {
            at
        }
    }

    /// The instant whose figures the live endpoints (`status/current`, node status,
    /// storage status) show: `now`, or the frozen instant.
    pub fn live_time(&self, now: f64) -> f64 {
        self.frozen_at.unwrap_or(now)
    }

    /// Freezes the figures as they are shown at `now`, or lets them move again. A clock
    /// that thaws keeps its epoch: the broadcasts go on at their cadence.
    pub fn set_frozen(&mut self, frozen: bool, now: f64) {
        self.frozen_at = frozen.then(|| self.frozen_at.unwrap_or(self.stats_time(now)));
    }

    /// A new interval, counted from `now` (a long interval set by a test then freezes the
    /// figures from that moment on, not from the last wall-clock multiple).
    pub fn set_interval(&mut self, interval: Duration, now: f64) {
        self.interval = interval;
        self.epoch = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ten_seconds(epoch: f64) -> StatsClock {
        StatsClock {
            interval: Duration::from_secs(10),
            epoch,
            seed: 42,
            frozen_at: None,
        }
    }

    #[test]
    fn stats_windows_count_from_the_epoch_not_from_wall_clock_multiples() {
        let clock = StatsClock {
            interval: Duration::from_secs(3600),
            epoch: 7_199.0,
            seed: 1,
            frozen_at: None,
        };
        // 7200 is a wall-clock hour boundary; the window that began at 7199 goes on.
        assert_eq!(clock.stats_time(7_199.5), 7_199.0);
        assert_eq!(clock.stats_time(7_201.0), 7_199.0);
        assert_eq!(clock.stats_time(10_798.0), 7_199.0);
        assert_eq!(StatsClock::live().stats_time(7_201.5), 7_201.5);
    }

    #[test]
    fn broadcasts_come_once_per_interval_and_up_to_the_jitter_late() {
        let clock = ten_seconds(1_000.0);
        let mut shown = Vec::new();
        let mut t = 1_000.0;
        while t < 1_000.0 + 600.0 {
            shown.push(clock.stats_time(t));
            t += 0.05;
        }
        shown.dedup();
        // One instant per broadcast, in order, each within its window's jitter.
        assert_eq!(shown.len(), 60);
        for (k, at) in shown.iter().enumerate() {
            let nominal = 1_000.0 + 10.0 * k as f64;
            assert!(
                *at >= nominal && *at <= nominal + 10.0 * JITTER,
                "{k}: {at}"
            );
        }
        let late: Vec<bool> = shown
            .iter()
            .enumerate()
            .map(|(k, at)| at - (1_000.0 + 10.0 * k as f64) > 1e-9)
            .collect();
        assert!(
            late.iter().filter(|l| **l).count() > 50,
            "jitter is applied"
        );
    }

    #[test]
    fn the_window_shown_never_goes_back() {
        let clock = ten_seconds(500.0);
        let mut last = 0.0;
        let mut t = 400.0;
        while t < 2_000.0 {
            let at = clock.stats_time(t);
            assert!(at >= last && at <= t.max(500.0), "{t}: {at} after {last}");
            last = at;
            t += 0.01;
        }
    }

    #[test]
    fn a_frozen_clock_shows_one_instant_everywhere_until_thawed() {
        let mut clock = ten_seconds(1_000.0);
        let shown = clock.stats_time(1_015.0);
        clock.set_frozen(true, 1_015.0);
        for t in [1_015.0, 1_025.0, 5_000.0, 1e9] {
            assert_eq!(clock.stats_time(t), shown);
            assert_eq!(clock.live_time(t), shown);
        }
        // Freezing again keeps the first instant.
        clock.set_frozen(true, 9_000.0);
        assert_eq!(clock.stats_time(9_000.0), shown);
        clock.set_frozen(false, 9_000.0);
        assert!(clock.stats_time(9_000.0) > 8_990.0);
        assert_eq!(clock.live_time(9_000.5), 9_000.5);
    }
}
