//! The fast lane's memory of the last answer, row by row, so that a guest row that did
//! not change is not decoded again.
//!
//! Between two of pvestatd's broadcasts (every ~10 s) Proxmox answers
//! `/cluster/resources` with the same bytes for every guest; in a still cluster, always.
//! Decoding a row costs more than anything else the fast lane does with it, so the
//! builder keeps, per row position, a hash of the row's bytes and what it decided, and
//! reuses the state it reported when the same bytes come again at the same place.
//!
//! The reuse gives exactly the state a full decode would give:
//! - the row's bytes are the same (a keyed 64-bit hash, see `pve::row_hash`), and so is
//!   everything else the state is made of: the slow lane's and the agent lane's data
//!   (the same `Arc`s; another one clears the memory), the reporting rules, and the rates
//!   (the same counters give the same rates, see `RateMemory`);
//! - the previous view still holds the very state decided then (the same `Arc`, which
//!   that view keeps alive: no other state can sit at its address);
//! - what depends on the time is evaluated again as a decode would: `started` (a stalled
//!   uptime), the backup's staleness, and whether the state is due (`max_interval`, and
//!   a figure held back by `min_interval`): see `guest::still_reported`.
//!
//! Node and storage rows (a few dozen) are always decoded.
use std::sync::{Arc, Weak};

use super::{AgentData, GuestState, ReportRules, SlowData};

/// Per row of the last answer: what the builder decided (see the module doc). Kept by the
/// poller between polls; 32 bytes a row.
#[derive(Debug, Default)]
pub struct RowMemo {
    rows: Vec<MemoRow>,
    /// What the states were built with: other slow-lane or agent data (or rules) make
    /// every row count as changed. Weak: the memory keeps no data alive, and the address
    /// of an old `Arc` cannot be taken by a new one while this points to it.
    slow: Weak<SlowData>,
    agent: Weak<AgentData>,
    rules: Option<ReportRules>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct MemoRow {
    /// `pve::RawRow::hash` of the row.
    pub hash: u64,
    /// The state the row gave (`Arc::as_ptr`), compared, never followed; 0: none (not a
    /// guest row, or not one the builder keeps).
    pub state: usize,
    /// The row's `uptime` (`u64::MAX`: none).
    pub uptime: u64,
    pub vmid: u32,
    /// See [`GuestOutcome::threshold`](super::guest::GuestOutcome).
    pub threshold: bool,
}

impl MemoRow {
    /// A row the memory does not reuse.
    pub const NONE: MemoRow = MemoRow {
        hash: 0,
        state: 0,
        uptime: u64::MAX,
        vmid: 0,
        threshold: false,
    };

    pub fn uptime(&self) -> Option<u64> {
        (self.uptime != u64::MAX).then_some(self.uptime)
    }

    /// What to remember of a guest row that gave `state`; `NONE` for an uptime that
    /// cannot be kept.
    pub fn guest(hash: u64, uptime: Option<u64>, state: &Arc<GuestState>, threshold: bool) -> Self {
        if uptime == Some(u64::MAX) {
            return MemoRow::NONE;
        }
        MemoRow {
            hash,
            state: Arc::as_ptr(state) as usize,
            uptime: uptime.unwrap_or(u64::MAX),
            vmid: state.vmid,
            threshold,
        }
    }
}

impl RowMemo {
    /// Starts a build with this data: forgets every row if it differs from the last
    /// build's.
    pub(super) fn begin(
        &mut self,
        slow: &Arc<SlowData>,
        agent: &Arc<AgentData>,
        rules: &ReportRules,
    ) {
        let same = self.slow.as_ptr() == Arc::as_ptr(slow)
            && self.agent.as_ptr() == Arc::as_ptr(agent)
            && self.rules.as_ref() == Some(rules);
        if !same {
            self.rows.clear();
            self.slow = Arc::downgrade(slow);
            self.agent = Arc::downgrade(agent);
            self.rules = Some(*rules);
        }
    }

    /// The memory of row `index` when it had this hash.
    pub(super) fn get(&self, index: usize, hash: u64) -> Option<&MemoRow> {
        self.rows
            .get(index)
            .filter(|row| row.hash == hash && row.state != 0)
    }

