//! A storage's state on one node, from its `/cluster/resources` row.
use serde::Serialize;

use super::rates::percent;
use super::reporting::{phase_of_name, ReportRules};
use super::SlowData;
use crate::pve::Resource;

/// `{base}/{c}/storage/{node}/{storage}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageState {
    pub storage: String,
    pub node: String,
    /// `available` or `unknown`, as Proxmox says.
    pub status: String,
    pub active: bool,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    pub content: Vec<String>,
    pub shared: bool,
    pub used: Option<u64>,
    pub total: Option<u64>,
    pub avail: Option<u64>,
    pub used_percent: Option<f64>,
    /// Poll time (Unix seconds) of the figures: when this state was reported.
    #[serde(skip)]
    pub as_of: f64,
}

/// Must `fresh` be reported, the storage's last reported state being `reported`? Every
/// field is classified here (see `reporting`): a new one does not compile until it is.
pub(super) fn storage_needs_report(
    fresh: &StorageState,
    reported: &StorageState,
    rules: &ReportRules,
    now: f64,
) -> bool {
    let StorageState {
        storage,
        node,
        status,
        active,
        plugin_type,
        content,
        shared,
        used,
        total,
        avail,
        used_percent,
        as_of,
    } = reported;
    // Ride along: derived from `used`, `total` (and the reserve, which hardly changes).
    let _ = (avail, used_percent);
    let always = *storage != fresh.storage
        || *node != fresh.node
        || *status != fresh.status
        || *active != fresh.active
        || *plugin_type != fresh.plugin_type
        || *content != fresh.content
        || *shared != fresh.shared
        || *total != fresh.total
        || reserve_of(*total, *used, *avail) != reserve_of(fresh.total, fresh.used, fresh.avail);
    let threshold = ReportRules::share_moved(*used, fresh.used, fresh.total, rules.storage_percent);
    always || rules.threshold_or_due(threshold, *as_of, now, phase_of_name(&[node, storage]))
}

/// The space neither used nor available (reserved blocks): a change always counts.
fn reserve_of(total: Option<u64>, used: Option<u64>, avail: Option<u64>) -> Option<u64> {
    Some(total?.saturating_sub(used?).saturating_sub(avail?))
}

pub(super) fn storage_state(row: &Resource, slow: &SlowData, now: f64) -> Option<StorageState> {
    let node = row.node.clone()?;
    let storage = row.storage.clone()?;
    let status = row.status.clone().unwrap_or_else(|| "unknown".to_string());
    let used = row.disk;
    let total = row.maxdisk;
    // Proxmox's own figure where the slow lane read it (the node's storage list), moved
    // with `used` on every poll; `total - used` until then.
    let reserve = slow
        .storage_reserve
        .get(&(node.clone(), storage.clone()))
        .copied()
        .unwrap_or(0);
    let avail = match (used, total) {
        (Some(u), Some(t)) => Some(t.saturating_sub(u).saturating_sub(reserve)),
        _ => None,
    };
    Some(StorageState {
        active: status == "available",
        plugin_type: row.plugintype.clone(),
        content: row
            .content
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        shared: row.shared,
        used_percent: percent(used, total),
        used,
        total,
        avail,
        status,
        node,
        storage,
        as_of: now,
    })
}
