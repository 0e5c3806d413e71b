//! Node health: physical disks (`disks/list`), ZFS pools (`disks/zfs`), APT
//! (`apt/update`, `apt/versions`), certificates (`certificates/info`) and the
//! subscription level of the `/cluster/resources` node row (reference round 2 §1, §3–§6).
//!
//! Each node's health is kept in [`World::health`] by node name; a node without an entry
//! has the [`NodeHealth::default`] (no disks, no zfsutils, no updates). The control API
//! changes a disk's or pool's health (`/_sim/nodes/{node}/disks/{dev}`,
//! `/_sim/nodes/{node}/zfs/{pool}`) so that tests can make one fail.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::respond::ApiError;
use super::state::{Sim, SimError};
use super::world::{PveVersion, World};

const GIB: u64 = 1024 * 1024 * 1024;

/// One physical disk as `disks/list` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimDisk {
    /// `sda`, `nvme0n1`: `devpath` is `/dev/{name}`.
    pub name: String,
    /// `hdd`, `ssd`, `nvme`, `usb`, `unknown`.
    pub kind: String,
    pub size: u64,
    pub vendor: String,
    pub model: String,
    pub serial: String,
    pub wwn: String,
    pub rpm: i64,
    pub gpt: bool,
    /// smartctl's text, verbatim: `PASSED`, `OK`, `FAILED!`, `UNKNOWN`.
    pub health: String,
    /// Percent of life left (SSD/NVMe); `None` gives the string `"N/A"`.
    pub wearout: Option<f64>,
    pub used: Option<String>,
}

/// One ZFS pool as `zpool list -Hp` gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimPool {
    pub name: String,
    pub size: u64,
    pub alloc: u64,
    pub frag: u64,
    pub health: String,
}

/// A pending package update: (package, installed, candidate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimUpdate {
    pub package: String,
    pub old: String,
    pub new: String,
}

/// The health of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Subscription level letter (`c`, `b`, `s`, `p`), `""` without an active one.
    pub level: String,
    pub disks: Vec<SimDisk>,
    /// `None`: zfsutils-linux is not installed (`disks/zfs` answers 500).
    pub zfs: Option<Vec<SimPool>>,
    pub updates: Vec<SimUpdate>,
    /// A kernel newer than the running one is installed: a reboot is required.
    pub newer_kernel: Option<String>,
    /// `notafter` of the node certificate (Unix seconds).
    pub cert_notafter: u64,
    /// A custom/ACME `pveproxy-ssl.pem` exists next to `pve-ssl.pem`.
    pub custom_cert: bool,
}

fn disk(name: &str, kind: &str, size: u64, model: &str, serial: &str) -> SimDisk {
    SimDisk {
        name: name.into(),
        kind: kind.into(),
        size,
        vendor: if kind == "nvme" { "unknown" } else { "ATA" }.into(),
        model: model.into(),
        serial: serial.into(),
        wwn: if kind == "nvme" {
            "unknown".into()
        } else {
            format!(
                "0x5002538e40a0{}",
                &serial[serial.len().saturating_sub(4)..]
            )
        },
        rpm: if kind == "hdd" { 5900 } else { 0 },
        gpt: true,
        health: "PASSED".into(),
        wearout: None,
        used: None,
    }
}

fn pool(name: &str, size: u64, alloc: u64, frag: u64, health: &str) -> SimPool {
    SimPool {
        name: name.into(),
        size,
        alloc,
        frag,
        health: health.into(),
    }
}

