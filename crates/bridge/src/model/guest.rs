//! A guest's state from its `/cluster/resources` row, reusing the state last reported
//! while nothing changed beyond its reportable change (see `reporting`). A new state
//! shares with the guest's previous one every text that did not change and the lanes'
//! fields (see `lanes`), so only its numbers are new.
use std::sync::Arc;

use serde::Serialize;

use super::compact::{OptF64, OptU64};
use super::lanes::{GuestBackup, GuestLanes, LaneDraft};
use super::rates::{percent, round_percent, RateMemory};
use super::reporting::{phase_of_vmid, started, ReportRules};
use super::{AgentInfo, ClusterView, SlowData};
use crate::pve::{tag_iter, GuestKind, GuestRow};

/// `{base}/{c}/{qemu|lxc}/{vmid}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuestState {
    pub vmid: u32,
    #[serde(rename = "type")]
    pub kind: GuestKind,
    #[serde(serialize_with = "serialize_shared")]
    pub name: Option<Arc<str>>,
    #[serde(serialize_with = "serialize_arc")]
    pub node: Arc<str>,
    /// running, stopped, paused, suspended or unknown.
    #[serde(serialize_with = "serialize_arc")]
    pub status: Arc<str>,
    pub template: bool,
    /// Percent of the guest's own CPUs.
    pub cpu: OptF64,
    pub cpus: OptU64,
    pub mem: OptU64,
    pub maxmem: OptU64,
    pub mem_percent: OptF64,
    pub disk: OptU64,
    pub maxdisk: OptU64,
    pub netin: OptU64,
    pub netout: OptU64,
    pub diskread: OptU64,
    pub diskwrite: OptU64,
    /// Bytes per second over the last two samples that differed; `null` after a counter
    /// reset (guest restart) or before a second sample exists.
    pub netin_rate: OptF64,
    pub netout_rate: OptF64,
    pub diskread_rate: OptF64,
    pub diskwrite_rate: OptF64,
    /// Seconds since boot; rides along, never a reason to publish (see `started`).
    pub uptime: OptU64,
    /// Unix time of the boot, on a minute grid, stable while the guest runs: what Home
    /// Assistant shows, as it does not tick. `null` while not running.
    pub started: OptU64,
    #[serde(serialize_with = "serialize_arc")]
    pub tags: Arc<[String]>,
    #[serde(serialize_with = "serialize_shared")]
    pub lock: Option<Arc<str>>,
    #[serde(serialize_with = "serialize_shared")]
    pub hastate: Option<Arc<str>>,
    #[serde(serialize_with = "serialize_shared")]
    pub pool: Option<Arc<str>>,
    /// `last_backup` … `last_backup_error`, from the slow lane; shared with the guest's
    /// previous state while the lane says the same.
    #[serde(flatten, serialize_with = "serialize_arc")]
    pub backup: Arc<GuestBackup>,
    /// No backup newer than `backup.stale_after` (none at all counts); `null` until the
    /// backup storages were read.
    pub backup_stale: Option<bool>,
    /// `backup_covered` … `os`, from the slow and agent lanes; shared as `backup`.
    #[serde(flatten, serialize_with = "serialize_arc")]
    pub lanes: Arc<GuestLanes>,
    /// Poll time (Unix seconds) of the figures: when this state was reported.
    #[serde(skip)]
    pub as_of: f64,
}

/// Serialises shared data as the value it points to (serde's `rc` feature is off).
pub(super) fn serialize_shared<S: serde::Serializer, T: Serialize + ?Sized>(
    value: &Option<Arc<T>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_deref().serialize(serializer)
}

/// [`serialize_shared`] for a value that is always there.
fn serialize_arc<S: serde::Serializer, T: Serialize + ?Sized>(
    value: &Arc<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    (**value).serialize(serializer)
}

/// `text`, as `before` when equal (the same allocation), else a new one.
fn share(text: &str, before: Option<&Arc<str>>) -> Arc<str> {
    match before {
        Some(before) if **before == *text => Arc::clone(before),
        _ => Arc::from(text),
    }
}

/// [`share`] for a text that may be absent.
fn share_opt(text: Option<&str>, before: Option<&Option<Arc<str>>>) -> Option<Arc<str>> {
    text.map(|text| share(text, before.and_then(Option::as_ref)))
}

/// The texts many guests have in common (node, status, lock, HA state, pool, tags), one
/// copy each for the new states of one view. [`share`] finds a guest's own previous
/// text; these find the one another guest has: at start every state is new, and 5,000
/// guests held 10,000 copies of a few node names and statuses and 5,000 tag lists
/// (~0.5 MB and 15,000 heap blocks, issue 10).
#[derive(Debug, Default)]
pub(super) struct Texts {
    words: std::collections::HashSet<Arc<str>>,
    /// By the row's `tags` text, as Proxmox wrote it.
    tags: std::collections::HashMap<Box<str>, Arc<[String]>>,
}

