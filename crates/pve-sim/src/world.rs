//! The simulated cluster: nodes, guests, storages and volumes, the seed and generated
//! worlds, and the figures that move with time.
//!
//! Figures are *functions of time*, not values a background task updates: a guest stores
//! when it started and its rates, and [`Guest::metrics`] derives cpu, memory, uptime and the
//! traffic counters for any instant. That keeps 5,000 guests free (nothing ticks while no
//! one asks), makes counters monotonic by construction, and resets them exactly when a
//! guest restarts, as on a real host.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::health::{generated_health, Ceph, ClusterHealth};

/// Current wall-clock time as Unix seconds with sub-second precision.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// A Proxmox VE (pve-manager) version; drives the behaviour switches of reference §7.9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PveVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PveVersion {
    /// Parses `9.1.5` (missing parts count as 0).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            major,
            minor,
            patch,
        })
    }

    pub fn at_least(self, major: u32, minor: u32, patch: u32) -> bool {
        self >= Self {
            major,
            minor,
            patch,
        }
    }

    /// JSON error bodies carry `message` since libpve-http-server-perl 5.2.0 (PVE 8.3+).
    pub fn error_message_in_body(self) -> bool {
        self.at_least(8, 3, 0)
    }

    /// Since pve-manager 9.1.5 every token failure reads `Authentication failed!`.
    pub fn uniform_auth_failure(self) -> bool {
        self.at_least(9, 1, 5)
    }

    /// PVE 9 adds `memhost`/`pressure*` fields and `network` resource rows.
    pub fn is_pve9(self) -> bool {
        self.major >= 9
    }

    /// Old pve-container built the lxc list with the vmid as a hash key: a JSON string.
    pub fn lxc_vmid_as_string(self) -> bool {
        self.major < 8
    }

    /// Node rows in `/cluster/resources` carry `host-arch` since pve-manager 9.2.
    pub fn node_host_arch(self) -> bool {
        self.at_least(9, 2, 0)
    }

    /// `x.y`, as `/version` reports in `release`.
    pub fn release(self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The running kernel that ships with this release.
    pub fn kernel_release(self) -> &'static str {
        match self.major {
            0..=6 => "5.4.203-1-pve",
            7 => "5.15.158-2-pve",
            8 => "6.8.12-9-pve",
            _ => "6.17.4-1-pve",
        }
    }
}

impl fmt::Display for PveVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// qemu (VM) or lxc (container).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    Qemu,
    Lxc,
}

impl GuestType {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Qemu => "qemu",
            GuestType::Lxc => "lxc",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "qemu" => Some(GuestType::Qemu),
            "lxc" => Some(GuestType::Lxc),
            _ => None,
        }
    }

    /// The directory of the guest's config file under `/etc/pve/nodes/<node>/`.
    pub fn config_dir(self) -> &'static str {
        match self {
            GuestType::Qemu => "qemu-server",
            GuestType::Lxc => "lxc",
        }
    }

    /// How `check_lock` names the guest: `VM is locked (backup)` / `CT is locked (backup)`.
    pub fn label(self) -> &'static str {
        match self {
            GuestType::Qemu => "VM",
            GuestType::Lxc => "CT",
        }
    }
}

/// Whether the guest's process runs, and for VMs whether QEMU has it paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Stopped,
    /// A qemu VM whose process runs but whose CPUs are paused (`qmpstatus: paused`).
    Paused,
}

impl PowerState {
    /// A paused VM still has a running QEMU process: for Proxmox it is "running".
    pub fn process_running(self) -> bool {
        matches!(self, PowerState::Running | PowerState::Paused)
    }
}

/// HA manager state of a guest that is HA-managed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaState {
    /// The requested state from the resources config (`started`, `stopped`, …).
    pub request: String,
    /// The CRM's service state, shown as `hastate` in `/cluster/resources`.
    pub crm: String,
}

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    /// Corosync membership: an offline node's proxied endpoints answer 595.
    pub online: bool,
    pub nodeid: u32,
    pub ip: String,
    pub maxcpu: u32,
    pub sockets: u32,
    pub maxmem: u64,
    pub swap_total: u64,
    pub rootfs_total: u64,
    pub rootfs_used: u64,
    pub boot_time: f64,
    pub cpu_model: String,
    /// Base CPU load fraction around which the node's cpu wanders.
    pub load: f64,
    pub mem_fraction: f64,
    pub ssl_fingerprint: String,
}

