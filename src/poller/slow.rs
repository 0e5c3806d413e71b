//! The slow lane of one cluster: every `poll.slow_interval`, the details only per-node
//! endpoints have, one request at a time and spread over the interval (see `poller`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::model::SlowData;
use crate::pve::{ClusterStatusKind, PveClient, PveError, Resource, ResourceKind};

/// The slow lane of one cluster (see the module docs).
pub(super) async fn slow_lane(
    client: PveClient,
    interval: Duration,
    mut resources: watch::Receiver<Arc<Vec<Resource>>>,
    out: watch::Sender<Arc<SlowData>>,
    reread: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    // Wait for the fast lane's first answer: it says which nodes and storages exist.
    loop {
        if !resources.borrow_and_update().is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = resources.changed() => if changed.is_err() { return },
        }
    }
    let mut data = SlowData::default();
    let mut only_backups = false;
    let mut round_start = tokio::time::Instant::now();
    loop {
        // Plan from the node and storage rows of the latest answer (the fast lane sends
        // only those: the guest rows are thousands and not needed here).
        let mut requests = plan(&resources.borrow_and_update());
        if only_backups {
            requests.retain(|r| matches!(r, SlowRequest::StorageContent { .. }));
        }
        // Spread the requests over half the interval: never a burst of N at once.
        let spacing = if only_backups {
            Duration::from_millis(100)
        } else {
            (interval / (2 * requests.len().max(1) as u32)).min(Duration::from_secs(2))
        };
        let mut backups: HashMap<u32, u64> = HashMap::new();
        let mut backups_complete = true;
        for (i, request) in requests.iter().enumerate() {
            if i > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(spacing) => {}
                }
            }
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = run_request(&client, request, &mut data, &mut backups) => done,
            };
            if let Err(err) = done {
                debug!(?request, error = %err, "slow-lane request failed");
                if matches!(request, SlowRequest::StorageContent { .. }) {
                    backups_complete = false;
                }
            }
        }
        // Keep older backup times for storages we could not read this round.
        if backups_complete {
            data.last_backup = backups;
        } else {
            for (vmid, ctime) in backups {
                let entry = data.last_backup.entry(vmid).or_insert(ctime);
                *entry = (*entry).max(ctime);
            }
        }
        let _ = out.send(Arc::new(data.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(round_start + interval) => {
                only_backups = false;
                round_start = tokio::time::Instant::now();
            }
            // A backup just finished: read the backup storages now so `last_backup`
            // follows at once; the regular round keeps its schedule.
            _ = reread.notified() => only_backups = true,
        }
    }
}

#[derive(Debug)]
enum SlowRequest {
    Version,
    ClusterStatus,
    NodeStatus(String),
    StorageContent { node: String, storage: String },
}

/// Which slow-lane requests one round makes: version, cluster status, each online
/// node's status, and the content of each backup storage (a shared storage once).
fn plan(rows: &[Resource]) -> Vec<SlowRequest> {
    let online: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == ResourceKind::Node && r.status.as_deref() == Some("online"))
        .filter_map(|r| r.node.as_deref())
        .collect();
    let mut requests = vec![SlowRequest::Version, SlowRequest::ClusterStatus];
    requests.extend(
        online
            .iter()
            .map(|n| SlowRequest::NodeStatus(n.to_string())),
    );
    let mut shared_done = std::collections::HashSet::new();
    for row in rows.iter().filter(|r| r.kind == ResourceKind::Storage) {
        let (Some(node), Some(storage)) = (row.node.as_deref(), row.storage.as_deref()) else {
            continue;
        };
        let holds_backups = row
            .content
            .as_deref()
            .is_some_and(|c| c.split(',').any(|x| x == "backup"));
        if !holds_backups || row.status.as_deref() != Some("available") || !online.contains(&node) {
            continue;
        }
        if row.shared && !shared_done.insert(storage.to_string()) {
            continue;
        }
        requests.push(SlowRequest::StorageContent {
            node: node.to_string(),
            storage: storage.to_string(),
        });
    }
    requests
}

async fn run_request(
    client: &PveClient,
    request: &SlowRequest,
    data: &mut SlowData,
    backups: &mut HashMap<u32, u64>,
) -> Result<(), PveError> {
    match request {
        SlowRequest::Version => {
            data.pve_version = client.version().await?.version;
        }
        SlowRequest::ClusterStatus => {
            let rows = client.cluster_status().await?;
            let cluster = rows.iter().find(|r| r.kind == ClusterStatusKind::Cluster);
            data.cluster_name = cluster.and_then(|r| r.name.clone());
            // A standalone host has no cluster row and is always quorate.
            data.quorate = Some(cluster.and_then(|r| r.quorate).unwrap_or(true));
        }
        SlowRequest::NodeStatus(node) => {
            let status = client.node_status(node).await?;
            data.node_status.insert(node.clone(), status);
        }
        SlowRequest::StorageContent { node, storage } => {
            for item in client
                .storage_content(node, storage, Some("backup"))
                .await?
            {
                if let (Some(vmid), Some(ctime)) = (item.vmid, item.ctime) {
                    let entry = backups.entry(vmid).or_insert(ctime);
                    *entry = (*entry).max(ctime);
                }
            }
        }
    }
    Ok(())
}