impl Texts {
    /// `text`: the guest's previous one if equal, else the one this view already has.
    fn share(&mut self, text: &str, before: Option<&Arc<str>>) -> Arc<str> {
        if let Some(before) = before.filter(|before| ***before == *text) {
            return Arc::clone(before);
        }
        if let Some(known) = self.words.get(text) {
            return Arc::clone(known);
        }
        let new: Arc<str> = Arc::from(text);
        self.words.insert(Arc::clone(&new));
        new
    }

    /// [`Texts::share`] for a text that may be absent.
    fn share_opt(
        &mut self,
        text: Option<&str>,
        before: Option<&Option<Arc<str>>>,
    ) -> Option<Arc<str>> {
        text.map(|text| self.share(text, before.and_then(Option::as_ref)))
    }

    /// The tag list of the row's `tags` text: the previous state's if the same, else the
    /// one this view already has for that text.
    fn tags(&mut self, raw: &str, before: Option<&Arc<[String]>>) -> Arc<[String]> {
        if let Some(before) = before.filter(|b| b.iter().map(String::as_str).eq(tag_iter(raw))) {
            return Arc::clone(before);
        }
        if let Some(known) = self.tags.get(raw) {
            return Arc::clone(known);
        }
        let new: Arc<[String]> = tag_iter(raw).map(str::to_owned).collect();
        self.tags.insert(raw.into(), Arc::clone(&new));
        new
    }
}

/// A guest's state as one row says it, with every text still borrowed from the row.
/// Most polls find it equal to the guest's previous state, which is then reused as is:
/// an idle poll of 5,000 guests copies no string.
struct GuestDraft<'a> {
    vmid: u32,
    kind: GuestKind,
    name: Option<&'a str>,
    node: &'a str,
    status: &'a str,
    template: bool,
    cpu: Option<f64>,
    cpus: Option<u64>,
    mem: Option<u64>,
    maxmem: Option<u64>,
    mem_percent: Option<f64>,
    disk: Option<u64>,
    maxdisk: Option<u64>,
    counters: [Option<u64>; 4],
    rates: [Option<f64>; 4],
    uptime: Option<u64>,
    started: Option<u64>,
    /// Proxmox's tag string (`a;b`), split only when the state is built.
    tags: &'a str,
    lock: Option<&'a str>,
    hastate: Option<&'a str>,
    pool: Option<&'a str>,
    /// Depends on the time (see [`backup_stale`]).
    backup_stale: Option<bool>,
    /// What the slow and agent lanes say of the guest.
    lanes: LaneDraft<'a>,
}

