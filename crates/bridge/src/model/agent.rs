//! What the agent lane learned about each guest (see `poller::agent`), merged into the
//! guest's state: `agent`, `ip_addresses`, `os`, and a VM's `disk`.
use std::collections::HashMap;

/// One guest's guest-agent knowledge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentInfo {
    /// `Some(true)`: the last call answered; `Some(false)`: the agent is configured but
    /// did not answer (not running, timed out); `None`: not asked (no agent configured,
    /// not running, a container, or the token may not ask).
    pub responding: Option<bool>,
    /// Without loopback and link-local, IPv4 first; empty while unknown.
    pub ip_addresses: Vec<String>,
    /// `Ubuntu 24.04.1 LTS`; kept while the VM is stopped (the OS is still installed).
    pub os: Option<String>,
    /// A VM's bytes used on its real filesystems (`get-fsinfo`); kept while stopped.
    pub disk_used: Option<u64>,
}

/// Per vmid; guests the lane knows nothing of are absent.
pub type AgentData = HashMap<u32, AgentInfo>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{RateMemory, SlowData, ViewBuilder};
    use crate::pve::Resource;

    fn rows() -> Vec<Resource> {
        serde_json::from_value(serde_json::json!([
            {"id": "node/pve", "type": "node", "node": "pve", "status": "online"},
            {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running",
             "disk": 0, "maxdisk": 34359738368u64, "uptime": 1000},
            {"id": "lxc/101", "type": "lxc", "vmid": 101, "node": "pve", "status": "running",
             "disk": 1000, "maxdisk": 8589934592u64, "uptime": 1000}
        ]))
        .unwrap()
    }

    fn build(
        agent: &AgentData,
        previous: Option<&crate::model::ClusterView>,
        now: f64,
    ) -> crate::model::ClusterView {
        let slow = SlowData::default();
        let mut rates = RateMemory::default();
        let mut builder = ViewBuilder::new("c", "", &slow, &mut rates, now, previous).agent(agent);
        for row in rows() {
            builder.add(&row);
        }
        builder.finish()
    }

    fn vm_info(ip: &str, used: u64) -> AgentInfo {
        AgentInfo {
            responding: Some(true),
            ip_addresses: vec![ip.to_string()],
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            disk_used: Some(used),
        }
    }

    #[test]
    fn agent_data_fills_the_guest_state_and_a_vms_disk() {
        let agent = AgentData::from([
            (100, vm_info("192.0.2.10", 5_000_000_000)),
            (
                101,
                AgentInfo {
                    ip_addresses: vec!["192.0.2.11".into()],
                    ..AgentInfo::default()
                },
            ),
        ]);
        let view = build(&agent, None, 0.0);
        let vm = &view.guests[&100];
        assert_eq!(vm.lanes.agent, Some(true));
        assert_eq!(vm.lanes.ip_addresses, vec!["192.0.2.10"]);
        assert_eq!(
            vm.lanes.os.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(vm.disk, Some(5_000_000_000));
        assert!(vm.lanes.disk_from_agent);
        // A container keeps Proxmox's own disk figure and has no agent.
        let ct = &view.guests[&101];
        assert_eq!(
            (ct.disk.get(), ct.lanes.agent, ct.lanes.disk_from_agent),
            (Some(1000), None, false)
        );
        let json = serde_json::to_value(&**vm).unwrap();
        assert!(json.get("disk_from_agent").is_none(), "internal only");
        assert_eq!(json["ip_addresses"][0], "192.0.2.10");
    }

    #[test]
    fn the_same_agent_data_or_a_few_bytes_more_used_cause_no_new_report() {
        let agent = AgentData::from([(100, vm_info("192.0.2.10", 5_000_000_000))]);
        let first = build(&agent, None, 0.0);
        let again = build(&agent, Some(&first), 10.0);
        assert!(Arc::ptr_eq(&first.guests[&100], &again.guests[&100]));
        // 1 MB more on a 32 GiB disk: below the reportable change
        let grown = AgentData::from([(100, vm_info("192.0.2.10", 5_001_000_000))]);
        let later = build(&grown, Some(&first), 20.0);
        assert!(Arc::ptr_eq(&first.guests[&100], &later.guests[&100]));
        // A new address is reported at once
        let moved = AgentData::from([(100, vm_info("192.0.2.99", 5_000_000_000))]);
        let after = build(&moved, Some(&first), 30.0);
        assert_eq!(after.guests[&100].lanes.ip_addresses, vec!["192.0.2.99"]);
    }
}