/// The seed (demo) node `pve`: an NVMe and an SSD wearing out, a failing HDD, a healthy
/// `rpool` and a DEGRADED `tank`, three pending updates and a newer kernel installed
/// (reboot required).
pub fn seed_health(now: f64, version: PveVersion) -> NodeHealth {
    let mut nvme = disk(
        "nvme0n1",
        "nvme",
        1_000_204_886_016,
        "Samsung SSD 980 PRO 1TB",
        "S5GXNF0R123456",
    );
    nvme.wearout = Some(97.0);
    nvme.used = Some("ZFS".into());
    let mut ssd = disk(
        "sda",
        "ssd",
        480_103_981_056,
        "INTEL_SSDSC2BB480G7",
        "PHDV723200XY480BGN",
    );
    ssd.wearout = Some(88.0);
    ssd.used = Some("ZFS".into());
    let mut hdd = disk(
        "sdb",
        "hdd",
        4_000_787_030_016,
        "ST4000DM004-2CV104",
        "ZFN0ABCD",
    );
    hdd.health = "FAILED!".into();
    hdd.used = Some("ZFS".into());
    NodeHealth {
        level: String::new(),
        disks: vec![nvme, ssd, hdd],
        zfs: Some(vec![
            pool("rpool", 990 * GIB, 120 * GIB, 7, "ONLINE"),
            pool("tank", 3_630 * GIB, 2_100 * GIB, 21, "DEGRADED"),
        ]),
        updates: seed_updates(version),
        newer_kernel: Some(newer_kernel(version)),
        cert_notafter: now as u64 + 86_400 * 400,
        custom_cert: false,
    }
}

fn seed_updates(version: PveVersion) -> Vec<SimUpdate> {
    let next = format!("{}.{}.{}", version.major, version.minor, version.patch + 1);
    vec![
        SimUpdate {
            package: "pve-manager".into(),
            old: version.to_string(),
            new: next,
        },
        SimUpdate {
            package: "libpve-storage-perl".into(),
            old: format!("{}.2.3", version.major),
            new: format!("{}.2.4", version.major),
        },
        SimUpdate {
            package: "pve-qemu-kvm".into(),
            old: "10.1.2-1".into(),
            new: "10.1.2-3".into(),
        },
    ]
}

/// The release after the running kernel's: `6.17.4-1-pve` → `6.17.4-2-pve`.
fn newer_kernel(version: PveVersion) -> String {
    let running = version.kernel_release();
    let base = running.trim_end_matches("-pve");
    match base.rsplit_once('-') {
        Some((upstream, abi)) => {
            let abi: u32 = abi.parse().unwrap_or(0);
            format!("{upstream}-{}-pve", abi + 1)
        }
        None => format!("{base}-1-pve"),
    }
}

/// A generated node: an NVMe and an HDD, all healthy; every third node (`pve2`, `pve5`, …)
/// has no zfsutils; `pve1` has a pending update and a newer kernel, a Community
/// subscription on even nodes.
pub fn generated_health(index: usize, now: f64, version: PveVersion) -> NodeHealth {
    let number = index + 1;
    let mut nvme = disk(
        "nvme0n1",
        "nvme",
        512_110_190_592,
        "KINGSTON SNV2S500G",
        &format!("50026B7784A0{number:04}"),
    );
    nvme.wearout = Some(100.0 - (index % 7) as f64 * 3.0);
    let hdd = disk(
        "sda",
        "hdd",
        4_000_787_030_016,
        "WDC_WD40EFRX-68N32N0",
        &format!("WD-WCC7K0{number:06}"),
    );
    NodeHealth {
        level: if number % 2 == 0 {
            "c".into()
        } else {
            String::new()
        },
        disks: vec![nvme, hdd],
        zfs: (index % 3 != 1).then(|| vec![pool("rpool", 470 * GIB, 80 * GIB, 4, "ONLINE")]),
        updates: if index == 0 {
            seed_updates(version)
        } else {
            Vec::new()
        },
        newer_kernel: (index == 0).then(|| newer_kernel(version)),
        cert_notafter: now as u64 + 86_400 * (300 + 17 * number as u64),
        custom_cert: index == 0,
    }
}

impl World {
    /// The node's health (the default for a node the world holds none for).
    pub fn health_of(&self, node: &str) -> NodeHealth {
        self.node_health.get(node).cloned().unwrap_or_default()
    }
}