impl GuestDraft<'_> {
    /// Must this draft be reported, the guest's last reported state being `reported`?
    /// Also says whether a figure moved beyond its reportable change (see [`Changes`]).
    fn needs_report(&self, reported: &GuestState, rules: &ReportRules, now: f64) -> Changes {
        let (always, Thresholds { rest, disk }) = self.changes(reported, rules);
        let threshold = rest || disk;
        Changes {
            report: always
                || rules.threshold_or_due(threshold, reported.as_of, now, phase_of_vmid(self.vmid)),
            threshold,
            threshold_rest: rest,
        }
    }

    /// Does a field that always counts differ from `reported`, and did a threshold
    /// figure move beyond its reportable change? Destructures every field of
    /// [`GuestState`], so a field added there does not compile until it is classified
    /// here: always, threshold or ride along.
    fn changes(&self, reported: &GuestState, rules: &ReportRules) -> (bool, Thresholds) {
        let GuestState {
            vmid,
            kind,
            name,
            node,
            status,
            template,
            cpu,
            cpus,
            mem,
            maxmem,
            mem_percent,
            disk,
            maxdisk,
            // Ride along (as `mem_percent` and `uptime` below).
            netin: _,
            netout: _,
            diskread: _,
            diskwrite: _,
            netin_rate,
            netout_rate,
            diskread_rate,
            diskwrite_rate,
            uptime,
            started,
            tags,
            lock,
            hastate,
            pool,
            backup_stale,
            // From the slow and agent lanes: all "always", compared by
            // `LaneDraft::same_as` (which destructures them).
            backup: _,
            lanes: _,
            as_of: _,
        } = reported;
        // Ride along: sent with every report, never the reason for one.
        let _ = (mem_percent, uptime);
        let always = *vmid != self.vmid
            || *kind != self.kind
            || name.as_deref() != self.name
            || **node != *self.node
            || **status != *self.status
            || *template != self.template
            || *cpus != self.cpus
            || *maxmem != self.maxmem
            || *maxdisk != self.maxdisk
            || *started != self.started
            || !tags.iter().map(String::as_str).eq(tag_iter(self.tags))
            || lock.as_deref() != self.lock
            || hastate.as_deref() != self.hastate
            || pool.as_deref() != self.pool
            || *backup_stale != self.backup_stale
            || !self.lanes.same_as(reported);
        let rates = [netin_rate, netout_rate, diskread_rate, diskwrite_rate].map(|r| r.get());
        let rest = ReportRules::moved(cpu.get(), self.cpu, rules.cpu)
            || ReportRules::share_moved(mem.get(), self.mem, self.maxmem, rules.mem_percent)
            || rules.rates_moved(rates, self.rates);
        let disk =
            ReportRules::share_moved(disk.get(), self.disk, self.maxdisk, rules.storage_percent);
        (always, Thresholds { rest, disk })
    }

    /// The state the draft says, sharing with `before` (the guest's previous state)
    /// what did not change: its texts, and the lanes' fields as a whole.
    fn to_state(&self, now: f64, before: Option<&GuestState>, texts: &mut Texts) -> GuestState {
        let [netin, netout, diskread, diskwrite] = self.counters;
        let [netin_rate, netout_rate, diskread_rate, diskwrite_rate] = self.rates;
        GuestState {
            vmid: self.vmid,
            kind: self.kind,
            // A guest's own: not looked up among the others'.
            name: share_opt(self.name, before.map(|b| &b.name)),
            node: texts.share(self.node, before.map(|b| &b.node)),
            status: texts.share(self.status, before.map(|b| &b.status)),
            template: self.template,
            cpu: self.cpu.into(),
            cpus: self.cpus.into(),
            mem: self.mem.into(),
            maxmem: self.maxmem.into(),
            mem_percent: self.mem_percent.into(),
            disk: self.disk.into(),
            maxdisk: self.maxdisk.into(),
            netin: netin.into(),
            netout: netout.into(),
            diskread: diskread.into(),
            diskwrite: diskwrite.into(),
            netin_rate: netin_rate.into(),
            netout_rate: netout_rate.into(),
            diskread_rate: diskread_rate.into(),
            diskwrite_rate: diskwrite_rate.into(),
            uptime: self.uptime.into(),
            started: self.started.into(),
            tags: texts.tags(self.tags, before.map(|b| &b.tags)),
            lock: texts.share_opt(self.lock, before.map(|b| &b.lock)),
            hastate: texts.share_opt(self.hastate, before.map(|b| &b.hastate)),
            pool: texts.share_opt(self.pool, before.map(|b| &b.pool)),
            backup: self.lanes.backup(before),
            backup_stale: self.backup_stale,
            lanes: self.lanes.lanes(before),
            as_of: now,
        }
    }
}

/// Which threshold figures moved beyond their reportable change: `disk` (which a VM's
/// agent data can replace), and any other (`rest`).
struct Thresholds {
    rest: bool,
    disk: bool,
}

/// What [`GuestDraft::needs_report`] found.
struct Changes {
    /// The draft must be reported.
    report: bool,
    /// A threshold figure moved beyond its reportable change (reported or not: within
    /// `min_interval` it waits).
    threshold: bool,
    /// The same, `disk` left out.
    threshold_rest: bool,
}

/// The guest's state from its row, and what the row memory keeps of the decision.
pub(super) struct GuestOutcome {
    pub state: Arc<GuestState>,
    /// A threshold figure of the draft differs from `state` beyond its reportable change
    /// (only while `min_interval` holds it back; false when `state` is new)...
    pub threshold: bool,
    /// ...and the same, `disk` left out.
    pub threshold_rest: bool,
}

/// The guest's state: the one last reported while nothing needs reporting, else a new one.
pub(super) fn guest_state(
    row: &GuestRow<'_>,
    (slow, agent): (&SlowData, Option<&AgentInfo>),
    rates: &mut RateMemory,
    (rules, now): (&ReportRules, f64),
    (previous, texts): (Option<&ClusterView>, &mut Texts),
) -> GuestOutcome {
    let before = previous.and_then(|p| p.guests.get(&row.vmid));
    let mut draft = guest_draft(row, (slow, agent), rates, now, before.map(|b| &**b));
    draft.backup_stale = backup_stale(slow, draft.template, draft.lanes.last_backup, rules, now);
    if let Some(before) = before {
        let changes = draft.needs_report(before, rules, now);
        if !changes.report {
            return GuestOutcome {
                state: before.clone(),
                threshold: changes.threshold,
                threshold_rest: changes.threshold_rest,
            };
        }
    }
    GuestOutcome {
        state: Arc::new(draft.to_state(now, before.map(|b| &**b), texts)),
        threshold: false,
        threshold_rest: false,
    }
}