/// One guest (VM or container).
#[derive(Clone, Debug)]
pub struct Guest {
    pub vmid: u32,
    pub kind: GuestType,
    pub node: String,
    pub name: String,
    pub power: PowerState,
    pub template: bool,
    /// `;`-separated, as Proxmox stores them.
    pub tags: Option<String>,
    pub pool: Option<String>,
    pub lock: Option<String>,
    pub ha: Option<HaState>,
    pub cpus: u32,
    pub maxmem: u64,
    pub maxdisk: u64,
    /// Used root disk space (containers report it; VMs report 0 without the agent).
    pub disk_used: u64,
    /// When the guest's process started (Unix seconds); meaningless while stopped.
    pub started_at: f64,
    pub pid: u32,
    /// Base CPU load fraction around which cpu wanders while running.
    pub load: f64,
    pub mem_fraction: f64,
    /// Mean network traffic in bytes per second while running.
    pub net_rate: f64,
    /// Mean block I/O in bytes per second while running.
    pub disk_rate: f64,
    /// A container checkpointed by `vzsuspend` that `vzresume` can restore.
    pub checkpointed: bool,
}

/// Figures of a guest at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuestMetrics {
    pub cpu: f64,
    pub mem: u64,
    pub uptime: u64,
    pub netin: u64,
    pub netout: u64,
    pub diskread: u64,
    pub diskwrite: u64,
}

/// Deterministic per-object phase so that guests don't wander in lockstep.
fn phase(seed: u32) -> f64 {
    f64::from(seed.wrapping_mul(2_654_435_761) % 10_000) / 10_000.0 * TAU
}

/// How busy a generated guest is: 70 % idle, 25 % moderate, 5 % busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    Idle,
    Moderate,
    Busy,
}

/// The activity class of a generated guest, spread evenly over vmids by a multiplicative hash.
pub fn activity(vmid: u32) -> Activity {
    match (vmid.wrapping_mul(2_654_435_761) >> 16) % 100 {
        0..=69 => Activity::Idle,
        70..=94 => Activity::Moderate,
        _ => Activity::Busy,
    }
}

/// A monotonic counter whose rate swings between 0.5× and 1.5× `rate` with period
/// `2π·period`: the integral of `rate·(1 + 0.5·sin(u/period))`.
fn wavy_counter(rate: f64, uptime: f64, period: f64) -> u64 {
    let value = rate * (uptime + 0.5 * period * (1.0 - (uptime / period).cos()));
    value.max(0.0) as u64
}

impl Guest {
    /// The guest's figures at time `t` (Unix seconds).
    pub fn metrics(&self, t: f64) -> GuestMetrics {
        if !self.power.process_running() {
            return GuestMetrics::default();
        }
        let uptime = (t - self.started_at).max(0.0);
        let p = phase(self.vmid);
        let period = 30.0 + f64::from(self.vmid % 17);
        let cpu = if self.power == PowerState::Paused {
            0.0
        } else {
            (self.load * (1.0 + 0.5 * (t / 17.0 + p).sin() + 0.25 * (t / 3.1 + 2.0 * p).sin()))
                .clamp(0.0, 1.0)
        };
        // An idle guest's memory barely moves; a busy one's breathes by up to 3 %.
        let wobble = (self.load * 0.2).min(0.03);
        let mem = (self.maxmem as f64 * self.mem_fraction * (1.0 + wobble * (t / 41.0 + p).sin()))
            .clamp(0.0, self.maxmem as f64) as u64;
        GuestMetrics {
            cpu,
            mem,
            uptime: uptime as u64,
            netin: wavy_counter(self.net_rate, uptime, period),
            netout: wavy_counter(self.net_rate * 0.6, uptime, period * 1.3),
            diskread: wavy_counter(self.disk_rate * 0.7, uptime, period * 0.8),
            diskwrite: wavy_counter(self.disk_rate, uptime, period * 1.1),
        }
    }

    /// Used root disk space at `t`: what a running container reports, swinging by ±0.5 %
    /// over about 20 minutes as logs and caches grow and are pruned (0 for VMs, which
    /// report nothing without the agent, and for stopped guests).
    pub fn disk_at(&self, t: f64) -> u64 {
        if self.kind != GuestType::Lxc || !self.power.process_running() {
            return 0;
        }
        let p = phase(self.vmid + 11);
        (self.disk_used as f64 * (1.0 + 0.005 * (t / 1_200.0 + p).sin()))
            .clamp(0.0, self.maxdisk as f64) as u64
    }

    /// Puts the guest into the running state as of `t` (counters restart from zero).
    pub fn start_at(&mut self, t: f64, pid: u32) {
        self.power = PowerState::Running;
        self.started_at = t;
        self.pid = pid;
    }

    pub fn stop(&mut self) {
        self.power = PowerState::Stopped;
    }

