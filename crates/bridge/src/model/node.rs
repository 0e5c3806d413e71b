//! A node's state: its `/cluster/resources` row, completed by the slow lane's
//! `/nodes/{node}/status`.
use serde::Serialize;

use super::health::{subscription_name, updates_state, UpdatesState};
use super::rates::{percent, round_percent};
use super::reporting::{phase_of_name, started, ReportRules};
use super::SlowData;
use crate::pve::Resource;

/// `{base}/{c}/node/{node}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeState {
    pub node: String,
    /// `online`, `offline` or `unknown`, as Proxmox says.
    pub status: String,
    /// Percent of all the node's CPUs.
    pub cpu: Option<f64>,
    pub cpus: Option<u64>,
    pub loadavg: Option<[f64; 3]>,
    pub mem: Option<u64>,
    pub maxmem: Option<u64>,
    pub mem_percent: Option<f64>,
    pub swap_used: Option<u64>,
    pub swap_total: Option<u64>,
    pub rootfs_used: Option<u64>,
    pub rootfs_total: Option<u64>,
    pub rootfs_percent: Option<f64>,
    /// Seconds since boot; rides along, never a reason to publish.
    pub uptime: Option<u64>,
    /// Unix time of the boot, on a minute grid, stable while the node runs.
    pub started: Option<u64>,
    pub pve_version: Option<String>,
    pub kernel: Option<String>,
    pub cpu_model: Option<String>,
    /// Tasks on this node that ended with an error in the last 24 hours, from
    /// `/cluster/tasks`; `null` when the token may not read it (no `Sys.Audit` on `/`).
    pub failed_tasks_24h: Option<u32>,
    /// IO delay (time waiting for IO), percent of CPU time, from the node status `wait`.
    pub io_delay: Option<f64>,
    /// Subscription level: `none`, `community`, `basic`, `standard`, `premium`.
    pub subscription: Option<String>,
    /// Pending package updates (only with `poll.updates` and `Sys.Modify`).
    pub updates: Option<UpdatesState>,
    /// A kernel newer than the running one is installed.
    pub reboot_required: Option<bool>,
    /// Unix time the node's API certificate expires.
    pub certificate_expires: Option<u64>,
    /// Poll time (Unix seconds) of the figures: when this state was reported.
    #[serde(skip)]
    pub as_of: f64,
}

