//! Reporting rules, like Zigbee attribute reporting: an object's state is reported (kept
//! in the view, and so published) when a field changes by more than its reportable change,
//! and at least every `max_interval` otherwise. Between reports the view keeps the state
//! last reported, so the publisher sees nothing to do.
//!
//! Each state type classifies every one of its fields in one function that destructures
//! it (`GuestDraft::needs_report`, [`node_needs_report`](super::node),
//! [`storage_needs_report`](super::storage)), so a new field does not compile until it is
//! put in one of three groups:
//! - always: identity, status, names, node, lock, tags, sizes, versions, `started`: any
//!   change is reported;
//! - threshold: cpu, memory, disk use, rates, load: reported beyond their reportable change;
//! - ride along: raw counters, `uptime`, figures derived from others (`mem_percent`,
//!   `avail`): sent with every report, never the reason for one.

use std::time::Duration;

/// The reportable changes (config `[reporting]`). A change must be *more than* the limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportRules {
    /// Every state is reported again at least this often (so no value is older).
    pub max_interval: Duration,
    /// A figure beyond its reportable change waits until the state is this old (Zigbee's
    /// minimum interval); zero, the default: it is reported at once. Fields that always
    /// count never wait.
    pub min_interval: Duration,
    /// CPU, in percentage points.
    pub cpu: f64,
    /// Memory and swap in use, in percent of their total.
    pub mem_percent: f64,
    /// Network and disk rates, in percent of the rate last reported (from or to zero
    /// always counts)...
    pub rates: f64,
    /// ...and at least this many bytes per second, so background noise does not count.
    pub rates_floor: f64,
    /// Disk and storage use, in percent of their total.
    pub storage_percent: f64,
    /// Load average (any of the three).
    pub loadavg: f64,
    /// A guest's `backup_stale` turns true when its newest backup is older than this
    /// (config `backup.stale_after`).
    pub backup_stale_after: Duration,
}

impl ReportRules {
    /// The defaults of `[reporting]` (README: Reporting).
    pub const DEFAULT: ReportRules = ReportRules {
        max_interval: Duration::from_secs(300),
        min_interval: Duration::ZERO,
        cpu: 2.0,
        mem_percent: 1.0,
        rates: 10.0,
        rates_floor: 10_240.0,
        storage_percent: 0.5,
        loadavg: 0.5,
        backup_stale_after: Duration::from_secs(48 * 3600),
    };
}