    /// Remembers row `index` (rows come in order, from 0).
    pub(super) fn set(&mut self, index: usize, row: MemoRow) {
        match self.rows.get_mut(index) {
            Some(slot) => *slot = row,
            None => {
                debug_assert_eq!(index, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// The answer had `rows` rows.
    pub(super) fn finish(&mut self, rows: usize) {
        self.rows.truncate(rows);
    }

    /// Forgets every row (an answer that could not be read).
    pub fn clear(&mut self) {
        self.rows.clear();
    }

    /// How many rows are remembered (tests).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use crate::model::{
        AgentData, AgentInfo, ClusterView, RateMemory, ReportRules, RowAdded, RowMemo, SlowData,
        ViewBuilder,
    };
    use crate::pve::RawRow;

    /// xorshift64*: a reproducible stream of choices.
    struct Dice(u64);

    impl Dice {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// One guest of the little world, as its row says it.
    #[derive(Clone)]
    struct Guest {
        vmid: u32,
        status: &'static str,
        uptime: u64,
        cpu: f64,
        mem: u64,
        netin: u64,
        name: String,
        hastate: Option<&'static str>,
    }

    impl Guest {
        fn row(&self) -> String {
            let running = self.status == "running";
            let mut row = json!({
                "id": format!("qemu/{}", self.vmid), "type": "qemu", "vmid": self.vmid,
                "node": "pve1", "name": self.name, "status": self.status,
                "maxcpu": 2, "maxmem": 4u64 << 30, "maxdisk": 32u64 << 30, "disk": 0,
                "cpu": if running { self.cpu } else { 0.0 },
                "mem": if running { self.mem } else { 0 },
                "uptime": if running { self.uptime } else { 0 },
                "netin": self.netin, "netout": self.netin / 2, "diskread": 0, "diskwrite": 0,
            });
            if let Some(ha) = self.hastate {
                row["hastate"] = json!(ha);
            }
            row.to_string()
        }
    }

    /// The same view built twice per poll, decoding every row and through the row memory,
    /// with rows, time, slow-lane and agent data changing at random between polls, with
    /// `min_interval` off and on.
    #[test]
    fn the_row_memory_builds_exactly_the_view_a_full_decode_builds() {
        for (seed, min_interval) in [(1u64, 0u64), (2, 30), (3, 45)] {
            let rules = ReportRules {
                max_interval: Duration::from_secs(100),
                min_interval: Duration::from_secs(min_interval),
                backup_stale_after: Duration::from_secs(400),
                ..ReportRules::default()
            };
            let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut guests: Vec<Guest> = (0..16)
                .map(|i| Guest {
                    vmid: 100 + i,
                    status: if i % 5 == 4 { "stopped" } else { "running" },
                    uptime: 5_000 + u64::from(i) * 7,
                    cpu: 0.05,
                    mem: 1 << 30,
                    netin: 1 << 20,
                    name: format!("guest-{i}"),
                    hastate: (i == 3).then_some("started"),
                })
                .collect();
            let mut slow = Arc::new(SlowData::default());
            let mut agent: Arc<AgentData> = Arc::new(HashMap::new());
            let (mut rates_full, mut rates_memo) = (RateMemory::default(), RateMemory::default());
            let mut memo = RowMemo::default();
            let (mut full, mut memoed): (Option<ClusterView>, Option<ClusterView>) = (None, None);
            let mut now = 1_765_000_000.0;
            let mut reused = 0;
            for poll in 0..150 {
                // Time: mostly a poll interval, sometimes a long pause.
                now += [1.0, 5.0, 5.0, 10.0, 37.0, 120.0][dice.below(6) as usize];
                // pvestatd's broadcast (about every other poll) moves the running guests.
                if dice.chance(40) {
                    for guest in guests.iter_mut().filter(|g| g.status == "running") {
                        if !dice.chance(10) {
                            guest.uptime += 10; // else: stalled
                        }
                        guest.netin += dice.below(3) * 40_000;
                        match dice.below(10) {
                            0 => guest.cpu += 0.05, // 5 points: beyond the limit
                            1..=3 => guest.cpu += 0.001,
                            4 => guest.mem += 1 << 26, // 1.6 % of 4 GiB
                            _ => {}
                        }
                    }
                }
                if dice.chance(5) {
                    let guest = &mut guests[dice.below(16) as usize];
                    guest.status = if guest.status == "running" {
                        "stopped"
                    } else {
                        "running"
                    };
                    guest.uptime = if guest.status == "running" { 3 } else { 0 };
                }
                if dice.chance(3) {
                    let i = dice.below(16) as usize;
                    guests[i].name = format!("renamed-{poll}");
                }
                if dice.chance(2) {
                    // A reboot noticed late: the uptime jumped down.
                    let i = dice.below(16) as usize;
                    guests[i].uptime /= 3;
                }
                if dice.chance(3) {
                    // A guest moves to another place in the list.
                    let guest = guests.remove(dice.below(16) as usize);
                    guests.insert(dice.below(16) as usize, guest);
                }
                if dice.chance(5) {
                    let mut fresh = SlowData {
                        backups_read: true,
                        ..SlowData::default()
                    };
                    for guest in &guests {
                        if dice.chance(50) {
                            fresh
                                .last_backup
                                .insert(guest.vmid, now as u64 - dice.below(300));
                        }
                    }
                    slow = Arc::new(fresh);
                }
                if dice.chance(4) {
                    let mut fresh = AgentData::new();
                    fresh.insert(
                        guests[0].vmid,
                        AgentInfo {
                            responding: Some(true),
                            ip_addresses: vec![format!("10.0.0.{}", dice.below(250))],
                            ..AgentInfo::default()
                        },
                    );
                    agent = Arc::new(fresh);
                }
                let node = json!({"id": "node/pve1", "type": "node", "node": "pve1",
                    "status": "online", "uptime": 99_000, "maxcpu": 8})
                .to_string();
                let rows: Vec<String> = std::iter::once(node)
                    .chain(guests.iter().map(Guest::row))
                    .collect();

                let mut builder =
                    ViewBuilder::new("c", "", &slow, &mut rates_full, now, full.as_ref())
                        .reporting(rules)
                        .agent(&agent);
                for row in &rows {
                    builder.add(&RawRow::new(row).decode().unwrap());
                }
                let mut next_full = builder.finish();

                let mut builder =
                    ViewBuilder::new("c", "", &slow, &mut rates_memo, now, memoed.as_ref())
                        .reporting(rules)
                        .agent(&agent)
                        .memo(&mut memo, &slow, &agent);
                for row in &rows {
                    if let RowAdded::Reused(_) = builder.add_raw(RawRow::new(row)).unwrap() {
                        reused += 1;
                    }
                }
                let mut next_memoed = builder.finish();
                if next_full != next_memoed {
                    let differs = next_full
                        .guests
                        .iter()
                        .find(|(vmid, state)| next_memoed.guests.get(vmid) != Some(state));
                    panic!("seed {seed}, poll {poll}: {differs:?}");
                }

                // The poller's post-task status override: a new state in both views.
                if dice.chance(4) {
                    let vmid = guests[dice.below(16) as usize].vmid;
                    for view in [&mut next_full, &mut next_memoed] {
                        let guest = view.guests.get_mut(&vmid).unwrap();
                        let mut changed = (**guest).clone();
                        changed.status = "paused".into();
                        *guest = Arc::new(changed);
                    }
                }
                full = Some(next_full);
                memoed = Some(next_memoed);
            }
            assert!(reused > 400, "seed {seed}: only {reused} rows reused");
        }
    }

    #[test]
    fn a_row_that_does_not_decode_fails_and_clears_the_memory() {
        let slow = Arc::new(SlowData::default());
        let agent: Arc<AgentData> = Arc::new(HashMap::new());
        let mut rates = RateMemory::default();
        let mut memo = RowMemo::default();
        let good = r#"{"type":"qemu","vmid":100,"node":"pve1","status":"running","uptime":5}"#;
        let mut builder = ViewBuilder::new("c", "", &slow, &mut rates, 1.0e9, None)
            .agent(&agent)
            .memo(&mut memo, &slow, &agent);
        builder.add_raw(RawRow::new(good)).unwrap();
        let view = builder.finish();
        assert_eq!(memo.len(), 1);
        let mut builder = ViewBuilder::new("c", "", &slow, &mut rates, 1.0e9 + 5.0, Some(&view))
            .agent(&agent)
            .memo(&mut memo, &slow, &agent);
        assert!(matches!(
            builder.add_raw(RawRow::new(good)),
            Ok(RowAdded::Reused(_))
        ));
        assert!(builder
            .add_raw(RawRow::new(r#"{"type":"qemu","vmid":"x"}"#))
            .is_err());
        drop(builder);
        assert!(memo.is_empty());
    }
}