/// `GET /nodes/{node}/disks/list` (rows sorted by device name).
pub fn disks_list(health: &NodeHealth, skipsmart: bool) -> Vec<Value> {
    let mut disks = health.disks.clone();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
        .iter()
        .map(|d| {
            let mut row = Map::new();
            row.insert("devpath".into(), json!(format!("/dev/{}", d.name)));
            row.insert("type".into(), json!(d.kind));
            row.insert("size".into(), json!(d.size));
            row.insert("vendor".into(), json!(d.vendor));
            row.insert("model".into(), json!(d.model));
            row.insert("serial".into(), json!(d.serial));
            row.insert("wwn".into(), json!(d.wwn));
            row.insert("rpm".into(), json!(d.rpm));
            row.insert("gpt".into(), json!(u8::from(d.gpt)));
            let (health, wearout) = if skipsmart {
                ("UNKNOWN".to_string(), json!("N/A"))
            } else {
                let wearout = match d.wearout {
                    Some(w) if w.fract() == 0.0 => json!(w as i64),
                    Some(w) => json!(w),
                    None => json!("N/A"),
                };
                (d.health.clone(), wearout)
            };
            row.insert("health".into(), json!(health));
            row.insert("wearout".into(), wearout);
            row.insert("osdid".into(), json!(-1));
            row.insert("osdid-list".into(), Value::Null);
            if let Some(used) = &d.used {
                row.insert("used".into(), json!(used));
            }
            if d.kind != "nvme" {
                row.insert(
                    "by_id_link".into(),
                    json!(format!(
                        "/dev/disk/by-id/ata-{}_{}",
                        d.model.replace(' ', "_"),
                        d.serial
                    )),
                );
            }
            Value::Object(row)
        })
        .collect()
}

/// `GET /nodes/{node}/disks/zfs`: sync 500 without zfsutils.
pub fn zfs_list(health: &NodeHealth) -> Result<Vec<Value>, ApiError> {
    let pools = health
        .zfs
        .as_ref()
        .ok_or_else(|| ApiError::server("zfsutils-linux not installed"))?;
    Ok(pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "size": p.size,
                "alloc": p.alloc,
                "free": p.size.saturating_sub(p.alloc),
                "frag": p.frag,
                "dedup": 1,
                "health": p.health,
            })
        })
        .collect())
}

fn package_row(package: &str, title: &str, old: &str, new: &str) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("Package".into(), json!(package));
    row.insert("Title".into(), json!(title));
    row.insert(
        "Description".into(),
        json!(format!("{title} (simulated package).")),
    );
    row.insert("Version".into(), json!(new));
    row.insert("OldVersion".into(), json!(old));
    row.insert("Arch".into(), json!("amd64"));
    row.insert("Origin".into(), json!("Proxmox"));
    row.insert("Priority".into(), json!("optional"));
    row.insert("Section".into(), json!("admin"));
    row
}

/// `GET /nodes/{node}/apt/update`: the pending updates (needs `Sys.Modify`).
pub fn apt_update(health: &NodeHealth) -> Vec<Value> {
    health
        .updates
        .iter()
        .map(|u| {
            let mut row = package_row(&u.package, &u.package, &u.old, &u.new);
            if u.package == "pve-manager" {
                row.insert(
                    "Title".into(),
                    json!("Proxmox Virtual Environment Management Tools"),
                );
            }
            Value::Object(row)
        })
        .collect()
}

/// `GET /nodes/{node}/apt/versions`: `proxmox-ve` (with `RunningKernel`), `pve-manager`
/// (with `ManagerVersion`), the kernel packages newest first, then other packages.
pub fn apt_versions(health: &NodeHealth, version: PveVersion) -> Vec<Value> {
    let candidate = |package: &str, installed: &str| {
        health
            .updates
            .iter()
            .find(|u| u.package == package)
            .map_or(installed.to_string(), |u| u.new.clone())
    };
    let installed = |row: &mut Map<String, Value>| {
        row.insert("CurrentState".into(), json!("Installed"));
    };
    let running = version.kernel_release();
    let ve = format!("{}.{}.0", version.major, version.minor);
    let mut rows = Vec::new();
    let mut row = package_row("proxmox-ve", "Proxmox Virtual Environment", &ve, &ve);
    row.insert("Arch".into(), json!("all"));
    row.insert("RunningKernel".into(), json!(running));
    installed(&mut row);
    rows.push(row);
    let manager = version.to_string();
    let mut row = package_row(
        "pve-manager",
        "Proxmox Virtual Environment Management Tools",
        &manager,
        &candidate("pve-manager", &manager),
    );
    row.insert("ManagerVersion".into(), json!(manager));
    installed(&mut row);
    rows.push(row);
    // Kernel images newest first: the newer one (if any), then the running one.
    let prefix = if version.major >= 8 {
        "proxmox-kernel"
    } else {
        "pve-kernel"
    };
    let suffix = if version.major >= 8 { "-signed" } else { "" };
    let mut kernels: Vec<String> = health.newer_kernel.iter().cloned().collect();
    kernels.push(running.to_string());
    for release in &kernels {
        let pkg_version = release.trim_end_matches("-pve");
        let mut row = package_row(
            &format!("{prefix}-{release}{suffix}"),
            "Proxmox Kernel Image",
            pkg_version,
            pkg_version,
        );
        installed(&mut row);
        rows.push(row);
    }
    // The meta package also matches `^(pve|proxmox)-kernel-` but is no kernel image.
    let newest = kernels[0].trim_end_matches("-pve");
    let series: String = newest.split('.').take(2).collect::<Vec<_>>().join(".");
    let mut row = package_row(
        &format!("{prefix}-{series}"),
        "Latest Proxmox Kernel Image",
        newest,
        newest,
    );
    installed(&mut row);
    rows.push(row);
    let mut others = vec![("libpve-storage-perl", format!("{}.2.3", version.major))];
    others.push(("pve-qemu-kvm", "10.1.2-1".to_string()));
    if health.zfs.is_some() {
        others.push(("zfsutils-linux", "2.3.4-pve1".to_string()));
    }
    for (package, old) in others {
        let mut row = package_row(package, package, &old, &candidate(package, &old));
        installed(&mut row);
        rows.push(row);
    }
    rows.into_iter().map(Value::Object).collect()
}