    /// Tags as a list (Proxmox separates them by `;`, `,` or spaces).
    pub fn tag_list(&self) -> Vec<String> {
        self.tags
            .as_deref()
            .unwrap_or("")
            .split([';', ',', ' '])
            .filter(|tag| !tag.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Node {
    /// Node CPU fraction at time `t`.
    pub fn cpu(&self, t: f64) -> f64 {
        let p = phase(self.nodeid + 7);
        (self.load * (1.0 + 0.4 * (t / 29.0 + p).sin() + 0.2 * (t / 4.3 + p).sin())).clamp(0.0, 1.0)
    }

    /// Used memory at time `t`.
    pub fn mem_used(&self, t: f64) -> u64 {
        let p = phase(self.nodeid + 3);
        (self.maxmem as f64 * self.mem_fraction * (1.0 + 0.02 * (t / 53.0 + p).sin())) as u64
    }

    pub fn uptime(&self, t: f64) -> u64 {
        (t - self.boot_time).max(0.0) as u64
    }

    /// Used root file system at `t`: swings by ±0.1 % of its size over about half an hour
    /// (logs rotate, caches fill), as on a real host.
    pub fn rootfs_used_at(&self, t: f64) -> u64 {
        let p = phase(self.nodeid + 5);
        let swing = self.rootfs_total as f64 * 0.001 * (t / 1_800.0 + p).sin();
        (self.rootfs_used as f64 + swing).clamp(0.0, self.rootfs_total as f64) as u64
    }

    /// The 1, 5 and 15 minute load averages.
    pub fn loadavg(&self, t: f64) -> [f64; 3] {
        let cpus = f64::from(self.maxcpu);
        let now_load = self.cpu(t) * cpus;
        let five = self.load * cpus * (1.0 + 0.1 * (t / 300.0).sin());
        let fifteen = self.load * cpus;
        [now_load, five, fifteen]
    }
}

/// A storage definition (from `storage.cfg`).
#[derive(Clone, Debug)]
pub struct Storage {
    pub id: String,
    /// Plugin type: `dir`, `lvmthin`, `nfs`, …
    pub plugintype: String,
    /// Allowed content types, comma-separated.
    pub content: String,
    pub shared: bool,
    pub total: u64,
    /// Used space besides the volumes the simulator tracks.
    pub base_used: u64,
    /// Nodes the storage is enabled on; `None` means every node.
    pub nodes: Option<Vec<String>>,
    /// Where backups are written (`/var/lib/vz/dump`), for vzdump's log.
    pub dump_dir: String,
}

impl Storage {
    pub fn on_node(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|nodes| nodes.iter().any(|n| n == node))
    }

    pub fn supports(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c == content)
    }

    /// What `GET /nodes/{node}/storage` reports as `avail` with `used` in use: on a
    /// directory storage that is df's `bavail`, which leaves out the filesystem's
    /// reserved blocks (ext4: 5 %), so it is less than `total - used` (the seed's
    /// example: 72.9 GB against 78.1 GB). Thin pools and ZFS report `total - used`.
    pub fn avail(&self, used: u64) -> u64 {
        let free = self.total.saturating_sub(used);
        if self.plugintype == "dir" {
            free.saturating_sub(self.total / 20)
        } else {
            free
        }
    }
}

/// A file-like volume in a storage: a backup, an ISO image or a container template.
/// (Guest disks are derived from the guests themselves.)
#[derive(Clone, Debug, Serialize)]
pub struct Volume {
    pub storage: String,
    /// The node whose local storage holds it; `None` on shared storage.
    pub node: Option<String>,
    pub volid: String,
    /// `backup`, `iso` or `vztmpl`.
    pub content: String,
    pub format: String,
    pub size: u64,
    pub ctime: u64,
    pub vmid: Option<u32>,
    pub subtype: Option<GuestType>,
    pub notes: Option<String>,
    pub protected: bool,
    /// The last verification of a backup on a Proxmox Backup Server storage (`ok` or
    /// `failed`); `None`: not verified, or not on PBS.
    pub verification: Option<String>,
}

/// The whole simulated cluster.
#[derive(Clone, Debug)]
pub struct World {
    /// `None` for a standalone host (no `cluster` row in `/cluster/status`).
    pub cluster_name: Option<String>,
    pub nodes: Vec<Node>,
    pub guests: BTreeMap<u32, Guest>,
    pub storages: Vec<Storage>,
    pub volumes: Vec<Volume>,
    /// Ceph and replication jobs (issue 11; `health`).
    pub health: ClusterHealth,
    /// Snapshots per vmid (guests without any have no entry).
    pub snapshots: BTreeMap<u32, super::snapshots::GuestSnapshots>,
    /// Disks, pools, updates, certificate and subscription per node (see `health`).
    pub node_health: BTreeMap<String, crate::node_health::NodeHealth>,
}

/// Formats Unix seconds (UTC) with the given separators: `2026_11_27-10_00_00` for
/// backup file names, `2026-11-27 10:00:00` for log lines.
pub(crate) fn format_time(unix: u64, date_sep: char, mid: char, time_sep: char) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{date_sep}{month:02}{date_sep}{day:02}{mid}{:02}{time_sep}{:02}{time_sep}{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm), so the simulator needs no date crate.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The volume id and format of a vzdump archive, e.g.
/// `local:backup/vzdump-qemu-100-2026_11_27-10_00_00.vma.zst` and `vma.zst`.
pub(crate) fn backup_names(
    storage: &str,
    kind: GuestType,
    vmid: u32,
    ctime: u64,
    compress: Option<&str>,
) -> (String, String, String) {
    let base = match kind {
        GuestType::Qemu => "vma",
        GuestType::Lxc => "tar",
    };
    let format = match compress {
        Some("zstd") => format!("{base}.zst"),
        Some("gzip") => format!("{base}.gz"),
        Some("lzo") | Some("1") => format!("{base}.lzo"),
        _ => base.to_string(),
    };
    let file = format!(
        "vzdump-{}-{vmid}-{}.{format}",
        kind.as_str(),
        format_time(ctime, '_', '-', '_')
    );
    (format!("{storage}:backup/{file}"), file, format)
}

fn local_storages(total_root: u64) -> Vec<Storage> {
    vec![
        Storage {
            id: "local".into(),
            plugintype: "dir".into(),
            content: "backup,iso,vztmpl".into(),
            shared: false,
            total: total_root,
            base_used: total_root / 5,
            nodes: None,
            dump_dir: "/var/lib/vz/dump".into(),
        },
        Storage {
            id: "local-lvm".into(),
            plugintype: "lvmthin".into(),
            content: "images,rootdir".into(),
            shared: false,
            total: 800 * GIB,
            base_used: 120 * GIB,
            nodes: None,
            dump_dir: String::new(),
        },
    ]
}

fn fake_fingerprint(rng: &mut fastrand::Rng) -> String {
    (0..32)
        .map(|_| format!("{:02X}", rng.u8(..)))
        .collect::<Vec<_>>()
        .join(":")
}

#[allow(clippy::too_many_arguments)]
fn new_guest(
    vmid: u32,
    kind: GuestType,
    node: &str,
    name: &str,
    power: PowerState,
    cpus: u32,
    maxmem: u64,
    maxdisk: u64,
    started_at: f64,
) -> Guest {
    Guest {
        vmid,
        kind,
        node: node.to_string(),
        name: name.to_string(),
        power,
        template: false,
        tags: None,
        pool: None,
        lock: None,
        ha: None,
        cpus,
        maxmem,
        maxdisk,
        disk_used: match kind {
            GuestType::Qemu => 0,
            GuestType::Lxc => maxdisk / 3,
        },
        started_at,
        pid: 1000 + vmid * 7,
        load: 0.05,
        mem_fraction: 0.45,
        net_rate: 40_000.0,
        disk_rate: 60_000.0,
        checkpointed: false,
    }
}

impl World {
    /// The seed world of SPEC §6: standalone node `pve`, VM 100 `home-assistant`,
    /// CT 101 `mqtt`, storages `local` and `local-lvm`, three backups in `local`.
    pub fn seed(now: f64, version: PveVersion, fingerprint: &str) -> Self {
        let boot = now - 1_480_737.0;
        let node = Node {
            name: "pve".into(),
            online: true,
            nodeid: 0,
            ip: "192.168.1.10".into(),
            maxcpu: 8,
            sockets: 1,
            maxmem: 32 * GIB,
            swap_total: 8 * GIB,
            rootfs_total: 100 * GIB,
            rootfs_used: 23 * GIB,
            boot_time: boot,
            cpu_model: "Intel(R) N100".into(),
            load: 0.08,
            mem_fraction: 0.42,
            ssl_fingerprint: fingerprint.to_string(),
        };
        let mut vm = new_guest(
            100,
            GuestType::Qemu,
            "pve",
            "home-assistant",
            PowerState::Running,
            2,
            4 * GIB,
            32 * GIB,
            now - 1_204_757.0,
        );
        vm.tags = Some("ha;prod".into());
        vm.pool = Some("home".into());
        vm.load = 0.06;
        vm.mem_fraction = 0.55;
        vm.net_rate = 55_000.0;
        vm.disk_rate = 90_000.0;
        let mut ct = new_guest(
            101,
            GuestType::Lxc,
            "pve",
            "mqtt",
            PowerState::Running,
            1,
            512 * MIB,
            8 * GIB,
            now - 1_204_741.0,
        );
        ct.load = 0.01;
        ct.mem_fraction = 0.18;
        ct.net_rate = 12_000.0;
        ct.disk_rate = 4_000.0;
        ct.disk_used = 1_203_150_848;

        let mut world = World {
            cluster_name: None,
            nodes: vec![node],
            guests: BTreeMap::from([(100, vm), (101, ct)]),
            storages: local_storages(100 * GIB),
            volumes: Vec::new(),
            // A single-node Ceph warns that its pools have no replicas.
            health: ClusterHealth {
                ceph: Some(Ceph::single_node("pve")),
                replication: Vec::new(),
            },
            snapshots: super::snapshots::seed(now),
            node_health: BTreeMap::from([(
                "pve".to_string(),
                crate::node_health::seed_health(now, version),
            )]),
        };
        // Nightly backups at 03:00 UTC on the previous days.
        let last_night = ((now as u64) / 86_400) * 86_400 + 3 * 3600;
        let last_night = if last_night as f64 > now {
            last_night.saturating_sub(86_400)
        } else {
            last_night
        };
        world.push_backup(
            "local",
            Some("pve"),
            (100, GuestType::Qemu),
            last_night.saturating_sub(86_400),
            "zstd",
            2_913_221_632,
            Some("home-assistant"),
            true,
        );
        world.push_backup(
            "local",
            Some("pve"),
            (100, GuestType::Qemu),
            last_night,
            "zstd",
            3_021_554_176,
            Some("home-assistant"),
            false,
        );
        world.push_backup(
            "local",
            Some("pve"),
            (101, GuestType::Lxc),
            last_night + 95,
            "zstd",
            318_767_104,
            Some("mqtt"),
            false,
        );
        world.push_static_volumes("pve", now, version);
        world
    }

