//! Node health (issue 11): physical disks and ZFS pools as objects of their own, and the
//! node's updates, reboot-required flag and certificate expiry, from what the slow lane's
//! detail requests brought ([`NodeHealthData`]). Pure: parsing and state building only.
use std::collections::BTreeMap;

use serde::Serialize;

use super::reporting::{phase_of_name, ReportRules};
use super::ClusterView;
use crate::pve::{AptPackage, CertificateInfo, DiskInfo, ZfsPool};

/// What the slow lane last read about one node's health; `None` = not read (yet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeHealthData {
    /// `disks/list`.
    pub disks: Option<Vec<DiskInfo>>,
    /// `disks/zfs`; `Some(vec![])` on a node without zfsutils.
    pub zfs: Option<Vec<ZfsPool>>,
    /// `apt/update` (opt-in).
    pub updates: Option<Vec<AptPackage>>,
    /// From `apt/versions`.
    pub reboot_required: Option<bool>,
    /// `notafter` of the API certificate, from `certificates/info`.
    pub certificate_expires: Option<u64>,
}

/// `{base}/{c}/disk/{node}/{disk}`: one physical disk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskState {
    pub node: String,
    /// Device name: `sda`, `nvme0n1`.
    pub disk: String,
    pub devpath: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Bytes.
    pub size: Option<u64>,
    /// SMART health as Proxmox reports it (smartctl's text): `PASSED`, `OK`, `FAILED!`,
    /// `UNKNOWN`, …
    pub health: Option<String>,
    /// `false` for `PASSED`/`OK`, `true` for any other verdict, `null` when SMART could
    /// not tell (`UNKNOWN`, `SMART Disabled`, absent).
    pub problem: Option<bool>,
    /// Percent of life left (SSD/NVMe); `null` for HDDs (`"N/A"`).
    pub wearout: Option<f64>,
    /// `hdd`, `ssd`, `nvme`, `usb`, `unknown`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(skip)]
    pub as_of: f64,
}

/// `{base}/{c}/zfs/{node}/{pool}`: one ZFS pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZfsState {
    pub node: String,
    pub pool: String,
    /// `ONLINE`, `DEGRADED`, `FAULTED`, `OFFLINE`, `UNAVAIL`, `REMOVED`, `SUSPENDED`.
    pub health: Option<String>,
    /// Anything but `ONLINE`.
    pub problem: bool,
    pub size: Option<u64>,
    pub alloc: Option<u64>,
    pub free: Option<u64>,
    /// Fragmentation, percent.
    pub frag: Option<u64>,
    #[serde(skip)]
    pub as_of: f64,
}

/// The node's package updates (`updates` in the node state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpdatesState {
    /// Packages with a newer version available.
    pub pending: usize,
    /// Installed Proxmox VE (`pve-manager`) version.
    pub installed: Option<String>,
    /// Newest available `pve-manager` version (= installed when it has no update).
    pub latest: Option<String>,
}

/// `/dev/sda` → `sda`; `/dev/cciss/c0d0` → `cciss!c0d0` (the kernel's name).
pub fn disk_name(devpath: &str) -> String {
    devpath
        .strip_prefix("/dev/")
        .unwrap_or(devpath)
        .replace('/', "!")
}

/// Is a SMART verdict a problem? `None` when SMART could not tell.
pub fn smart_problem(health: Option<&str>) -> Option<bool> {
    match health.map(str::trim) {
        None | Some("") | Some("UNKNOWN") | Some("SMART Disabled") => None,
        Some("PASSED") | Some("OK") => Some(false),
        Some(_) => Some(true),
    }
}

/// The subscription level letter of a node row, as a word: `""` → `none`.
pub fn subscription_name(level: &str) -> String {
    match level.trim() {
        "" => "none",
        "c" => "community",
        "b" => "basic",
        "s" => "standard",
        "p" => "premium",
        other => other,
    }
    .to_string()
}

/// Is a kernel newer than the running one installed? From `apt/versions`: the first
/// installed kernel image (the API lists them newest first) against `RunningKernel`.
/// Meta packages (`proxmox-kernel-6.8`, `proxmox-kernel-helper`) are no kernel images.
pub fn reboot_required(rows: &[AptPackage]) -> Option<bool> {
    let running = rows
        .iter()
        .find(|r| r.package == "proxmox-ve")
        .and_then(|r| r.running_kernel.as_deref())?;
    let newest = rows
        .iter()
        .filter(|r| r.current_state.as_deref().is_none_or(|s| s == "Installed"))
        .find_map(|r| {
            let release = r
                .package
                .strip_prefix("proxmox-kernel-")
                .or_else(|| r.package.strip_prefix("pve-kernel-"))?;
            let release = release.strip_suffix("-signed").unwrap_or(release);
            release.ends_with("-pve").then_some(release)
        })?;
    Some(newest != running)
}

