//! A guest's snapshots as its state shows them: how many, and the newest one's name and
//! time, from `GET …/snapshot` (read by the slow lane every `poll.snapshots_interval`,
//! and right after a snapshot command of the bridge ends).

use serde::Serialize;

use crate::pve::SnapshotEntry;

/// The snapshot fields of a guest's JSON state; all `null` until the list was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Number of snapshots (the `current` pseudo-entry not counted).
    pub snapshots: Option<u32>,
    /// Name of the newest snapshot (by `snaptime`); `null` without any.
    pub snapshot_latest: Option<String>,
    /// Unix time the newest snapshot was taken; `null` without any.
    pub snapshot_latest_time: Option<u64>,
}

impl SnapshotInfo {
    /// Summarises a snapshot list. Rows come in no order; `current` is skipped, and so
    /// are snapshots still being made (`snapstate: prepare`). A snapshot being deleted
    /// still counts until it is gone.
    pub fn from_list(rows: &[SnapshotEntry]) -> SnapshotInfo {
        let real: Vec<&SnapshotEntry> = rows
            .iter()
            .filter(|r| !r.is_current() && r.snapstate.as_deref() != Some("prepare"))
            .collect();
        let newest = real.iter().max_by(|a, b| {
            a.snaptime
                .cmp(&b.snaptime)
                .then_with(|| a.name.cmp(&b.name))
        });
        SnapshotInfo {
            snapshots: Some(real.len() as u32),
            snapshot_latest: newest.map(|s| s.name.clone()),
            snapshot_latest_time: newest.and_then(|s| s.snaptime).filter(|t| *t > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, snaptime: Option<u64>, snapstate: Option<&str>) -> SnapshotEntry {
        SnapshotEntry {
            name: name.into(),
            snaptime,
            parent: None,
            snapstate: snapstate.map(str::to_string),
        }
    }

    #[test]
    fn the_newest_snapshot_wins_whatever_the_row_order_and_current_is_not_counted() {
        let rows = [
            entry("b", Some(200), None),
            entry("a", Some(300), None),
            entry("making", Some(400), Some("prepare")),
            entry("current", None, None),
        ];
        let info = SnapshotInfo::from_list(&rows);
        assert_eq!(info.snapshots, Some(2));
        assert_eq!(info.snapshot_latest.as_deref(), Some("a"));
        assert_eq!(info.snapshot_latest_time, Some(300));
        let none = SnapshotInfo::from_list(&[entry("current", None, None)]);
        assert_eq!(
            none,
            SnapshotInfo {
                snapshots: Some(0),
                ..SnapshotInfo::default()
            }
        );
    }
}