/// `backup_stale`: no backup newer than `backup.stale_after`; `None` until the backup
/// storages were read. Templates are no backup targets of their own.
fn backup_stale(
    slow: &SlowData,
    template: bool,
    last_backup: Option<u64>,
    rules: &ReportRules,
    now: f64,
) -> Option<bool> {
    (slow.backups_read && !template).then(|| {
        last_backup.is_none_or(|at| now - at as f64 > rules.backup_stale_after.as_secs_f64())
    })
}

/// What the row memory keeps of a guest row (see `RowMemo`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Remembered {
    /// The row's `uptime`.
    pub uptime: Option<u64>,
    /// [`GuestOutcome::threshold`], as of the last build.
    pub threshold: bool,
    /// [`GuestOutcome::threshold_rest`].
    pub threshold_rest: bool,
}

/// Would [`guest_state`] keep `reported` at `now` for a row with the same members as the
/// one it last decided on? `reported` must be the state it returned for that row (or
/// that this function kept since), `remembered` what the row memory kept. `lanes` is
/// what the slow and agent lanes say of the guest now; `None` when their data is the
/// very data of the last build (it was compared then).
///
/// With the row the same, a decode could only decide otherwise on what the lanes give
/// (compared here as a decode compares it, a VM's disk from its agent too) or on what
/// depends on the time: `started` (a stalled uptime), the backup's staleness, and
/// whether the state is due (`max_interval`, a figure held back by `min_interval`).
/// Returns what to remember now, or `None`: decode the row.
pub(super) fn still_reported(
    reported: &GuestState,
    remembered: Remembered,
    lanes: Option<LaneDraft<'_>>,
    slow: &SlowData,
    (rules, now): (&ReportRules, f64),
) -> Option<Remembered> {
    let mut threshold = remembered.threshold;
    if let Some(lanes) = lanes {
        if !lanes.same_as(reported) {
            return None;
        }
        // A VM's disk comes from its agent: compared as a decode would (without agent
        // data the row's disk is the one compared when it was remembered).
        if let Some(disk) = lanes.agent_disk {
            threshold = remembered.threshold_rest
                || ReportRules::share_moved(
                    reported.disk.get(),
                    Some(disk),
                    reported.maxdisk.get(),
                    rules.storage_percent,
                );
        }
    }
    let kept = started(
        now,
        remembered.uptime,
        Some((reported.started.get(), reported.uptime.get())),
    ) == reported.started
        && backup_stale(
            slow,
            reported.template,
            reported.backup.last_backup,
            rules,
            now,
        ) == reported.backup_stale
        && !rules.threshold_or_due(threshold, reported.as_of, now, phase_of_vmid(reported.vmid));
    kept.then_some(Remembered {
        threshold,
        ..remembered
    })
}

fn guest_draft<'a>(
    row: &GuestRow<'a>,
    (slow, agent): (&'a SlowData, Option<&'a AgentInfo>),
    rates: &mut RateMemory,
    now: f64,
    before: Option<&GuestState>,
) -> GuestDraft<'a> {
    let GuestRow { vmid, kind, .. } = *row;
    let status = match row.status {
        // Hibernated (suspended to disk) VMs are `stopped` with lock `suspended`.
        Some("stopped") if row.lock == Some("suspended") => "suspended",
        Some(status) => status,
        None => "unknown",
    };
    let counters = [row.netin, row.netout, row.diskread, row.diskwrite];
    let guest_rates = if status == "running" {
        rates.rates(vmid, counters, now)
    } else {
        // One guest: a map removal, not a pass over every guest (quadratic at scale).
        rates.forget(vmid);
        if status == "stopped" {
            [Some(0.0); 4]
        } else {
            [None; 4]
        }
    };
    let lanes = LaneDraft::of(vmid, kind, slow, agent);
    GuestDraft {
        vmid,
        kind,
        name: row.name,
        node: row.node,
        status,
        template: row.template,
        cpu: row.cpu.map(|c| round_percent(c * 100.0)),
        cpus: row.maxcpu.map(|c| c as u64),
        mem: row.mem,
        maxmem: row.maxmem,
        mem_percent: percent(row.mem, row.maxmem),
        // Proxmox reports no disk usage for a VM (always 0): the agent's filesystems do.
        disk: lanes.agent_disk.or(row.disk),
        maxdisk: row.maxdisk,
        counters,
        rates: guest_rates,
        uptime: row.uptime,
        started: started(
            now,
            row.uptime,
            before.map(|b| (b.started.get(), b.uptime.get())),
        ),
        tags: row.tags.unwrap_or(""),
        lock: row.lock,
        hastate: row.hastate,
        pool: row.pool,
        backup_stale: None,
        lanes,
    }
}