/// `notafter` of the certificate pveproxy serves: `pveproxy-ssl.pem` if present, else
/// `pve-ssl.pem`.
pub fn certificate_expiry(rows: &[CertificateInfo]) -> Option<u64> {
    let by_name = |name: &str| {
        rows.iter()
            .find(|r| r.filename.as_deref() == Some(name))
            .and_then(|r| r.notafter)
    };
    by_name("pveproxy-ssl.pem").or_else(|| by_name("pve-ssl.pem"))
}

/// The `updates` of a node state from `apt/update`; `node_version` is the running
/// version, used when `pve-manager` itself has no update.
pub fn updates_state(rows: &[AptPackage], node_version: Option<&str>) -> UpdatesState {
    let manager = rows.iter().find(|r| r.package == "pve-manager");
    let installed = manager
        .and_then(|r| r.old_version.clone())
        .or_else(|| node_version.map(str::to_string));
    let latest = manager
        .and_then(|r| r.version.clone())
        .or_else(|| installed.clone());
    UpdatesState {
        pending: rows.len(),
        installed,
        latest,
    }
}

fn disk_state(node: &str, row: &DiskInfo, now: f64) -> Option<DiskState> {
    if row.kind.as_deref() == Some("partition") {
        return None;
    }
    Some(DiskState {
        node: node.to_string(),
        disk: disk_name(&row.devpath),
        devpath: row.devpath.clone(),
        model: row.model.clone(),
        serial: row.serial.clone(),
        size: row.size,
        problem: smart_problem(row.health.as_deref()),
        health: row.health.clone(),
        wearout: row.wearout.map(|w| (w * 10.0).round() / 10.0),
        kind: row.kind.clone(),
        as_of: now,
    })
}

fn zfs_state(node: &str, row: &ZfsPool, now: f64) -> ZfsState {
    ZfsState {
        node: node.to_string(),
        pool: row.name.clone(),
        problem: row.health.as_deref() != Some("ONLINE"),
        health: row.health.clone(),
        size: row.size,
        alloc: row.alloc,
        free: row.free,
        frag: row.frag,
        as_of: now,
    }
}

/// Must a disk's state be reported again? Every field is an "always" field; only the
/// `reporting.max_interval` refresh is timed.
fn disk_needs_report(
    fresh: &DiskState,
    reported: &DiskState,
    rules: &ReportRules,
    now: f64,
) -> bool {
    let DiskState { as_of, .. } = reported;
    let same = DiskState {
        as_of: *as_of,
        ..fresh.clone()
    } == *reported;
    !same || rules.due(*as_of, now, phase_of_name(&[&fresh.node, &fresh.disk]))
}

fn zfs_needs_report(fresh: &ZfsState, reported: &ZfsState, rules: &ReportRules, now: f64) -> bool {
    let ZfsState { as_of, .. } = reported;
    let same = ZfsState {
        as_of: *as_of,
        ..fresh.clone()
    } == *reported;
    !same || rules.due(*as_of, now, phase_of_name(&[&fresh.node, &fresh.pool]))
}

