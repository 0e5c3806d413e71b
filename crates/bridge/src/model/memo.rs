//! The fast lane's memory of the last answer, row by row, so that a guest row that did
//! not change is not decoded again.
//!
//! Between two of pvestatd's broadcasts (every ~10 s) Proxmox answers
//! `/cluster/resources` with the same rows for every guest; in a still cluster, always.
//! Not with the same bytes, though: it writes each row's keys, and the guest rows, in Perl
//! hash order, another one on every call. Decoding a row costs more than anything else
//! the fast lane does with it, so the builder keeps, for each guest row, a hash of its
//! members that does not depend on their order (`pve::RawRow::hash`) and what it decided,
//! and reuses the state it reported when a row with the same members comes again,
//! wherever it is in the answer.
//!
//! The reuse gives exactly the state a full decode would give:
//! - the row's members are the same (a keyed 64-bit hash, see `pve::RawRow::hash`), and
//!   so are the reporting rules (others clear the memory) and the rates (the same
//!   counters give the same rates, see `RateMemory`);
//! - the previous view still holds the very state decided then (the same `Arc`, which
//!   that view keeps alive: no other state can sit at its address);
//! - what the slow and agent lanes say of the guest is compared with that state as a
//!   decode compares it, unless their data is the very data of the last build (the same
//!   `Arc`s: it was compared then);
//! - what depends on the time is evaluated again as a decode would: `started` (a stalled
//!   uptime), the backup's staleness, and whether the state is due (`max_interval`, and
//!   a figure held back by `min_interval`): see `guest::still_reported`.
//!
//! Node and storage rows (a few dozen) are always decoded.
use std::sync::{Arc, Weak};

use super::guest::Remembered;
use super::{AgentData, GuestState, ReportRules, SlowData};

/// The guest rows of the last answer: what the builder decided (see the module doc).
/// Kept by the poller between polls; 32 bytes a guest.
#[derive(Debug, Default)]
pub struct RowMemo {
    /// The last build's guest rows, by hash (looked up by the build that runs).
    rows: Vec<MemoRow>,
    /// The guest rows of the build that runs; its `rows` when it finishes.
    next: Vec<MemoRow>,
    /// The slow-lane and agent data of the last build. Weak: the memory keeps no data
    /// alive, and the address of an old `Arc` cannot be taken by a new one while this
    /// points to it.
    slow: Weak<SlowData>,
    agent: Weak<AgentData>,
    /// This build has the last build's slow-lane and agent data.
    lanes_same: bool,
    /// Other rules make every row count as changed.
    rules: Option<ReportRules>,
    /// The answer these rows are of, when it was read whole by
    /// [`ViewBuilder::add_answer`](super::ViewBuilder::add_answer); taken by the build
    /// that starts, and given back by it only if it read an answer whole again.
    answer: Option<Answer>,
    /// Answers read through the remembered rows (tests).
    #[cfg(test)]
    pub(super) replayed: usize,
}

/// One `/cluster/resources` answer, by its length and a hash of all its bytes, with
/// where its rows are and their hashes: the same answer again (a view rebuilt from it)
/// need not be scanned for them (16 bytes a row).
#[derive(Debug)]
pub(super) struct Answer {
    pub len: usize,
    pub hash: u64,
    /// The rows, in order.
    pub rows: Vec<AnswerRow>,
}

/// Where one row of an [`Answer`] is, and its `pve::RawRow::hash`.
#[derive(Clone, Copy, Debug)]
pub(super) struct AnswerRow {
    pub start: u32,
    pub end: u32,
    pub hash: u64,
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
    /// See [`GuestOutcome`](super::guest::GuestOutcome).
    pub threshold: bool,
    pub threshold_rest: bool,
}

impl MemoRow {
    /// A row the memory does not reuse.
    pub const NONE: MemoRow = MemoRow {
        hash: 0,
        state: 0,
        uptime: u64::MAX,
        vmid: 0,
        threshold: false,
        threshold_rest: false,
    };

