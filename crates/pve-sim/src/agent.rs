//! The QEMU guest agent (`GET /nodes/{node}/qemu/{vmid}/agent/{command}`) and the
//! container interfaces (`GET /nodes/{node}/lxc/{vmid}/interfaces`), as reference
//! `pve-api-round2.md` §11, §12 and §17 describe them.
//!
//! - A VM's config has an `agent` key or not ([`AgentConfig`]); the agent inside the
//!   guest answers, is not running, or hangs ([`AgentMode`]). The checks run in Proxmox's
//!   order: config missing, `No QEMU guest agent configured` (no `agent` key at all),
//!   `VM 100 is not running`, then a `guest-ping` that fails after ~3 s with
//!   `QEMU guest agent is not running` (also for `agent: 0`), then the command, which can
//!   fail after ~5 s with `VM 100 qga command 'guest-get-fsinfo' failed - got timeout`.
//!   The waits happen outside the simulator's lock, like a pveproxy worker held by one
//!   request while the others serve.
//! - Answers are `{"data":{"result": …}}` with QGA's own member names; the addresses
//!   include loopback and link-local, the filesystems real and pseudo ones and a bind
//!   mount of the root device, as a real Linux guest reports them.
//! - Privileges: `VM.Monitor` on PVE 8, `VM.GuestAgent.Audit` (or `…Unrestricted`) on 9.
//! - Containers: PVE >= 8.1 only (501 before); a stopped one answers `{"data":null}`;
//!   `ip-address-type` is iproute2's `inet`/`inet6`; `hardware-address` and
//!   `ip-addresses` exist since 8.4 (before: `hwaddr`, `inet`, `inet6` only).
//!
//! Which VMs have what is deterministic by vmid ([`default_setup`]); the control API
//! `POST /_sim/agents/{vmid}` changes one, `POST /_sim/agents` the waits.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, State as AxumState};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::respond::ApiError;
use super::state::{Sim, SimError, State};
use super::world::{Guest, GuestType, PowerState, PveVersion};

const GIB: u64 = 1024 * 1024 * 1024;

/// The `agent` key of a VM's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentConfig {
    /// No `agent` key: `No QEMU guest agent configured`.
    Absent,
    /// `agent: 0`: passes the config check, then the ping fails.
    Disabled,
    /// `agent: 1`.
    Enabled,
}

/// What the agent inside the guest does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    Running,
    /// Installed but not running (or not installed): the ping fails after ~3 s.
    NotRunning,
    /// Answers the ping, then every command times out after ~5 s.
    Timeout,
}

/// One VM's agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSetup {
    pub config: AgentConfig,
    pub mode: AgentMode,
}

/// The agents of the world: the deterministic defaults, changes made through the control
/// API, and how long the failing paths take.
#[derive(Clone, Debug)]
pub(crate) struct Agents {
    overrides: HashMap<u32, AgentSetup>,
    /// `guest-ping`'s timeout before `QEMU guest agent is not running` (real: 3 s).
    pub ping_wait: Duration,
    /// QGA's command timeout before `… failed - got timeout` (real: 5 s).
    pub command_wait: Duration,
}

impl Default for Agents {
    fn default() -> Self {
        Agents {
            overrides: HashMap::new(),
            ping_wait: Duration::from_secs(3),
            command_wait: Duration::from_secs(5),
        }
    }
}

impl Agents {
    pub fn setup(&self, vmid: u32) -> AgentSetup {
        self.overrides
            .get(&vmid)
            .copied()
            .unwrap_or_else(|| default_setup(vmid))
    }
}

/// Most VMs have the agent configured and running; every tenth (vmid ending in 9) has
/// no `agent` key; one in fifty (vmid % 50 == 21) has it configured but not running.
pub fn default_setup(vmid: u32) -> AgentSetup {
    let config = if vmid % 10 == 9 {
        AgentConfig::Absent
    } else {
        AgentConfig::Enabled
    };
    let mode = if vmid % 50 == 21 {
        AgentMode::NotRunning
    } else {
        AgentMode::Running
    };
    AgentSetup { config, mode }
}

/// The agent commands the simulator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentCommand {
    OsInfo,
    FsInfo,
    NetworkInterfaces,
    Ping,
}

