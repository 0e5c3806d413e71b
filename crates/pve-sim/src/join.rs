//! A node joining the cluster (`pvecm add` run on the new node): a standalone host becomes
//! a cluster of two, the new node healthy and empty. The demo uses it to show what only a
//! cluster has (replication to another node); tests and `pve2mqtt sim` keep their worlds.

use super::state::{Sim, SimError};
use super::world::{now, PveVersion, World};

impl World {
    /// Adds node `name` at `ip`. A standalone host becomes cluster `cluster` (its node
    /// id 1, the new node the next); the new node is a copy of the first one's hardware,
    /// booted a day ago, with the health of a generated node (an NVMe and an HDD, a ZFS
    /// `rpool`, no updates, no subscription).
    pub fn join_node(
        &mut self,
        name: &str,
        ip: &str,
        cluster: &str,
        at: f64,
        version: PveVersion,
    ) -> Result<(), String> {
        if self.node(name).is_some() {
            return Err(format!("node '{name}' already exists"));
        }
        let Some(first) = self.nodes.first().cloned() else {
            return Err("the world has no node to join".into());
        };
        if self.cluster_name.is_none() {
            self.cluster_name = Some(cluster.to_string());
            for (index, node) in self.nodes.iter_mut().enumerate() {
                node.nodeid = index as u32 + 1;
            }
        }
        let nodeid = self.nodes.iter().map(|n| n.nodeid).max().unwrap_or(0) + 1;
        let mut node = first;
        node.name = name.to_string();
        node.ip = ip.to_string();
        node.nodeid = nodeid;
        node.online = true;
        node.boot_time = at - 86_400.0;
        node.rootfs_used = node.rootfs_total / 8;
        node.load = 0.03;
        node.mem_fraction = 0.12;
        // The certificate of a node the simulator does not serve: any fingerprint.
        node.ssl_fingerprint = node
            .ssl_fingerprint
            .split(':')
            .rev()
            .collect::<Vec<_>>()
            .join(":");
        self.nodes.push(node);
        // Index 2 of a generated cluster: ZFS present (a replication target needs it).
        self.node_health.insert(
            name.to_string(),
            crate::node_health::generated_health(2, at, version),
        );
        Ok(())
    }
}

impl Sim {
    /// Node `name` joins the cluster (see [`World::join_node`]).
    pub fn join_node(&self, name: &str, ip: &str, cluster: &str) -> Result<(), SimError> {
        let mut state = self.lock();
        let version = state.version;
        state
            .world
            .join_node(name, ip, cluster, now(), version)
            .map_err(SimError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_joining_a_standalone_host_makes_a_cluster_of_two() {
        let version = PveVersion::parse("9.1.5").unwrap();
        let mut world = World::seed(1_000_000.0, version, "AA:BB");
        world
            .join_node("pve2", "192.168.1.11", "homelab", 1_000_000.0, version)
            .unwrap();
        assert_eq!(world.cluster_name.as_deref(), Some("homelab"));
        let ids: Vec<(String, u32)> = world
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.nodeid))
            .collect();
        assert_eq!(ids, [("pve".to_string(), 1), ("pve2".to_string(), 2)]);
        assert!(world.quorate());
        assert!(world.health_of("pve2").zfs.is_some());
        let again = world.join_node("pve2", "192.168.1.12", "homelab", 1_000_000.0, version);
        assert!(again.unwrap_err().contains("already exists"));
    }
}