    /// A generated cluster `simcluster` with nodes `pve1..pveN` and guests from vmid 100:
    /// about 2/3 VMs, 1/3 containers, `running_percent` % running, a few templates, tags, pools and
    /// HA-managed guests; `local` + `local-lvm` per node and a shared `nfs-backup` that
    /// holds the backups. Deterministic: the same sizes always give the same world.
    pub fn generate(
        (node_count, guest_count): (usize, usize),
        running_percent: u32,
        now: f64,
        version: PveVersion,
        local_fingerprint: &str,
    ) -> Self {
        let node_count = node_count.max(1);
        let mut rng = fastrand::Rng::with_seed(0x5EED_C0DE);
        let cpu_models = [
            ("AMD EPYC 7313P 16-Core Processor", 32, 1),
            ("Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz", 64, 2),
            ("AMD Ryzen 9 7950X 16-Core Processor", 32, 1),
            ("Intel(R) Core(TM) i5-12500", 12, 1),
        ];
        let nodes: Vec<Node> = (0..node_count)
            .map(|index| {
                let (model, cpus, sockets) = cpu_models[index % cpu_models.len()];
                let number = index + 1;
                Node {
                    name: format!("pve{number}"),
                    online: true,
                    nodeid: number as u32,
                    ip: format!("10.10.0.{}", 10 + number),
                    maxcpu: cpus,
                    sockets,
                    maxmem: [128, 256, 64, 96][index % 4] * GIB,
                    swap_total: 8 * GIB,
                    rootfs_total: 100 * GIB,
                    rootfs_used: (14 + rng.u64(0..20)) * GIB,
                    boot_time: now - 86_400.0 * (5.0 + rng.f64() * 60.0),
                    cpu_model: model.to_string(),
                    load: 0.05 + rng.f64() * 0.3,
                    mem_fraction: 0.3 + rng.f64() * 0.4,
                    ssl_fingerprint: if index == 0 {
                        local_fingerprint.to_string()
                    } else {
                        fake_fingerprint(&mut rng)
                    },
                }
            })
            .collect();

        let words = [
            "web", "db", "cache", "proxy", "mqtt", "dns", "git", "ci", "mail", "media", "monitor",
            "vault", "ldap", "nas", "build", "kube", "log", "metrics", "wiki", "app",
        ];
        let tag_sets = ["prod", "dev;test", "ha;prod", "backup", "web;prod"];
        let pools = ["prod", "lab"];
        let mut guests = BTreeMap::new();
        for index in 0..guest_count {
            let vmid = 100 + index as u32;
            let kind = if index % 3 == 2 {
                GuestType::Lxc
            } else {
                GuestType::Qemu
            };
            let node = &nodes[index % node_count].name;
            let word = words[index % words.len()];
            let name = format!("{word}-{:02}", index / words.len() + 1);
            let roll = rng.u32(0..100);
            let power = if roll < running_percent {
                PowerState::Running
            } else {
                PowerState::Stopped
            };
            let (cpus, maxmem, maxdisk) = match kind {
                GuestType::Qemu => (
                    [1, 2, 4, 8][rng.usize(0..4)],
                    [2, 4, 8, 16][rng.usize(0..4)] * GIB,
                    [16, 32, 64, 128][rng.usize(0..4)] * GIB,
                ),
                GuestType::Lxc => (
                    [1, 2, 4][rng.usize(0..3)],
                    [512 * MIB, GIB, 2 * GIB][rng.usize(0..3)],
                    [4, 8, 16][rng.usize(0..3)] * GIB,
                ),
            };
            let started = now - rng.f64() * 86_400.0 * 30.0 - 60.0;
            let mut guest = new_guest(
                vmid, kind, node, &name, power, cpus, maxmem, maxdisk, started,
            );
            // A real cluster is mostly idle: a few guests do the work, most sit at a
            // percent or two of CPU with a trickle of traffic. The class comes from the
            // vmid, so the draws (and the rest of the world) stay as they were.
            let (load, net, disk) = match activity(vmid) {
                Activity::Idle => ((0.002, 0.012), (100.0, 3_000.0), (100.0, 5_000.0)),
                Activity::Moderate => ((0.02, 0.15), (5_000.0, 100_000.0), (5_000.0, 200_000.0)),
                Activity::Busy => ((0.15, 0.6), (100_000.0, 2e6), (100_000.0, 4e6)),
            };
            let between = |(low, high): (f64, f64), draw: f64| low + draw * (high - low);
            guest.load = between(load, rng.f64());
            guest.mem_fraction = 0.2 + rng.f64() * 0.6;
            guest.net_rate = between(net, rng.f64());
            guest.disk_rate = between(disk, rng.f64());
            guest.disk_used = match kind {
                GuestType::Qemu => 0,
                GuestType::Lxc => (maxdisk as f64 * (0.1 + rng.f64() * 0.6)) as u64,
            };
            if kind == GuestType::Qemu && index % 97 == 50 {
                guest.template = true;
                guest.power = PowerState::Stopped;
            }
            if index % 5 == 0 {
                guest.tags = Some(tag_sets[(index / 5) % tag_sets.len()].to_string());
            }
            if index % 10 == 3 {
                guest.pool = Some(pools[(index / 10) % pools.len()].to_string());
            }
            if index % 20 == 7 && !guest.template {
                let state = if guest.power.process_running() {
                    "started"
                } else {
                    "stopped"
                };
                guest.ha = Some(HaState {
                    request: state.into(),
                    crm: state.into(),
                });
            }
            guests.insert(vmid, guest);
        }

        let mut storages = local_storages(100 * GIB);
        storages.push(Storage {
            id: "nfs-backup".into(),
            plugintype: "nfs".into(),
            content: "backup,iso".into(),
            shared: true,
            total: 4096 * GIB,
            base_used: 900 * GIB,
            nodes: None,
            dump_dir: "/mnt/pve/nfs-backup/dump".into(),
        });
        // A Proxmox Backup Server datastore: the odd vmids ending in 5 are backed up
        // there, with a verification state (one in ten of them failed).
        storages.push(Storage {
            id: "pbs-backup".into(),
            plugintype: "pbs".into(),
            content: "backup".into(),
            shared: true,
            total: 8192 * GIB,
            base_used: 2100 * GIB,
            nodes: None,
            dump_dir: String::new(),
        });

        let health = generated_health(&nodes, &mut guests, now);
        let node_health = (0..node_count)
            .map(|i| {
                (
                    format!("pve{}", i + 1),
                    crate::node_health::generated_health(i, now, version),
                )
            })
            .collect();
        let mut world = World {
            cluster_name: Some("simcluster".into()),
            nodes,
            guests,
            storages,
            volumes: Vec::new(),
            health,
            snapshots: BTreeMap::new(),
            node_health,
        };
        world.snapshots = super::snapshots::generated(&world, now);
        let midnight = ((now as u64) / 86_400) * 86_400;
        let backed_up: Vec<(u32, GuestType, u64, String)> = world
            .guests
            .values()
            .filter(|guest| guest.vmid % 2 == 0 && !guest.template)
            .map(|guest| (guest.vmid, guest.kind, guest.maxdisk, guest.name.clone()))
            .collect();
        for (vmid, kind, maxdisk, name) in backed_up {
            let copies = if vmid % 6 == 0 { 2 } else { 1 };
            for copy in 0..copies {
                let ctime =
                    midnight.saturating_sub(86_400 * (copy + 1)) + 3600 + u64::from(vmid % 3600);
                world.push_backup(
                    "nfs-backup",
                    None,
                    (vmid, kind),
                    ctime,
                    "zstd",
                    maxdisk / 7 + u64::from(vmid) * 4096,
                    Some(&name),
                    false,
                );
            }
        }
        let on_pbs: Vec<(u32, GuestType, u64)> = world
            .guests
            .values()
            .filter(|guest| guest.vmid % 10 == 5 && !guest.template)
            .map(|guest| (guest.vmid, guest.kind, guest.maxdisk))
            .collect();
        for (vmid, kind, maxdisk) in on_pbs {
            let ctime = midnight.saturating_sub(86_400) + 7200 + u64::from(vmid % 3600);
            let verification = if vmid % 100 == 15 { "failed" } else { "ok" };
            world.push_pbs_backup(
                "pbs-backup",
                (vmid, kind),
                ctime,
                maxdisk / 9 + u64::from(vmid) * 4096,
                Some(verification),
            );
        }
        for node in world
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
        {
            world.push_static_volumes(&node, now, version);
        }
        world
    }