impl AgentCommand {
    pub fn parse(segment: &str) -> Option<Self> {
        Some(match segment {
            "get-osinfo" => AgentCommand::OsInfo,
            "get-fsinfo" => AgentCommand::FsInfo,
            "network-get-interfaces" => AgentCommand::NetworkInterfaces,
            "ping" => AgentCommand::Ping,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentCommand::OsInfo => "get-osinfo",
            AgentCommand::FsInfo => "get-fsinfo",
            AgentCommand::NetworkInterfaces => "network-get-interfaces",
            AgentCommand::Ping => "ping",
        }
    }

    fn qga_name(self) -> &'static str {
        match self {
            AgentCommand::OsInfo => "guest-get-osinfo",
            AgentCommand::FsInfo => "guest-get-fsinfo",
            AgentCommand::NetworkInterfaces => "guest-network-get-interfaces",
            AgentCommand::Ping => "guest-ping",
        }
    }
}

/// The privileges an agent read command needs on this release (checked with `any`).
pub(crate) fn agent_privileges(version: PveVersion) -> &'static [&'static str] {
    if version.is_pve9() {
        &["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"]
    } else {
        &["VM.Monitor"]
    }
}

/// The container interfaces endpoint exists since pve-container 5.0.6 (PVE 8.1).
pub(crate) fn has_lxc_interfaces(version: PveVersion) -> bool {
    version.at_least(8, 1, 0)
}

/// The unrestricted token's privileges on this release: PVE 8 has `VM.Monitor` and no
/// `VM.GuestAgent.*`.
pub(crate) fn release_privileges(
    mut privileges: std::collections::BTreeSet<String>,
    version: PveVersion,
) -> std::collections::BTreeSet<String> {
    if !version.is_pve9() {
        privileges.retain(|p| !p.starts_with("VM.GuestAgent."));
        privileges.insert("VM.Monitor".to_string());
    }
    privileges
}

/// An agent answer and how long it takes (waited outside the lock by the caller).
pub(crate) type Timed = (Duration, Result<Value, ApiError>);

fn missing_config(node: &str, kind: GuestType, vmid: u32) -> ApiError {
    ApiError::server(format!(
        "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
        kind.config_dir()
    ))
}

/// `GET /nodes/{node}/qemu/{vmid}/agent/{command}`.
pub(crate) fn qemu_agent(state: &State, node: &str, vmid: u32, command: AgentCommand) -> Timed {
    let now = Duration::ZERO;
    let Some(guest) = state.world.guest_on(vmid, GuestType::Qemu, node) else {
        return (now, Err(missing_config(node, GuestType::Qemu, vmid)));
    };
    let agents = &state.agents;
    let setup = agents.setup(vmid);
    if setup.config == AgentConfig::Absent {
        return (now, Err(ApiError::server("No QEMU guest agent configured")));
    }
    if !guest.power.process_running() {
        return (
            now,
            Err(ApiError::server(format!("VM {vmid} is not running"))),
        );
    }
    let not_running = (
        agents.ping_wait,
        Err(ApiError::server("QEMU guest agent is not running")),
    );
    // A paused VM's agent cannot answer the ping either.
    if setup.config == AgentConfig::Disabled
        || setup.mode == AgentMode::NotRunning
        || guest.power == PowerState::Paused
    {
        return not_running;
    }
    if setup.mode == AgentMode::Timeout {
        return (
            agents.command_wait,
            Err(ApiError::server(format!(
                "VM {vmid} qga command '{}' failed - got timeout",
                command.qga_name()
            ))),
        );
    }
    let result = match command {
        AgentCommand::OsInfo => os_info(vmid),
        AgentCommand::FsInfo => fs_info(guest),
        AgentCommand::NetworkInterfaces => network_interfaces(vmid),
        AgentCommand::Ping => json!({}),
    };
    (now, Ok(json!({ "result": result })))
}

