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