    /// Adds a backup archive to a storage's content.
    #[allow(clippy::too_many_arguments)]
    pub fn push_backup(
        &mut self,
        storage: &str,
        node: Option<&str>,
        (vmid, kind): (u32, GuestType),
        ctime: u64,
        compress: &str,
        size: u64,
        notes: Option<&str>,
        protected: bool,
    ) -> Volume {
        let (volid, _file, format) = backup_names(storage, kind, vmid, ctime, Some(compress));
        let volume = Volume {
            storage: storage.to_string(),
            node: node.map(str::to_string),
            volid,
            content: "backup".into(),
            format,
            size,
            ctime,
            vmid: Some(vmid),
            subtype: Some(kind),
            notes: notes.map(str::to_string),
            protected,
            verification: None,
        };
        self.volumes.push(volume.clone());
        volume
    }

    /// Adds a backup snapshot on a Proxmox Backup Server storage, as PBS lists it:
    /// `{storage}:backup/{vm|ct}/{vmid}/{RFC 3339 time}`, format `pbs-vm`/`pbs-ct`
    /// (the recorded fixture `nodes_node_storage_storage_content.pbs-backups.json`),
    /// with its last verification state.
    pub fn push_pbs_backup(
        &mut self,
        storage: &str,
        (vmid, kind): (u32, GuestType),
        ctime: u64,
        size: u64,
        verification: Option<&str>,
    ) {
        let (dir, format) = match kind {
            GuestType::Qemu => ("vm", "pbs-vm"),
            GuestType::Lxc => ("ct", "pbs-ct"),
        };
        self.volumes.push(Volume {
            storage: storage.to_string(),
            node: None,
            volid: format!(
                "{storage}:backup/{dir}/{vmid}/{}Z",
                format_time(ctime, '-', 'T', ':')
            ),
            content: "backup".into(),
            format: format.into(),
            size,
            ctime,
            vmid: Some(vmid),
            subtype: Some(kind),
            notes: None,
            protected: false,
            verification: verification.map(str::to_string),
        });
    }