/// `GET /nodes/{node}/lxc/{vmid}/interfaces`.
pub(crate) fn lxc_interfaces(state: &State, node: &str, vmid: u32) -> Result<Value, ApiError> {
    let guest = state
        .world
        .guest_on(vmid, GuestType::Lxc, node)
        .ok_or_else(|| missing_config(node, GuestType::Lxc, vmid))?;
    // `find_lxc_pid` fails for a stopped container and the error is swallowed.
    if !guest.power.process_running() {
        return Ok(Value::Null);
    }
    let detailed = state.version.at_least(8, 4, 0);
    let (v4, mac) = addresses(vmid, GuestType::Lxc);
    let link_local = link_local(&mac);
    let row = |name: &str, mac: &str, inet: (&str, u8), inet6: (&str, u8)| {
        let mut row = json!({
            "name": name,
            "hwaddr": mac,
            "inet": format!("{}/{}", inet.0, inet.1),
            "inet6": format!("{}/{}", inet6.0, inet6.1),
        });
        if detailed {
            row["hardware-address"] = Value::from(mac);
            row["ip-addresses"] = json!([
                {"ip-address": inet.0, "ip-address-type": "inet", "prefix": inet.1},
                {"ip-address": inet6.0, "ip-address-type": "inet6", "prefix": inet6.1},
            ]);
        }
        row
    };
    Ok(json!([
        row("lo", "00:00:00:00:00:00", ("127.0.0.1", 8), ("::1", 128)),
        row("eth0", &mac, (&v4, 24), (&link_local, 64)),
    ]))
}

/// The guest's IPv4 address and MAC: the seed's VM 100 and CT 101 sit in the home LAN,
/// generated guests in 10.20/16 (VMs) and 10.30/16 (containers).
fn addresses(vmid: u32, kind: GuestType) -> (String, String) {
    let v4 = match (vmid, kind) {
        (100, GuestType::Qemu) => "192.168.1.50".to_string(),
        (101, GuestType::Lxc) => "192.168.1.51".to_string(),
        (_, GuestType::Qemu) => format!("10.20.{}.{}", (vmid / 250) % 256, vmid % 250 + 2),
        (_, GuestType::Lxc) => format!("10.30.{}.{}", (vmid / 250) % 256, vmid % 250 + 2),
    };
    let mac = format!(
        "bc:24:11:{:02x}:{:02x}:{:02x}",
        (vmid >> 16) & 0xff,
        (vmid >> 8) & 0xff,
        vmid & 0xff
    );
    (v4, mac)
}