    pub fn remembered(&self) -> Remembered {
        Remembered {
            uptime: (self.uptime != u64::MAX).then_some(self.uptime),
            threshold: self.threshold,
            threshold_rest: self.threshold_rest,
        }
    }

    /// What to remember of a guest row that gave `state`; `NONE` for an uptime that
    /// cannot be kept.
    pub fn guest(hash: u64, state: &Arc<GuestState>, remembered: Remembered) -> Self {
        if remembered.uptime == Some(u64::MAX) {
            return MemoRow::NONE;
        }
        MemoRow {
            hash,
            state: Arc::as_ptr(state) as usize,
            uptime: remembered.uptime.unwrap_or(u64::MAX),
            vmid: state.vmid,
            threshold: remembered.threshold,
            threshold_rest: remembered.threshold_rest,
        }
    }
}

impl RowMemo {
    /// Starts a build with this data (see [`RowMemo::lanes_same`]); other rules than
    /// the last build's forget every row.
    pub(super) fn begin(
        &mut self,
        slow: &Arc<SlowData>,
        agent: &Arc<AgentData>,
        rules: &ReportRules,
    ) {
        if self.rules.as_ref() != Some(rules) {
            self.rows.clear();
            self.rules = Some(*rules);
        }
        // A build that failed left its rows half made.
        self.next.clear();
        self.lanes_same =
            self.slow.as_ptr() == Arc::as_ptr(slow) && self.agent.as_ptr() == Arc::as_ptr(agent);
        if !self.lanes_same {
            self.slow = Arc::downgrade(slow);
            self.agent = Arc::downgrade(agent);
        }
    }