    /// An installer ISO and a container template in the node's `local` storage.
    fn push_static_volumes(&mut self, node: &str, now: f64, version: PveVersion) {
        let ctime = (now as u64).saturating_sub(86_400 * 40);
        let debian = if version.is_pve9() { "13" } else { "12" };
        for (volid, content, format, size) in [
            (
                format!("local:iso/debian-{debian}.1.0-amd64-netinst.iso"),
                "iso",
                "iso",
                754_974_720u64,
            ),
            (
                format!("local:vztmpl/debian-{debian}-standard_{debian}.1-2_amd64.tar.zst"),
                "vztmpl",
                "tzst",
                126_484_975,
            ),
        ] {
            self.volumes.push(Volume {
                storage: "local".into(),
                node: Some(node.to_string()),
                volid,
                content: content.into(),
                format: format.into(),
                size,
                ctime,
                vmid: None,
                subtype: None,
                verification: None,
                notes: None,
                protected: false,
            });
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|node| node.name == name)
    }

    pub fn node_online(&self, name: &str) -> bool {
        self.node(name).is_some_and(|node| node.online)
    }

    /// The guest with this vmid and type *on this node*: Proxmox looks the config up
    /// under `/etc/pve/nodes/<node>/`, so a guest elsewhere counts as missing.
    pub fn guest_on(&self, vmid: u32, kind: GuestType, node: &str) -> Option<&Guest> {
        self.guests
            .get(&vmid)
            .filter(|guest| guest.kind == kind && guest.node == node)
    }