/// Adds the disks and pools of every node in `view` (read while it was online; kept while
/// it is offline, when they are unavailable). A state that needs no report keeps the
/// previous view's.
pub(super) fn add_health_objects(
    view: &mut ClusterView,
    health: &std::collections::HashMap<String, NodeHealthData>,
    previous: Option<&ClusterView>,
    rules: &ReportRules,
    now: f64,
) {
    let mut disks = BTreeMap::new();
    let mut pools = BTreeMap::new();
    for node in view.nodes.keys() {
        let Some(data) = health.get(node) else {
            continue;
        };
        if data.disks.is_some() {
            view.health_read.insert((node.clone(), "disks"));
        }
        if data.zfs.is_some() {
            view.health_read.insert((node.clone(), "zfs"));
        }
        for row in data.disks.iter().flatten() {
            let Some(fresh) = disk_state(node, row, now) else {
                continue;
            };
            let key = (node.clone(), fresh.disk.clone());
            let state = match previous.and_then(|p| p.disks.get(&key)) {
                Some(before) if !disk_needs_report(&fresh, before, rules, now) => before.clone(),
                _ => fresh,
            };
            disks.insert(key, state);
        }
        for row in data.zfs.iter().flatten() {
            let fresh = zfs_state(node, row, now);
            let key = (node.clone(), fresh.pool.clone());
            let state = match previous.and_then(|p| p.zfs.get(&key)) {
                Some(before) if !zfs_needs_report(&fresh, before, rules, now) => before.clone(),
                _ => fresh,
            };
            pools.insert(key, state);
        }
    }
    view.disks = disks;
    view.zfs = pools;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, state: &str) -> AptPackage {
        AptPackage {
            package: name.into(),
            version: None,
            old_version: None,
            current_state: Some(state.into()),
            running_kernel: None,
        }
    }

    #[test]
    fn smart_verdicts_map_to_problem_ok_or_unknown() {
        assert_eq!(smart_problem(Some("PASSED")), Some(false));
        assert_eq!(smart_problem(Some("OK")), Some(false));
        assert_eq!(smart_problem(Some("FAILED!")), Some(true));
        assert_eq!(smart_problem(Some("FAILED")), Some(true));
        assert_eq!(smart_problem(Some("SOME SENSE TEXT")), Some(true));
        assert_eq!(smart_problem(Some("UNKNOWN")), None);
        assert_eq!(smart_problem(Some("SMART Disabled")), None);
        assert_eq!(smart_problem(None), None);
    }

    #[test]
    fn disk_names_come_from_the_devpath() {
        assert_eq!(disk_name("/dev/sda"), "sda");
        assert_eq!(disk_name("/dev/nvme0n1"), "nvme0n1");
        assert_eq!(disk_name("/dev/cciss/c0d0"), "cciss!c0d0");
    }

    #[test]
    fn subscription_levels_read_as_words() {
        assert_eq!(subscription_name(""), "none");
        assert_eq!(subscription_name("c"), "community");
        assert_eq!(subscription_name("p"), "premium");
    }

    #[test]
    fn a_newer_installed_kernel_means_reboot_required_and_meta_packages_do_not_count() {
        let mut ve = package("proxmox-ve", "Installed");
        ve.running_kernel = Some("6.8.12-5-pve".into());
        let rows = vec![
            ve.clone(),
            package("pve-manager", "Installed"),
            package("proxmox-kernel-helper", "Installed"),
            package("proxmox-kernel-6.8.12-6-pve-signed", "Installed"),
            package("proxmox-kernel-6.8", "Installed"),
            package("proxmox-kernel-6.8.12-5-pve-signed", "Installed"),
        ];
        assert_eq!(reboot_required(&rows), Some(true));
        let rows = vec![
            ve.clone(),
            package("proxmox-kernel-6.8", "Installed"),
            package("proxmox-kernel-6.8.12-6-pve-signed", "ConfigFiles"),
            package("proxmox-kernel-6.8.12-5-pve-signed", "Installed"),
        ];
        assert_eq!(reboot_required(&rows), Some(false));
        // PVE 7 names.
        ve.running_kernel = Some("5.15.158-2-pve".into());
        let rows = vec![ve, package("pve-kernel-5.15.158-2-pve", "Installed")];
        assert_eq!(reboot_required(&rows), Some(false));
        assert_eq!(reboot_required(&[]), None);
    }

    #[test]
    fn the_served_certificate_is_pveproxy_ssl_if_present() {
        let cert = |name: &str, after: u64| CertificateInfo {
            filename: Some(name.into()),
            notafter: Some(after),
        };
        let rows = vec![cert("pve-root-ca.pem", 1), cert("pve-ssl.pem", 2)];
        assert_eq!(certificate_expiry(&rows), Some(2));
        let rows = vec![
            cert("pve-root-ca.pem", 1),
            cert("pve-ssl.pem", 2),
            cert("pveproxy-ssl.pem", 3),
        ];
        assert_eq!(certificate_expiry(&rows), Some(3));
        assert_eq!(certificate_expiry(&[]), None);
    }

    #[test]
    fn updates_read_installed_and_latest_from_pve_manager() {
        let mut manager = package("pve-manager", "Installed");
        manager.old_version = Some("9.1.5".into());
        manager.version = Some("9.1.6".into());
        let state = updates_state(&[manager, package("x", "Installed")], Some("9.1.5"));
        assert_eq!(state.pending, 2);
        assert_eq!(state.installed.as_deref(), Some("9.1.5"));
        assert_eq!(state.latest.as_deref(), Some("9.1.6"));
        let state = updates_state(&[], Some("9.1.5"));
        assert_eq!(state.pending, 0);
        assert_eq!(state.latest.as_deref(), Some("9.1.5"));
    }
}