/// `GET /nodes/{node}/certificates/info`: `pve-root-ca.pem`, `pve-ssl.pem` and, with a
/// custom certificate, `pveproxy-ssl.pem`.
pub fn certificates_info(node: &str, health: &NodeHealth, fingerprint: &str) -> Vec<Value> {
    let cert = |filename: &str, subject: String, issuer: &str, before: u64, after: u64| {
        json!({
            "filename": filename,
            "fingerprint": fingerprint,
            "subject": subject,
            "issuer": issuer,
            "notbefore": before,
            "notafter": after,
            "san": ["127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001", "localhost", node],
            "public-key-type": "rsaEncryption",
            "public-key-bits": 2048,
            "pem": "-----BEGIN CERTIFICATE-----\nMIIsimulated\n-----END CERTIFICATE-----\n",
        })
    };
    let after = health.cert_notafter;
    let ca = "/CN=Proxmox Virtual Environment/OU=simulated/O=PVE Cluster Manager CA";
    let mut rows = vec![
        cert(
            "pve-root-ca.pem",
            ca.to_string(),
            ca,
            after.saturating_sub(86_400 * 3650),
            after + 86_400 * 3000,
        ),
        cert(
            "pve-ssl.pem",
            format!("/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={node}.local"),
            ca,
            after.saturating_sub(86_400 * 730),
            if health.custom_cert {
                after + 86_400 * 200
            } else {
                after
            },
        ),
    ];
    if health.custom_cert {
        rows.push(cert(
            "pveproxy-ssl.pem",
            format!("/CN={node}.example.com"),
            "/C=US/O=Let's Encrypt/CN=R11",
            after.saturating_sub(86_400 * 90),
            after,
        ));
    }
    rows
}

/// A change to one disk through the control API.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPatch {
    pub health: Option<String>,
    /// A number, or `null`/`"N/A"` for none.
    #[serde(default, deserialize_with = "wearout_patch")]
    pub wearout: Option<Option<f64>>,
}

fn wearout_patch<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<f64>>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(Some(value.as_f64()))
}

/// A change to one pool (or to a node's zfsutils) through the control API.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPatch {
    pub health: Option<String>,
    pub frag: Option<u64>,
}

impl Sim {
    /// Changes one disk's SMART health or wearout.
    pub fn patch_disk(&self, node: &str, dev: &str, patch: DiskPatch) -> Result<(), SimError> {
        let mut state = self.lock();
        if state.world.node(node).is_none() {
            return Err(SimError::UnknownNode(node.to_string()));
        }
        let health = state.world.node_health.entry(node.to_string()).or_default();
        let disk = health
            .disks
            .iter_mut()
            .find(|d| d.name == dev)
            .ok_or_else(|| SimError::Invalid(format!("no disk '{dev}' on node '{node}'")))?;
        if let Some(text) = patch.health {
            disk.health = text;
        }
        if let Some(wearout) = patch.wearout {
            disk.wearout = wearout;
        }
        Ok(())
    }