/// The EUI-64 link-local address of a MAC.
fn link_local(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap_or(0))
        .collect();
    format!(
        "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
        b[0] ^ 2,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

/// Which OS a VM runs (the seed's VM 100 runs Home Assistant OS).
fn os_family(vmid: u32) -> u32 {
    if vmid == 100 {
        4
    } else {
        vmid % 4
    }
}

fn os_info(vmid: u32) -> Value {
    match os_family(vmid) {
        0 => json!({"id": "ubuntu", "name": "Ubuntu", "pretty-name": "Ubuntu 24.04.1 LTS",
            "version": "24.04.1 LTS (Noble Numbat)", "version-id": "24.04",
            "kernel-release": "6.8.0-45-generic", "kernel-version": "#45-Ubuntu SMP PREEMPT_DYNAMIC Fri Aug 30 12:02:04 UTC 2024",
            "machine": "x86_64"}),
        1 => {
            json!({"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
            "version": "12 (bookworm)", "version-id": "12",
            "kernel-release": "6.1.0-26-amd64", "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.112-1 (2024-09-30)",
            "machine": "x86_64"})
        }
        2 => {
            json!({"id": "mswindows", "name": "Microsoft Windows", "pretty-name": "Windows Server 2022 Standard",
            "version": "Microsoft Windows Server 2022", "version-id": "2022", "variant": "server", "variant-id": "server",
            "kernel-release": "20348", "kernel-version": "10.0", "machine": "x86_64"})
        }
        3 => {
            json!({"id": "rocky", "name": "Rocky Linux", "pretty-name": "Rocky Linux 9.4 (Blue Onyx)",
            "version": "9.4 (Blue Onyx)", "version-id": "9.4",
            "kernel-release": "5.14.0-427.13.1.el9_4.x86_64", "kernel-version": "#1 SMP PREEMPT_DYNAMIC Wed May 1 19:11:28 UTC 2024",
            "machine": "x86_64"})
        }
        _ => {
            json!({"id": "haos", "name": "Home Assistant OS", "pretty-name": "Home Assistant OS 14.2",
            "version": "14.2", "version-id": "14.2", "kernel-release": "6.6.62-haos",
            "kernel-version": "#1 SMP PREEMPT_DYNAMIC Tue Nov 26 10:15:02 UTC 2024", "machine": "x86_64"})
        }
    }
}

fn statistics(vmid: u32) -> Value {
    let base = u64::from(vmid) * 1_048_576;
    json!({"rx-bytes": base * 7, "rx-packets": base / 900, "rx-errs": 0, "rx-dropped": 0,
        "tx-bytes": base * 3, "tx-packets": base / 1400, "tx-errs": 0, "tx-dropped": 0})
}

fn network_interfaces(vmid: u32) -> Value {
    let (v4, mac) = addresses(vmid, GuestType::Qemu);
    let link_local = link_local(&mac);
    let global6 = format!("fd00:20::{vmid:x}");
    if os_family(vmid) == 2 {
        // Windows: a pseudo loopback, and an APIPA address beside the DHCP one.
        return json!([
            {"name": "Ethernet", "hardware-address": mac, "ip-addresses": [
                {"ip-address": link_local, "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": v4, "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "169.254.12.34", "ip-address-type": "ipv4", "prefix": 16}],
             "statistics": statistics(vmid)},
            {"name": "Loopback Pseudo-Interface 1", "ip-addresses": [
                {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128},
                {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}],
             "statistics": statistics(0)},
        ]);
    }
    let mut interfaces = vec![
        json!({"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [
            {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
            {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}],
         "statistics": statistics(0)}),
        json!({"name": "eth0", "hardware-address": mac, "ip-addresses": [
            {"ip-address": v4, "ip-address-type": "ipv4", "prefix": 24},
            {"ip-address": global6, "ip-address-type": "ipv6", "prefix": 64},
            {"ip-address": link_local, "ip-address-type": "ipv6", "prefix": 64}],
         "statistics": statistics(vmid)}),
    ];
    if os_family(vmid) == 0 {
        // Docker's bridge, down, without addresses beyond its own.
        interfaces.push(
            json!({"name": "docker0", "hardware-address": "02:42:5c:1e:00:01",
            "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4", "prefix": 16}],
            "statistics": statistics(1)}),
        );
    }
    Value::Array(interfaces)
}

fn disk(bus: u32, dev: &str) -> Value {
    json!([{"pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0},
        "bus-type": "scsi", "bus": 0, "target": 0, "unit": bus, "serial": "drive-scsi0", "dev": dev}])
}

/// What the guest's root filesystem holds: a share of its disk, by vmid.
pub fn root_used(guest: &Guest) -> u64 {
    let total = root_total(guest);
    total / 100 * (20 + u64::from(guest.vmid % 50))
}

fn root_total(guest: &Guest) -> u64 {
    // The partition and the filesystem's own overhead: ~3 % less than the disk.
    guest.maxdisk / 100 * 97
}

fn fs_info(guest: &Guest) -> Value {
    let vmid = guest.vmid;
    let (used, total) = (root_used(guest), root_total(guest));
    if os_family(vmid) == 2 {
        return json!([
            {"name": "\\\\?\\Volume{6f0c3a1e-0000-0000-0000-100000000000}\\", "mountpoint": "C:\\",
             "type": "NTFS", "used-bytes": used, "total-bytes": total, "disk": disk(0, "")},
            {"name": "\\\\?\\Volume{6f0c3a1e-0000-0000-0000-000000100000}\\", "mountpoint": "System Reserved",
             "type": "NTFS", "used-bytes": 33_554_432u64, "total-bytes": 52_424_704u64, "disk": disk(0, "")},
        ]);
    }
    let mut filesystems = vec![
        json!({"name": "sda1", "mountpoint": "/", "type": "ext4", "used-bytes": used,
            "total-bytes": total, "disk": disk(0, "/dev/sda1")}),
        json!({"name": "sda15", "mountpoint": "/boot/efi", "type": "vfat", "used-bytes": 6_291_456u64,
            "total-bytes": 109_422_592u64, "disk": disk(0, "/dev/sda15")}),
        // A bind mount of the root device: the same filesystem, counted once.
        json!({"name": "sda1", "mountpoint": "/var/lib/containers", "type": "ext4", "used-bytes": used,
            "total-bytes": total, "disk": disk(0, "/dev/sda1")}),
        json!({"name": "tmpfs", "mountpoint": "/run", "type": "tmpfs", "used-bytes": 1_212_416u64,
            "total-bytes": 401_408_000u64, "disk": []}),
    ];
    if os_family(vmid) == 0 {
        filesystems.push(
            json!({"name": "loop0", "mountpoint": "/snap/core22/1621", "type": "squashfs",
            "used-bytes": 77_594_624u64, "total-bytes": 77_594_624u64, "disk": []}),
        );
        filesystems.push(
            json!({"name": "overlay", "mountpoint": "/var/lib/docker/overlay2/3f1c/merged",
            "type": "overlay", "used-bytes": used, "total-bytes": total, "disk": []}),
        );
    }
    if guest.maxdisk >= 64 * GIB {
        // A second disk for data.
        filesystems.push(json!({"name": "sdb1", "mountpoint": "/srv", "type": "xfs",
            "used-bytes": guest.maxdisk / 8, "total-bytes": guest.maxdisk / 2, "disk": disk(1, "/dev/sdb1")}));
    }
    Value::Array(filesystems)
}

/// `POST /_sim/agents/{vmid}`: what one VM's agent does from now on.
#[derive(Debug, Deserialize)]
pub(crate) struct AgentPatch {
    #[serde(default)]
    config: Option<AgentConfig>,
    #[serde(default)]
    mode: Option<AgentMode>,
}

/// `POST /_sim/agents`: how long the failing paths take.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(crate) struct AgentWaits {
    #[serde(default)]
    ping_wait_ms: Option<u64>,
    #[serde(default)]
    command_wait_ms: Option<u64>,
}

