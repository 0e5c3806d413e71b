//! The bridge's own device: the retained `{base}/bridge/info`, its Home Assistant
//! discovery (version, one "Proxmox API" sensor per cluster, Refresh) and the retained
//! `{base}/bridge/proxmox/{c}` states behind those sensors. Kept apart from the
//! per-object publishing it rides along with.
use std::collections::BTreeMap;

use serde::Serialize;

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

#[derive(Serialize, PartialEq)]
struct BridgeInfo<'a> {
    version: &'a str,
    clusters: Vec<ClusterInfo<'a>>,
}

#[derive(Serialize, PartialEq)]
struct ClusterInfo<'a> {
    id: &'a str,
    name: Option<&'a str>,
    reachable: bool,
    pve_version: Option<&'a str>,
    nodes: usize,
    guests: usize,
}

impl<O: Outbox> Publisher<O> {
    /// Publishes `bridge/info` when it changed (always when `force`), then the bridge
    /// device.
    pub(super) async fn publish_bridge_info(&mut self, force: bool) {
        let info = BridgeInfo {
            version: env!("CARGO_PKG_VERSION"),
            clusters: self
                .clusters
                .iter()
                .map(|(id, r)| ClusterInfo {
                    id,
                    name: r.name.as_deref(),
                    reachable: r.reachable,
                    pve_version: r.pve_version.as_deref(),
                    nodes: r.nodes,
                    guests: r.guests,
                })
                .collect(),
        };
        let payload = serde_json::to_string(&info).unwrap_or_default();
        if force || payload != self.bridge_info {
            self.bridge_info = payload.clone();
            let topic = self.topics.bridge_info();
            self.sink.send(&topic, payload, true).await;
        }
        self.publish_bridge_device(force).await;
    }

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