/// Must `fresh` be reported, the node's last reported state being `reported`? Every
/// field is classified here (see `reporting`): a new one does not compile until it is.
pub(super) fn node_needs_report(
    fresh: &NodeState,
    reported: &NodeState,
    rules: &ReportRules,
    now: f64,
) -> bool {
    let NodeState {
        node,
        status,
        cpu,
        cpus,
        loadavg,
        mem,
        maxmem,
        mem_percent,
        swap_used,
        swap_total,
        rootfs_used,
        rootfs_total,
        rootfs_percent,
        uptime,
        started,
        pve_version,
        kernel,
        cpu_model,
        failed_tasks_24h,
        io_delay,
        subscription,
        updates,
        reboot_required,
        certificate_expires,
        as_of,
    } = reported;
    // Ride along: sent with every report, never the reason for one.
    let _ = (mem_percent, rootfs_percent, uptime);
    let always = *node != fresh.node
        || *status != fresh.status
        || *cpus != fresh.cpus
        || *maxmem != fresh.maxmem
        || *swap_total != fresh.swap_total
        || *rootfs_total != fresh.rootfs_total
        || *started != fresh.started
        || *pve_version != fresh.pve_version
        || *kernel != fresh.kernel
        || *cpu_model != fresh.cpu_model
        || *failed_tasks_24h != fresh.failed_tasks_24h
        || *subscription != fresh.subscription
        || *updates != fresh.updates
        || *reboot_required != fresh.reboot_required
        || *certificate_expires != fresh.certificate_expires;
    let load_moved = match (loadavg, fresh.loadavg) {
        (Some(a), Some(b)) => {
            (0..3).any(|i| ReportRules::moved(Some(a[i]), Some(b[i]), rules.loadavg))
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    let threshold = ReportRules::moved(*cpu, fresh.cpu, rules.cpu)
        || ReportRules::moved(*io_delay, fresh.io_delay, rules.cpu)
        || load_moved
        || ReportRules::share_moved(*mem, fresh.mem, fresh.maxmem, rules.mem_percent)
        || ReportRules::share_moved(
            *swap_used,
            fresh.swap_used,
            fresh.swap_total,
            rules.mem_percent,
        )
        || ReportRules::share_moved(
            *rootfs_used,
            fresh.rootfs_used,
            fresh.rootfs_total,
            rules.storage_percent,
        );
    always || rules.threshold_or_due(threshold, *as_of, now, phase_of_name(&[node]))
}

/// `pve-manager/9.1.2/9d436f37a0ac4172` (node status) → `9.1.2`, as users say it.
pub(super) fn short_pve_version(full: &str) -> String {
    full.strip_prefix("pve-manager/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(full)
        .to_string()
}

/// The node's state as of `now`; `before` (its last reported state) keeps `started` stable.
pub(super) fn node_state(
    row: &Resource,
    slow: &SlowData,
    now: f64,
    before: Option<&NodeState>,
) -> Option<NodeState> {
    let name = row.node.clone()?;
    let status = row.status.clone().unwrap_or_else(|| "unknown".to_string());
    let details = slow.node_status.get(&name);
    let mem = row
        .mem
        .or_else(|| details.and_then(|d| d.memory.as_ref().and_then(|m| m.used)));
    let maxmem = row
        .maxmem
        .or_else(|| details.and_then(|d| d.memory.as_ref().and_then(|m| m.total)));
    let rootfs_used = details
        .and_then(|d| d.rootfs.as_ref().and_then(|m| m.used))
        .or(row.disk);
    let rootfs_total = details
        .and_then(|d| d.rootfs.as_ref().and_then(|m| m.total))
        .or(row.maxdisk);
    let online = status == "online";
    let health = slow.node_health.get(&name);
    let pve_version = details
        .and_then(|d| d.pveversion.as_deref())
        .map(short_pve_version);
    Some(NodeState {
        io_delay: online
            .then(|| {
                details
                    .and_then(|d| d.wait)
                    .map(|w| round_percent(w * 100.0))
            })
            .flatten(),
        subscription: row.level.as_deref().map(subscription_name),
        updates: health
            .and_then(|h| h.updates.as_deref())
            .map(|rows| updates_state(rows, pve_version.as_deref())),
        reboot_required: health.and_then(|h| h.reboot_required),
        certificate_expires: health.and_then(|h| h.certificate_expires),
        cpu: online
            .then(|| row.cpu.map(|c| round_percent(c * 100.0)))
            .flatten(),
        cpus: row
            .maxcpu
            .map(|c| c as u64)
            .or_else(|| details.and_then(|d| d.cpuinfo.as_ref().and_then(|m| m.cpus))),
        loadavg: details
            .and_then(|d| d.loadavg)
            .map(|l| l.map(|x| (x * 100.0).round() / 100.0)),
        mem_percent: percent(mem, maxmem),
        mem,
        maxmem,
        swap_used: details.and_then(|d| d.swap.as_ref().and_then(|m| m.used)),
        swap_total: details.and_then(|d| d.swap.as_ref().and_then(|m| m.total)),
        rootfs_percent: percent(rootfs_used, rootfs_total),
        rootfs_used,
        rootfs_total,
        uptime: row.uptime,
        started: started(now, row.uptime, before.map(|b| (b.started, b.uptime))),
        as_of: now,
        pve_version,
        kernel: details.and_then(|d| d.kversion.clone()),
        cpu_model: details.and_then(|d| d.cpuinfo.as_ref().and_then(|c| c.model.clone())),
        failed_tasks_24h: None,
        status,
        node: name,
    })
}