impl Sim {
    /// Changes what a VM's agent does (absent fields stay); returns the new setup.
    pub fn set_agent(
        &self,
        vmid: u32,
        config: Option<AgentConfig>,
        mode: Option<AgentMode>,
    ) -> Result<AgentSetup, SimError> {
        let mut state = self.lock();
        if !state.world.guests.contains_key(&vmid) {
            return Err(SimError::UnknownGuest(vmid));
        }
        let mut setup = state.agents.setup(vmid);
        setup.config = config.unwrap_or(setup.config);
        setup.mode = mode.unwrap_or(setup.mode);
        state.agents.overrides.insert(vmid, setup);
        Ok(setup)
    }
}

pub(crate) async fn set_agent(
    AxumState(sim): AxumState<Sim>,
    Path(vmid): Path<u32>,
    Json(patch): Json<AgentPatch>,
) -> Result<Json<Value>, SimError> {
    let setup = sim.set_agent(vmid, patch.config, patch.mode)?;
    Ok(Json(json!(setup)))
}

pub(crate) async fn set_waits(
    AxumState(sim): AxumState<Sim>,
    Json(waits): Json<AgentWaits>,
) -> Json<AgentWaits> {
    let mut state = sim.lock();
    if let Some(ms) = waits.ping_wait_ms {
        state.agents.ping_wait = Duration::from_millis(ms);
    }
    if let Some(ms) = waits.command_wait_ms {
        state.agents.command_wait = Duration::from_millis(ms);
    }
    Json(AgentWaits {
        ping_wait_ms: Some(state.agents.ping_wait.as_millis() as u64),
        command_wait_ms: Some(state.agents.command_wait.as_millis() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_the_eui64_of_the_mac() {
        assert_eq!(link_local("bc:24:11:aa:bb:cc"), "fe80::be24:11ff:feaa:bbcc");
    }

    #[test]
    fn most_vms_have_a_running_agent_some_none_and_a_few_a_dead_one() {
        assert_eq!(default_setup(100).config, AgentConfig::Enabled);
        assert_eq!(default_setup(100).mode, AgentMode::Running);
        assert_eq!(default_setup(109).config, AgentConfig::Absent);
        assert_eq!(default_setup(121).mode, AgentMode::NotRunning);
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod api_tests;
