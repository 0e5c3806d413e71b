//! The slow lane's per-guest snapshot reads: which guests to read (from the latest view:
//! the fast lane's guests, no extra request) and the reads asked for right after a
//! snapshot command of the bridge ends.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::model::{ClusterView, SlowData, SnapshotInfo};
use crate::pve::{GuestKind, PveClient, PveError};

/// What the slow lane needs to read guests' snapshots.
pub(super) struct GuestFeed {
    /// The poller's latest view: which guests exist, on which node.
    pub views: watch::Receiver<Option<Arc<ClusterView>>>,
    /// vmids whose snapshot list must be read now (a snapshot command just ended).
    pub reread: mpsc::Receiver<u32>,
}

/// One guest's snapshot list to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SnapshotRead {
    pub node: String,
    pub kind: GuestKind,
    pub vmid: u32,
}

/// Every guest whose snapshots can be read: on a node that answers, not a template (it
/// cannot take snapshots), status known.
pub(super) fn candidates(view: Option<&ClusterView>) -> Vec<SnapshotRead> {
    let Some(view) = view else {
        return Vec::new();
    };
    view.guests
        .values()
        .filter(|g| !g.template && &*g.status != "unknown")
        .filter(|g| {
            view.nodes
                .get(&*g.node)
                .is_none_or(|n| n.status == "online")
        })
        .map(|g| SnapshotRead {
            node: g.node.to_string(),
            kind: g.kind,
            vmid: g.vmid,
        })
        .collect()
}

/// The read for one guest, if the view knows it.
pub(super) fn for_guest(view: Option<&ClusterView>, vmid: u32) -> Option<SnapshotRead> {
    let g = view?.guests.get(&vmid)?;
    Some(SnapshotRead {
        node: g.node.to_string(),
        kind: g.kind,
        vmid,
    })
}

/// `GET …/snapshot` for one guest, summarised into `data`.
pub(super) async fn read(
    client: &PveClient,
    read: &SnapshotRead,
    data: &mut SlowData,
) -> Result<(), PveError> {
    let rows = client.snapshots(&read.node, read.kind, read.vmid).await?;
    let info = SnapshotInfo::from_list(&rows);
    // The map is shared with the data last sent: copied only for news.
    if data.snapshots.get(&read.vmid) != Some(&info) {
        Arc::make_mut(&mut data.snapshots).insert(read.vmid, info);
    }
    Ok(())
}

/// Reads one guest's list at once (mid-round) and hands the slow-lane data on.
pub(super) async fn reread(
    client: &PveClient,
    guests: &GuestFeed,
    vmid: u32,
    data: &mut SlowData,
    out: &watch::Sender<Arc<SlowData>>,
) {
    let Some(target) = for_guest(guests.views.borrow().as_deref(), vmid) else {
        return;
    };
    if read(client, &target, data).await.is_ok() {
        let _ = out.send(Arc::new(data.clone()));
    }
}

/// Drops the summaries of guests that are gone.
pub(super) fn forget_gone(data: &mut SlowData, view: Option<&ClusterView>) {
    if let Some(view) = view {
        if data
            .snapshots
            .keys()
            .any(|vmid| !view.guests.contains_key(vmid))
        {
            Arc::make_mut(&mut data.snapshots).retain(|vmid, _| view.guests.contains_key(vmid));
        }
    }
}