    /// Changes one ZFS pool's health or fragmentation.
    pub fn patch_pool(&self, node: &str, name: &str, patch: PoolPatch) -> Result<(), SimError> {
        let mut state = self.lock();
        if state.world.node(node).is_none() {
            return Err(SimError::UnknownNode(node.to_string()));
        }
        let health = state.world.node_health.entry(node.to_string()).or_default();
        let pool = health
            .zfs
            .iter_mut()
            .flatten()
            .find(|p| p.name == name)
            .ok_or_else(|| SimError::Invalid(format!("no zfs pool '{name}' on node '{node}'")))?;
        if let Some(text) = patch.health {
            pool.health = text;
        }
        if let Some(frag) = patch.frag {
            pool.frag = frag;
        }
        Ok(())
    }

    /// Replaces a node's whole health (tests: no zfsutils, no updates, …).
    pub fn set_health(&self, node: &str, health: NodeHealth) -> Result<(), SimError> {
        let mut state = self.lock();
        if state.world.node(node).is_none() {
            return Err(SimError::UnknownNode(node.to_string()));
        }
        state.world.node_health.insert(node.to_string(), health);
        Ok(())
    }

    /// A node's health, as the control API shows it.
    pub fn health(&self, node: &str) -> Result<NodeHealth, SimError> {
        let state = self.lock();
        if state.world.node(node).is_none() {
            return Err(SimError::UnknownNode(node.to_string()));
        }
        Ok(state.world.health_of(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v9() -> PveVersion {
        PveVersion::parse("9.1.5").unwrap()
    }

    #[test]
    fn disks_list_has_the_real_typing() {
        let rows = disks_list(&seed_health(1e9, v9()), false);
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["devpath"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["/dev/nvme0n1", "/dev/sda", "/dev/sdb"]);
        assert_eq!(rows[0]["wearout"], json!(97));
        assert_eq!(rows[2]["wearout"], json!("N/A"));
        assert_eq!(rows[2]["health"], json!("FAILED!"));
        assert_eq!(rows[0]["osdid-list"], Value::Null);
        assert_eq!(rows[0]["gpt"], json!(1));
        assert_eq!(rows[1]["rpm"], json!(0));
        let skipped = disks_list(&seed_health(1e9, v9()), true);
        assert!(skipped
            .iter()
            .all(|r| r["health"] == "UNKNOWN" && r["wearout"] == "N/A"));
    }

    #[test]
    fn zfs_without_zfsutils_is_the_real_500() {
        let err = zfs_list(&NodeHealth::default()).unwrap_err();
        assert_eq!(err.status, 500);
        assert_eq!(err.message, "zfsutils-linux not installed");
        let rows = zfs_list(&seed_health(1e9, v9())).unwrap();
        assert_eq!(rows[1]["health"], "DEGRADED");
        assert!(rows[1]["free"].is_u64());
    }

    #[test]
    fn apt_versions_lists_kernels_newest_first_after_the_running_one_marker() {
        let rows = apt_versions(&seed_health(1e9, v9()), v9());
        assert_eq!(rows[0]["Package"], "proxmox-ve");
        assert_eq!(rows[0]["RunningKernel"], "6.17.4-1-pve");
        assert_eq!(rows[1]["ManagerVersion"], "9.1.5");
        assert_eq!(rows[1]["Version"], "9.1.6");
        assert_eq!(rows[2]["Package"], "proxmox-kernel-6.17.4-2-pve-signed");
        assert_eq!(rows[3]["Package"], "proxmox-kernel-6.17.4-1-pve-signed");
        assert_eq!(rows[4]["Package"], "proxmox-kernel-6.17");
    }

    #[test]
    fn certificates_include_pveproxy_only_with_a_custom_certificate() {
        let seed = seed_health(1e9, v9());
        let rows = certificates_info("pve", &seed, "AA");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["filename"], "pve-ssl.pem");
        assert_eq!(rows[1]["notafter"], json!(seed.cert_notafter));
        let custom = generated_health(0, 1e9, v9());
        let rows = certificates_info("pve1", &custom, "AA");
        assert_eq!(rows[2]["filename"], "pveproxy-ssl.pem");
        assert_eq!(rows[2]["notafter"], json!(custom.cert_notafter));
    }
}