    /// A majority of the nodes is online (a standalone host is always quorate).
    pub fn quorate(&self) -> bool {
        let online = self.nodes.iter().filter(|node| node.online).count();
        self.cluster_name.is_none() || online * 2 > self.nodes.len()
    }

    pub fn storage(&self, id: &str) -> Option<&Storage> {
        self.storages.iter().find(|storage| storage.id == id)
    }

    /// Volumes of a storage as seen from a node (shared storages look the same everywhere).
    pub fn volumes_on<'a>(
        &'a self,
        storage: &'a Storage,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Volume> + 'a {
        self.volumes.iter().filter(move |volume| {
            volume.storage == storage.id && (storage.shared || volume.node.as_deref() == Some(node))
        })
    }

    /// Used bytes of a storage on a node at `t`: its base plus tracked volumes and guest
    /// disks, plus a slow swing of ±0.2 % of its size over about an hour (thin volumes
    /// fill and are trimmed, logs grow and rotate).
    pub fn storage_used(&self, storage: &Storage, node: &str, t: f64) -> u64 {
        let volumes: u64 = self.volumes_on(storage, node).map(|v| v.size).sum();
        let disks: u64 = if storage.supports("images") {
            self.guests
                .values()
                .filter(|guest| guest.node == node)
                .map(|guest| guest.maxdisk / 3)
                .sum()
        } else {
            0
        };
        let seed = storage
            .id
            .bytes()
            .chain(node.bytes())
            .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let swing = storage.total as f64 * 0.002 * (t / 3_600.0 + phase(seed)).sin();
        let used = (storage.base_used + volumes + disks) as f64 + swing;
        used.clamp(0.0, storage.total as f64) as u64
    }

