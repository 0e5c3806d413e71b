//! The bridge's own device: its Home Assistant discovery (version, one "Proxmox API"
//! sensor per cluster, Refresh) and the retained `{base}/bridge/proxmox/{c}` states
//! behind those sensors. Kept apart from the per-object publishing it rides along with.
use std::collections::BTreeMap;

use super::{Outbox, Publisher};
use crate::ha::discovery::bridge_config;

/// What the broker was told about the bridge device.
#[derive(Debug, Default)]
pub(super) struct BridgeDeviceRecord {
    /// The clusters in the discovery payload last sent; `None` before the first one.
    announced: Option<Vec<String>>,
    /// Per cluster, the last `online`/`offline` published on `bridge/proxmox/{c}`.
    proxmox: BTreeMap<String, bool>,
}

impl<O: Outbox> Publisher<O> {
    /// Publishes what changed about the bridge device (everything when `force`, after a
    /// reconnect or HA's birth): its discovery when the set of clusters changed, and
    /// each cluster's Proxmox API state when it flipped. Called wherever `bridge/info`
    /// may change, which covers every poll result.
    pub(super) async fn publish_bridge_device(&mut self, force: bool) {
        let clusters: Vec<String> = self.clusters.keys().cloned().collect();
        if let Some(ctx) = &self.discovery {
            if force || self.bridge_device.announced.as_ref() != Some(&clusters) {
                let ids: Vec<&str> = clusters.iter().map(String::as_str).collect();
                let payload = bridge_config(ctx, &ids);
                let topic = self.topics.bridge_discovery();
                self.sink.send(&topic, payload, true).await;
                self.bridge_device.announced = Some(clusters);
            }
        }
        let states: Vec<(String, bool)> = self
            .clusters
            .iter()
            .map(|(c, r)| (c.clone(), r.reachable))
            .collect();
        for (cluster, reachable) in states {
            if force || self.bridge_device.proxmox.get(&cluster) != Some(&reachable) {
                let topic = self.topics.bridge_proxmox(&cluster);
                let payload = if reachable { "online" } else { "offline" };
                self.sink.send(&topic, payload, true).await;
                self.bridge_device.proxmox.insert(cluster, reachable);
            }
        }
    }
}