impl Default for ReportRules {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Float noise must not turn "exactly the limit" into "more than the limit".
const EPSILON: f64 = 1e-9;

impl ReportRules {
    /// A figure in the unit of its limit (percentage points, load) moved beyond `limit`;
    /// appearing or disappearing always counts.
    pub(super) fn moved(old: Option<f64>, new: Option<f64>, limit: f64) -> bool {
        match (old, new) {
            (Some(a), Some(b)) => (b - a).abs() > limit + EPSILON,
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    /// A part of `whole` (memory, disk, storage in use) moved beyond `percent` of it.
    /// Without a whole there is no scale: the part rides along.
    pub(super) fn share_moved(
        old: Option<u64>,
        new: Option<u64>,
        whole: Option<u64>,
        percent: f64,
    ) -> bool {
        match (old, new, whole) {
            (Some(a), Some(b), Some(w)) if w > 0 => {
                (b as f64 - a as f64).abs() * 100.0 / w as f64 > percent + EPSILON
            }
            (Some(_), Some(_), _) => false,
            (a, b, _) => a.is_some() != b.is_some(),
        }
    }

    /// A rate moved beyond the rates rule: from or to zero, or by more than `rates` percent
    /// of the rate reported and more than `rates_floor`.
    pub(super) fn rate_moved(&self, old: Option<f64>, new: Option<f64>) -> bool {
        match (old, new) {
            (Some(a), Some(b)) => {
                let delta = (b - a).abs();
                (a == 0.0) != (b == 0.0)
                    || (delta > a.abs() * self.rates / 100.0 + EPSILON
                        && delta > self.rates_floor + EPSILON)
            }
            (a, b) => a.is_some() != b.is_some(),
        }
    }

    pub(super) fn rates_moved(&self, old: [Option<f64>; 4], new: [Option<f64>; 4]) -> bool {
        old.iter().zip(new).any(|(a, b)| self.rate_moved(*a, b))
    }

    /// Is a state reported at `as_of`, whose fields that always count are unchanged,
    /// reported again at `now`? When a figure moved beyond its reportable change
    /// (`threshold`) and `min_interval` has passed, or when it is due (see [`Self::due`]).
    pub(super) fn threshold_or_due(
        &self,
        threshold: bool,
        as_of: f64,
        now: f64,
        phase: f64,
    ) -> bool {
        (threshold && now - as_of >= self.min_interval.as_secs_f64()) || self.due(as_of, now, phase)
    }

    /// Is a state reported at `as_of` due again at `now` (seconds)? Each object has its
    /// own slot in the `max_interval` cycle (`phase`, 0 to 1), so the refreshes of a big
    /// cluster spread over the interval instead of coming all in one poll; and a state is
    /// never refreshed less than half an interval after it was reported. So a state is at
    /// most `max_interval` (plus a poll) old.
    pub(super) fn due(&self, as_of: f64, now: f64, phase: f64) -> bool {
        let interval = self.max_interval.as_secs_f64();
        if interval <= 0.0 {
            return true;
        }
        let slot = |t: f64| (t / interval - phase).floor();
        now - as_of >= interval / 2.0 && slot(now) > slot(as_of)
    }
}

/// An object's slot in the `max_interval` cycle, from its id: consecutive vmids land
/// far apart (golden-ratio steps), so a cluster's refreshes spread evenly.
pub(super) fn phase_of_vmid(vmid: u32) -> f64 {
    (f64::from(vmid) * 0.618_033_988_749_894_9).fract()
}

/// The same from a name (FNV-1a: stable across runs and Rust versions).
pub(super) fn phase_of_name(parts: &[&str]) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Grid of `started` (seconds): restarts of the bridge recompute it from `now - uptime`,
/// which lags the truth by up to pvestatd's 10 s; a coarse grid mostly lands on the same
/// value again.
const STARTED_GRID: u64 = 60;
/// `started` is kept while a new reading is within this of it: `now - uptime` jitters
/// with poll timing and pvestatd's cadence (uptime refreshes only every ~10 s).
const STARTED_TOLERANCE: u64 = 120;

/// The boot time (Unix seconds) from `uptime` at `now`, stable against jitter: the
/// previous value (`before`: started, uptime as reported) is kept unless the reading
/// moved beyond the tolerance or the uptime went down (a reboot), and while the uptime
/// is still the one reported.
pub(super) fn started(
    now: f64,
    uptime: Option<u64>,
    before: Option<(Option<u64>, Option<u64>)>,
) -> Option<u64> {
    let uptime = uptime.filter(|u| *u > 0)?;
    let raw = now - uptime as f64;
    if raw <= 0.0 {
        return None;
    }
    let fresh = ((raw / STARTED_GRID as f64).round() as u64) * STARTED_GRID;
    match before {
        // The same uptime as reported: pvestatd has not refreshed it since (it stalls
        // while a storage hangs), so `now - uptime` says nothing new.
        Some((Some(kept), reported_uptime)) if reported_uptime == Some(uptime) => Some(kept),
        Some((Some(kept), reported_uptime))
            if fresh.abs_diff(kept) <= STARTED_TOLERANCE
                && reported_uptime.is_none_or(|u| uptime >= u) =>
        {
            Some(kept)
        }
        _ => Some(fresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_counts_only_beyond_its_reportable_change() {
        assert!(
            !ReportRules::moved(Some(5.0), Some(7.0), 2.0),
            "exactly 2 points"
        );
        assert!(
            !ReportRules::moved(Some(1.1), Some(3.1), 2.0),
            "float noise"
        );
        assert!(ReportRules::moved(Some(5.0), Some(7.1), 2.0));
        assert!(
            ReportRules::moved(Some(7.1), Some(5.0), 2.0),
            "down as well as up"
        );
        assert!(ReportRules::moved(None, Some(0.0), 2.0), "appearing counts");
        assert!(
            ReportRules::moved(Some(3.0), None, 2.0),
            "disappearing counts"
        );
        assert!(!ReportRules::moved(None, None, 0.0));
    }

    #[test]
    fn memory_and_storage_count_in_percent_of_their_total() {
        let gib = 1u64 << 30;
        // 1 % of 4 GiB is ~41 MiB.
        let mem = |a, b| ReportRules::share_moved(Some(a), Some(b), Some(4 * gib), 1.0);
        assert!(!mem(gib, gib + 40 * (1 << 20)));
        assert!(mem(gib, gib + 42 * (1 << 20)));
        assert!(mem(gib + 42 * (1 << 20), gib), "down as well as up");
        // 0.5 % of 800 GiB = 4 GiB.
        let storage = |a, b| ReportRules::share_moved(Some(a), Some(b), Some(800 * gib), 0.5);
        assert!(!storage(120 * gib, 124 * gib));
        assert!(storage(120 * gib, 125 * gib));
        // No total: no scale, the figure rides along; presence still counts.
        assert!(!ReportRules::share_moved(Some(1), Some(2), None, 1.0));
        assert!(!ReportRules::share_moved(Some(1), Some(2), Some(0), 1.0));
        assert!(ReportRules::share_moved(None, Some(2), None, 1.0));
    }

    #[test]
    fn rates_count_beyond_ten_percent_and_the_floor_or_from_and_to_zero() {
        let rules = ReportRules::default();
        let moved = |a: f64, b: f64| rules.rate_moved(Some(a), Some(b));
        assert!(!moved(200_000.0, 219_000.0), "9.5 %");
        assert!(moved(200_000.0, 221_000.0), "10.5 %");
        assert!(moved(200_000.0, 179_000.0), "down 10.5 %");
        assert!(
            !moved(40_000.0, 50_000.0),
            "25 % but under the 10 KiB/s floor"
        );
        assert!(moved(40_000.0, 51_000.0));
        assert!(moved(0.0, 300.0), "from zero");
        assert!(moved(300.0, 0.0), "to zero");
        assert!(!moved(0.0, 0.0));
        assert!(rules.rate_moved(None, Some(0.0)), "a first rate counts");
        assert!(rules.rate_moved(Some(5.0), None), "a counter reset counts");
        let no_floor = ReportRules {
            rates_floor: 0.0,
            ..rules
        };
        assert!(no_floor.rate_moved(Some(100.0), Some(111.0)));
        assert!(!no_floor.rate_moved(Some(100.0), Some(110.0)));
        assert!(rules.rates_moved([Some(0.0); 4], [Some(0.0), Some(0.0), Some(1.0), Some(0.0)]));
        assert!(!rules.rates_moved([Some(0.0); 4], [Some(0.0); 4]));
    }

    #[test]
    fn a_state_is_due_once_per_interval_in_its_own_slot() {
        let rules = ReportRules {
            max_interval: Duration::from_secs(100),
            ..ReportRules::default()
        };
        // Slot at 30 s into each 100 s cycle.
        let phase = 0.3;
        let reported = 1_000.0;
        assert!(!rules.due(reported, 1_029.0, phase));
        assert!(
            !rules.due(reported, 1_031.0, phase),
            "within half an interval"
        );
        assert!(
            rules.due(reported, 1_050.0, phase),
            "its slot passed, half an interval old"
        );
        // Reported just after its slot: due at the next slot, a full interval later.
        assert!(!rules.due(1_031.0, 1_129.0, phase));
        assert!(rules.due(1_031.0, 1_131.0, phase));
        // Never older than the interval, whatever the phase.
        for phase in [0.0, 0.01, 0.25, 0.5, 0.99] {
            for reported in [0.0, 12.5, 49.9, 50.0, 77.7] {
                assert!(
                    rules.due(reported, reported + 100.0, phase),
                    "{phase} {reported}"
                );
            }
        }
    }

    #[test]
    fn min_interval_holds_back_figures_but_not_a_due_refresh() {
        let rules = ReportRules {
            max_interval: Duration::from_secs(100),
            min_interval: Duration::from_secs(30),
            ..ReportRules::default()
        };
        assert!(!rules.threshold_or_due(true, 1_000.0, 1_029.0, 0.3));
        assert!(rules.threshold_or_due(true, 1_000.0, 1_030.0, 0.3));
        assert!(!rules.threshold_or_due(false, 1_000.0, 1_040.0, 0.3));
        assert!(rules.threshold_or_due(false, 1_000.0, 1_100.0, 0.3), "due");
        let at_once = ReportRules::default();
        assert!(at_once.threshold_or_due(true, 1_000.0, 1_000.5, 0.3));
    }

    #[test]
    fn refresh_slots_spread_consecutive_guests_and_names_evenly() {
        let mut buckets = [0u32; 10];
        for vmid in 100..1100 {
            buckets[(phase_of_vmid(vmid) * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|b| (90..=110).contains(b)),
            "{buckets:?}"
        );
        let a = phase_of_name(&["pve1", "local"]);
        assert_eq!(a, phase_of_name(&["pve1", "local"]));
        assert_ne!(a, phase_of_name(&["pve1l", "ocal"]));
        assert!((0.0..1.0).contains(&a));
    }

    #[test]
    fn started_is_boot_time_on_a_minute_grid_and_does_not_move_with_jitter() {
        let boot = 1_765_000_000.0 + 17.0;
        let first = started(boot + 5_000.0, Some(5_000), None).unwrap();
        assert_eq!(first % 60, 0);
        assert!((first as f64 - boot).abs() <= 30.0);
        // Uptime lags (pvestatd refreshes it every ~10 s) and polls jitter: kept.
        for (now, uptime) in [(5_012.0, 5_000), (5_020.0, 5_019), (5_090.0, 5_010)] {
            let again = started(boot + now, Some(uptime), Some((Some(first), Some(5_000))));
            assert_eq!(again, Some(first), "{now} {uptime}");
        }
        // pvestatd stalls (a hung storage): uptime stands still while time goes on.
        let stalled = started(
            boot + 5_600.0,
            Some(5_000),
            Some((Some(first), Some(5_000))),
        );
        assert_eq!(stalled, Some(first));
        // A reboot: uptime went down.
        let rebooted = started(boot + 5_100.0, Some(40), Some((Some(first), Some(5_000))));
        assert!(rebooted.unwrap() > first + 4_000);
        // A reboot noticed late: the boot time moved beyond the tolerance.
        let late = started(
            boot + 9_000.0,
            Some(6_000),
            Some((Some(first), Some(5_000))),
        );
        assert_eq!(late, Some(((boot + 3_000.0) / 60.0).round() as u64 * 60));
        // Not running, or no uptime: no boot time.
        assert_eq!(started(boot, Some(0), None), None);
        assert_eq!(started(boot, None, Some((Some(first), None))), None);
        assert_eq!(started(10.0, Some(100), None), None, "before 1970");
    }
}