    /// The answer the remembered rows are of, if known; taken (see [`RowMemo::answer`]).
    pub(super) fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }

    /// The rows remembered are those of `answer`.
    pub(super) fn set_answer(&mut self, answer: Answer) {
        self.answer = Some(answer);
    }

    /// Does this build have the very slow-lane and agent data of the last one? Then
    /// what they say of a remembered guest was compared already.
    pub(super) fn lanes_same(&self) -> bool {
        self.lanes_same
    }

    /// What the last build decided on a guest row with this hash, wherever it was.
    ///
    /// Hashes are spread evenly over `u64`, so a row sits near `hash / 2^64` of the way
    /// down the sorted list (within ~35 places at 5,000 rows): the search starts in a
    /// window there, a few neighbouring cache lines, rather than binary search's ~13
    /// probes across the list (3 % of the bridge's CPU in the moving world, issue 10).
    /// A row outside the window is still found by a search of the whole list.
    pub(super) fn get(&self, hash: u64) -> Option<&MemoRow> {
        const WINDOW: usize = 128;
        let rows = &self.rows;
        let guess = ((u128::from(hash) * rows.len() as u128) >> 64) as usize;
        let low = guess.saturating_sub(WINDOW);
        let high = (guess + WINDOW).min(rows.len());
        let window = low < high && rows[low].hash <= hash && hash <= rows[high - 1].hash;
        let (start, search) = if window {
            (low, &rows[low..high])
        } else {
            (0, &rows[..])
        };
        let at = search.binary_search_by_key(&hash, |row| row.hash).ok()?;
        Some(&rows[start + at])
    }

    /// Remembers a row of this build (one the memory does not reuse is left out).
    pub(super) fn keep(&mut self, row: MemoRow) {
        if row.state != 0 {
            self.next.push(row);
        }
    }

    /// The build is done: its rows are the ones remembered.
    pub(super) fn finish(&mut self) {
        self.next.sort_unstable_by_key(|row| row.hash);
        std::mem::swap(&mut self.rows, &mut self.next);
        // Both lists are kept, so the same count next time allocates nothing; but not
        // with room for far more guests than there are now.
        let rows = self.rows.len();
        for list in [&mut self.rows, &mut self.next] {
            if list.capacity() > rows + rows / 8 + 16 {
                list.shrink_to(rows);
            }
        }
        self.next.clear();
    }

    /// Forgets every row (an answer that could not be read).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.next.clear();
        self.answer = None;
    }

    /// How many guest rows are remembered (tests).
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
        AgentData, ClusterView, RateMemory, ReportRules, RowAdded, RowMemo, SlowData, ViewBuilder,
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

        /// [`Guest::row`] with its members in an order the dice choose, as Proxmox writes
        /// them (Perl hash order, another on every call).
        fn row_shuffled(&self, dice: &mut Dice) -> String {
            let row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&self.row()).unwrap();
            let mut members: Vec<String> = row
                .iter()
                .map(|(key, value)| format!("{}:{value}", json!(key)))
                .collect();
            shuffle(&mut members, dice);
            format!("{{{}}}", members.join(","))
        }
    }

    /// Fisher-Yates with the dice.
    fn shuffle<T>(items: &mut [T], dice: &mut Dice) {
        for at in (1..items.len()).rev() {
            items.swap(at, dice.below(at as u64 + 1) as usize);
        }
    }

    /// The same views built two ways, poll after poll: every row decoded, and through the
    /// row memory. Each side keeps its own rate memory and previous view.
    #[derive(Default)]
    struct Twins {
        rates_full: RateMemory,
        rates_memo: RateMemory,
        memo: RowMemo,
        full: Option<ClusterView>,
        memoed: Option<ClusterView>,
    }

    impl Twins {
        /// One poll on both sides: `full` adds the rows to a plain builder, `memoed` to one
        /// with the row memory. Returns both views; [`Twins::keep`] makes them the previous.
        fn poll(
            &mut self,
            (slow, agent, rules, now): (&Arc<SlowData>, &Arc<AgentData>, ReportRules, f64),
            full: impl FnOnce(&mut ViewBuilder),
            memoed: impl FnOnce(&mut ViewBuilder),
        ) -> (ClusterView, ClusterView) {
            let mut builder =
                ViewBuilder::new("c", "", slow, &mut self.rates_full, now, self.full.as_ref())
                    .reporting(rules)
                    .agent(agent);
            full(&mut builder);
            let next_full = builder.finish();
            let mut builder = ViewBuilder::new(
                "c",
                "",
                slow,
                &mut self.rates_memo,
                now,
                self.memoed.as_ref(),
            )
            .reporting(rules)
            .agent(agent)
            .memo(&mut self.memo, slow, agent);
            memoed(&mut builder);
            (next_full, builder.finish())
        }

        fn keep(&mut self, full: ClusterView, memoed: ClusterView) {
            self.full = Some(full);
            self.memoed = Some(memoed);
        }
    }

    /// Every remembered row is found by its hash and no other hash is, whether the hashes
    /// are spread as real ones are (found in the window around their place) or bunched
    /// at one end (found by the search of the whole list), at the list's ends too.
    #[test]
    fn a_remembered_row_is_found_by_its_hash_wherever_the_hashes_lie() {
        let mut dice = Dice(0x2545_f491_4f6c_dd1d);
        let spread: Vec<u64> = (0..5000).map(|_| dice.next()).collect();
        let bunched: Vec<u64> = (0..5000).map(|i| i * 7 + 3).collect();
        for hashes in [spread, bunched, vec![u64::MAX], vec![0, u64::MAX]] {
            let mut memo = RowMemo::default();
            for (i, &hash) in hashes.iter().enumerate() {
                memo.keep(super::MemoRow {
                    hash,
                    state: 1,
                    vmid: i as u32,
                    ..super::MemoRow::NONE
                });
            }
            memo.finish();
            for (i, &hash) in hashes.iter().enumerate() {
                let found = memo.get(hash).map(|row| row.vmid);
                assert_eq!(found, Some(i as u32), "hash {hash:#x}");
            }
            let absent = (0..2000)
                .map(|_| dice.next())
                .chain([1, 2, u64::MAX - 1])
                .filter(|hash| !hashes.contains(hash));
            for hash in absent {
                assert!(memo.get(hash).is_none(), "hash {hash:#x} was never kept");
            }
        }
    }

    /// The same view built twice per poll, decoding every row and through the row memory,
    /// with rows, time, slow-lane and agent data changing at random between polls, with
    /// `min_interval` off and on; the rows' members and the guest rows in another order
    /// from poll to poll, as Proxmox writes them.
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
            let mut twins = Twins::default();
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
                if dice.chance(10) {
                    // A slow-lane round: new data, mostly the same as before.
                    let mut fresh = (*slow).clone();
                    fresh.backups_read = true;
                    if dice.chance(50) {
                        let vmid = guests[dice.below(16) as usize].vmid;
                        fresh.set_backup(vmid, now as u64 - dice.below(300));
                    }
                    slow = Arc::new(fresh);
                }
                if dice.chance(15) {
                    // The agent lane learns something of one guest (often nothing new):
                    // its address, or a VM's disk use (it replaces the row's).
                    let mut fresh = (*agent).clone();
                    let vmid = guests[dice.below(16) as usize].vmid;
                    let info = fresh.entry(vmid).or_default();
                    info.responding = Some(true);
                    match dice.below(3) {
                        0 => info.ip_addresses = vec![format!("10.0.0.{}", dice.below(3))],
                        1 => {
                            let used = info.disk_used.unwrap_or(1 << 30);
                            // 0.5 % of the 32 GiB disk is the reportable change.
                            info.disk_used = Some(used + dice.below(3) * (100 << 20));
                        }
                        _ => {}
                    }
                    agent = Arc::new(fresh);
                }
                let node = json!({"id": "node/pve1", "type": "node", "node": "pve1",
                    "status": "online", "uptime": 99_000, "maxcpu": 8})
                .to_string();
                // Proxmox writes the guests in Perl hash order too: often another one.
                let mut listed: Vec<&Guest> = guests.iter().collect();
                if dice.chance(50) {
                    shuffle(&mut listed, &mut dice);
                }
                let rows: Vec<String> = std::iter::once(node)
                    .chain(listed.iter().map(|guest| guest.row_shuffled(&mut dice)))
                    .collect();

                let (mut next_full, mut next_memoed) = twins.poll(
                    (&slow, &agent, rules, now),
                    |builder| {
                        for row in &rows {
                            builder.add(&RawRow::new(row).decode().unwrap());
                        }
                    },
                    |builder| {
                        for row in &rows {
                            if let RowAdded::Reused(_) = builder.add_raw(RawRow::new(row)).unwrap()
                            {
                                reused += 1;
                            }
                        }
                    },
                );
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
                twins.keep(next_full, next_memoed);
            }
            assert!(reused > 800, "seed {seed}: only {reused} rows reused");
        }
    }

    /// A VM's disk use comes from its agent, not its row: a move beyond its reportable
    /// change is reported though the row stayed the same, also once `min_interval`
    /// held it back for a while (the memory keeps what it found meanwhile).
    #[test]
    fn a_vms_disk_from_its_agent_is_reported_though_its_row_did_not_change() {
        let rules = ReportRules {
            min_interval: Duration::from_secs(30),
            ..ReportRules::default()
        };
        let row = r#"{"type":"qemu","vmid":100,"node":"pve1","status":"running","uptime":500,
            "maxdisk":34359738368,"disk":0,"cpu":0.01,"maxcpu":2}"#;
        let slow = Arc::new(SlowData::default());
        let agent_with = |used: u64| -> Arc<AgentData> {
            let mut data = AgentData::new();
            data.entry(100).or_default().disk_used = Some(used);
            Arc::new(data)
        };
        let mut twins = Twins::default();
        let gib = 1u64 << 30;
        // At 0 s the disk is reported; at 5 s it moved by 1 GiB (3 % of 32 GiB): held
        // back until 30 s, with the same agent data from 10 s on.
        let moved = agent_with(5 * gib);
        let steps = [(0.0, agent_with(4 * gib)), (5.0, moved.clone())]
            .into_iter()
            .chain((10..=40).step_by(5).map(|t| (f64::from(t), moved.clone())));
        for (t, agent) in steps {
            let now = 1_765_000_000.0 + t;
            let (next_full, next_memoed) = twins.poll(
                (&slow, &agent, rules, now),
                |builder| builder.add(&RawRow::new(row).decode().unwrap()),
                |builder| {
                    builder.add_raw(RawRow::new(row)).unwrap();
                },
            );
            assert_eq!(next_full.guests, next_memoed.guests, "at {t} s");
            let expected = if t < 30.0 { 4 * gib } else { 5 * gib };
            assert_eq!(next_memoed.guests[&100].disk, Some(expected), "at {t} s");
            twins.keep(next_full, next_memoed);
        }
    }

    /// The poller's path on an answer that repeats (a view rebuilt from the last answer):
    /// an answer byte for byte the last one is read through the remembered
    /// rows, not scanned again, and gives exactly the view a full decode gives while the
    /// time goes on (states fall due, backups turn stale) and the slow and agent lanes
    /// bring news between two identical answers.
    #[test]
    fn an_identical_answer_is_not_scanned_again_and_builds_the_view_a_full_decode_builds() {
        let rules = ReportRules {
            max_interval: Duration::from_secs(60),
            backup_stale_after: Duration::from_secs(100),
            ..ReportRules::default()
        };
        let body = |uptime: u64| {
            let mut rows = vec![json!({"id": "node/pve1", "type": "node", "node": "pve1",
                "status": "online", "uptime": 99_000, "maxcpu": 8})];
            for vmid in 100..140u64 {
                rows.push(
                    json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid,
                    "node": "pve1", "name": format!("g{vmid}"), "status": "running",
                    "maxmem": 4u64 << 30, "mem": 1u64 << 30, "cpu": 0.01, "maxcpu": 2,
                    "uptime": uptime + vmid, "netin": vmid << 20, "netout": 0,
                    "diskread": 0, "diskwrite": 0}),
                );
            }
            serde_json::to_vec(&json!({ "data": rows })).unwrap()
        };
        let (a, b) = (body(5_000), body(5_010));
        let mut slow = Arc::new(SlowData::default());
        let mut agent: Arc<AgentData> = Arc::new(HashMap::new());
        let mut twins = Twins::default();
        let mut now = 1_765_000_000.0;
        // Two polls per broadcast, and a long run of the same answer.
        let answers = [&a, &a, &b, &b, &a, &a]
            .into_iter()
            .chain(std::iter::repeat_n(&b, 40));
        let mut expected_replays = 0;
        let mut last: Option<&Vec<u8>> = None;
        for (poll, answer) in answers.enumerate() {
            now += 5.0;
            if poll % 7 == 3 {
                // News from the slow lane between two identical answers.
                let mut fresh = (*slow).clone();
                fresh.backups_read = true;
                fresh.set_backup(100 + poll as u32, now as u64 - 50);
                slow = Arc::new(fresh);
            }
            if poll % 5 == 2 {
                let mut fresh = (*agent).clone();
                fresh.entry(100 + poll as u32).or_default().ip_addresses =
                    vec![format!("10.0.0.{poll}")];
                agent = Arc::new(fresh);
            }
            let (next_full, next_memoed) = twins.poll(
                (&slow, &agent, rules, now),
                |builder| {
                    crate::pve::for_each_cluster_resource(answer, |row| builder.add(&row)).unwrap();
                },
                |builder| {
                    builder.add_answer(answer, |_, _| Ok(())).unwrap();
                },
            );
            assert_eq!(next_full, next_memoed, "poll {poll}");
            if last == Some(answer) {
                expected_replays += 1;
            }
            assert_eq!(twins.memo.replayed, expected_replays, "poll {poll}");
            last = Some(answer);
            twins.keep(next_full, next_memoed);
        }
        // Over 200 s of the same answer every guest fell due (max_interval 60 s) and the
        // backups went stale (after 100 s): the views were rebuilt, not kept.
        let view = twins.memoed.unwrap();
        assert!(view.guests.values().all(|g| g.as_of > now - 66.0));
        assert!(view.guests[&103].backup_stale == Some(true));
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