    /// The smallest unused process id above the guests' (for new guest processes).
    pub fn next_pid(&self) -> u32 {
        self.guests.values().map(|g| g.pid).max().unwrap_or(1000) + 13
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parses_and_orders() {
        let v = PveVersion::parse("9.1.5").expect("version");
        assert!(v.at_least(9, 1, 5));
        assert!(!v.at_least(9, 2, 0));
        assert!(v.uniform_auth_failure());
        assert!(!PveVersion::parse("9.1.4")
            .expect("v")
            .uniform_auth_failure());
        assert_eq!(PveVersion::parse("8").expect("v").to_string(), "8.0.0");
        assert!(PveVersion::parse("nine").is_none());
    }

    #[test]
    fn formats_backup_timestamps_in_utc() {
        // 2026-11-27 10:00:00 UTC
        assert_eq!(
            format_time(1_795_773_600, '_', '-', '_'),
            "2026_11_27-10_00_00"
        );
        assert_eq!(
            format_time(1_795_773_600, '-', ' ', ':'),
            "2026-11-27 10:00:00"
        );
        let (volid, file, format) =
            backup_names("local", GuestType::Qemu, 100, 1_795_773_600, Some("zstd"));
        assert_eq!(
            volid,
            "local:backup/vzdump-qemu-100-2026_11_27-10_00_00.vma.zst"
        );
        assert_eq!(file, "vzdump-qemu-100-2026_11_27-10_00_00.vma.zst");
        assert_eq!(format, "vma.zst");
    }

    #[test]
    fn running_guest_counters_grow_and_reset_on_restart() {
        let world = World::seed(1_000_000.0, PveVersion::parse("9.1.5").unwrap(), "AA");
        let mut vm = world.guests[&100].clone();
        let early = vm.metrics(1_000_000.0);
        let later = vm.metrics(1_000_060.0);
        assert!(later.netin > early.netin);
        assert!(later.diskwrite > early.diskwrite);
        assert_eq!(later.uptime, early.uptime + 60);
        vm.start_at(1_000_060.0, 4242);
        let restarted = vm.metrics(1_000_070.0);
        assert_eq!(restarted.uptime, 10);
        assert!(restarted.netin < later.netin);
        vm.stop();
        assert_eq!(vm.metrics(1_000_080.0), GuestMetrics::default());
    }

    #[test]
    fn seed_world_matches_the_spec() {
        let world = World::seed(now(), PveVersion::parse("9.1.5").unwrap(), "AA");
        assert!(world.cluster_name.is_none());
        assert_eq!(world.nodes.len(), 1);
        assert_eq!(world.guests[&100].name, "home-assistant");
        assert_eq!(world.guests[&100].tags.as_deref(), Some("ha;prod"));
        assert_eq!(world.guests[&101].kind, GuestType::Lxc);
        let backups: Vec<_> = world
            .volumes
            .iter()
            .filter(|v| v.content == "backup")
            .collect();
        assert_eq!(backups.len(), 3);
        assert_eq!(backups.iter().filter(|v| v.vmid == Some(100)).count(), 2);
    }

    #[test]
    fn a_generated_world_is_mostly_idle_and_idle_guests_move_by_less_than_two_cpu_points() {
        let world = World::generate(
            (10, 5000),
            90,
            1_000_000.0,
            PveVersion::parse("9.1.5").unwrap(),
            "AA",
        );
        let count = |class| {
            world
                .guests
                .values()
                .filter(|g| activity(g.vmid) == class)
                .count()
        };
        let (idle, busy) = (count(Activity::Idle), count(Activity::Busy));
        assert!((3300..3700).contains(&idle), "{idle} idle guests");
        assert!((150..350).contains(&busy), "{busy} busy guests");
        for guest in world
            .guests
            .values()
            .filter(|g| activity(g.vmid) == Activity::Idle && g.power == PowerState::Running)
        {
            let cpus: Vec<f64> = (0..60)
                .map(|step| guest.metrics(1_000_000.0 + f64::from(step) * 10.0).cpu * 100.0)
                .collect();
            let (low, high) = cpus
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
            assert!(high - low < 2.0, "vmid {}: cpu {low}..{high} %", guest.vmid);
            assert!(
                high > 0.0,
                "vmid {}: an idle guest still uses some CPU",
                guest.vmid
            );
        }
    }

    #[test]
    fn generated_world_has_the_requested_size_and_mix() {
        let world = World::generate(
            (10, 5000),
            85,
            now(),
            PveVersion::parse("9.1.5").unwrap(),
            "AA",
        );
        assert_eq!(world.nodes.len(), 10);
        assert_eq!(world.guests.len(), 5000);
        let lxc = world
            .guests
            .values()
            .filter(|g| g.kind == GuestType::Lxc)
            .count();
        assert!((1500..1800).contains(&lxc), "{lxc} containers");
        let stopped = world
            .guests
            .values()
            .filter(|g| g.power == PowerState::Stopped)
            .count();
        assert!(stopped > 100 && stopped < 1500);
        assert!(world.storage("nfs-backup").is_some_and(|s| s.shared));
        assert!(world.quorate());
    }
}
