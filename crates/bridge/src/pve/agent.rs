//! The guest-agent answers (reference `pve-api-round2.md` §11, §12) and what the bridge
//! makes of them: the addresses worth showing, the OS name, the disk used.
//!
//! QGA answers come wrapped as `{"data":{"result": …}}`; every member is optional
//! (older agents, Windows), so everything here defaults.
use std::collections::HashSet;
use std::net::IpAddr;

use serde::Deserialize;

/// `{"result": …}` around every QGA answer.
#[derive(Debug, Deserialize)]
pub struct QgaResult<T> {
    pub result: T,
}

/// `agent/get-osinfo`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct OsInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "pretty-name")]
    pub pretty_name: Option<String>,
    pub version: Option<String>,
}

impl OsInfo {
    /// `Ubuntu 24.04.1 LTS`: the agent's `pretty-name`, else `name version`.
    pub fn label(&self) -> Option<String> {
        let clean = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        clean(&self.pretty_name).or_else(|| match (clean(&self.name), clean(&self.version)) {
            (Some(name), Some(version)) => Some(format!("{name} {version}")),
            (name, version) => name.or(version),
        })
    }
}

/// One address of `network-get-interfaces` (QGA: `ipv4`/`ipv6`) or of the container
/// interfaces (iproute2: `inet`/`inet6`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct IpEntry {
    #[serde(rename = "ip-address")]
    pub address: String,
}

/// One interface of `agent/network-get-interfaces`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct QgaInterface {
    pub name: String,
    #[serde(rename = "ip-addresses")]
    pub ip_addresses: Vec<IpEntry>,
}

/// One row of `GET /nodes/{n}/lxc/{id}/interfaces`. `ip-addresses` exists since PVE 8.4;
/// before, only `inet`/`inet6` (`addr/prefix`, the last address of each family).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LxcInterface {
    pub name: String,
    #[serde(rename = "ip-addresses")]
    pub ip_addresses: Option<Vec<IpEntry>>,
    pub inet: Option<String>,
    pub inet6: Option<String>,
}

/// One filesystem of `agent/get-fsinfo`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct QgaFilesystem {
    /// The device (`sda1`, `dm-0`, a Windows volume id).
    pub name: String,
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(rename = "used-bytes")]
    pub used_bytes: Option<u64>,
    #[serde(rename = "total-bytes")]
    pub total_bytes: Option<u64>,
}

/// Filesystems that hold no data of the guest's disks, or count it twice: memory
/// (tmpfs, ramfs, devtmpfs), read-only images (squashfs snaps, ISO), container layers
/// (overlay) and kernel pseudo filesystems.
const PSEUDO_FS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "ramfs",
    "squashfs",
    "overlay",
    "overlayfs",
    "aufs",
    "iso9660",
    "udf",
    "proc",
    "sysfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "autofs",
    "efivarfs",
    "nsfs",
    "tracefs",
    "debugfs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "binfmt_misc",
    "rpc_pipefs",
];

/// The bytes used on the guest's real filesystems: pseudo ones left out, and each device
/// counted once (bind mounts and btrfs subvolumes list one device several times).
/// `None` when no real filesystem reports its usage.
pub fn disk_used(filesystems: &[QgaFilesystem]) -> Option<u64> {
    let mut seen = HashSet::new();
    let mut total: Option<u64> = None;
    for fs in filesystems {
        let fs_type = fs.fs_type.to_ascii_lowercase();
        if PSEUDO_FS.contains(&fs_type.as_str()) || fs_type.starts_with("fuse.") {
            continue;
        }
        let Some(used) = fs.used_bytes else { continue };
        let key = if fs.name.is_empty() {
            &fs.mountpoint
        } else {
            &fs.name
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        total = Some(total.unwrap_or(0).saturating_add(used));
    }
    total
}

/// Is this an address worth showing: not loopback, not link-local, not unspecified?
fn reachable(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || link_local)
        }
    }
}

/// The addresses worth showing, IPv4 first, each once, in the order reported otherwise.
fn clean_addresses<'a>(addresses: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut parsed: Vec<IpAddr> = Vec::new();
    for text in addresses {
        // `fe80::1%eth0`: a zone id is only ever on link-local addresses, dropped anyway.
        let Ok(address) = text.trim().parse::<IpAddr>() else {
            continue;
        };
        if reachable(&address) && !parsed.contains(&address) {
            parsed.push(address);
        }
    }
    parsed.sort_by_key(|a| a.is_ipv6());
    parsed.iter().map(ToString::to_string).collect()
}

/// A VM's addresses from `network-get-interfaces`.
pub fn vm_addresses(interfaces: &[QgaInterface]) -> Vec<String> {
    clean_addresses(
        interfaces
            .iter()
            .flat_map(|i| i.ip_addresses.iter().map(|a| a.address.as_str())),
    )
}

/// A container's addresses from its interfaces (the `ip-addresses` list where given,
/// else the older `inet`/`inet6`).
pub fn lxc_addresses(interfaces: &[LxcInterface]) -> Vec<String> {
    let mut all: Vec<&str> = Vec::new();
    for interface in interfaces {
        match &interface.ip_addresses {
            Some(list) => all.extend(list.iter().map(|a| a.address.as_str())),
            None => {
                for cidr in [&interface.inet, &interface.inet6].into_iter().flatten() {
                    all.push(cidr.split('/').next().unwrap_or(""));
                }
            }
        }
    }
    clean_addresses(all.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(name: &str, mount: &str, fs_type: &str, used: u64) -> QgaFilesystem {
        QgaFilesystem {
            name: name.into(),
            mountpoint: mount.into(),
            fs_type: fs_type.into(),
            used_bytes: Some(used),
            total_bytes: Some(used * 2),
        }
    }

    #[test]
    fn disk_used_sums_real_filesystems_once_per_device() {
        let list = vec![
            fs("sda1", "/", "ext4", 1000),
            fs("sda15", "/boot/efi", "vfat", 10),
            fs("sda1", "/var/lib/containers", "ext4", 1000),
            fs("tmpfs", "/run", "tmpfs", 500),
            fs("loop0", "/snap/core22/1", "squashfs", 300),
            fs("overlay", "/var/lib/docker/x/merged", "overlay", 1000),
            fs("sdb1", "/srv", "xfs", 7),
        ];
        assert_eq!(disk_used(&list), Some(1017));
        assert_eq!(disk_used(&[fs("tmpfs", "/run", "tmpfs", 5)]), None);
    }

    #[test]
    fn addresses_drop_loopback_and_link_local_and_list_ipv4_first() {
        let json = r#"[{"name":"lo","ip-addresses":[{"ip-address":"127.0.0.1","ip-address-type":"ipv4","prefix":8},{"ip-address":"::1","ip-address-type":"ipv6","prefix":128}]},
            {"name":"eth0","ip-addresses":[{"ip-address":"fd00::5","ip-address-type":"ipv6","prefix":64},{"ip-address":"fe80::be24:11ff:feaa:bbcc","ip-address-type":"ipv6","prefix":64},{"ip-address":"192.0.2.10","ip-address-type":"ipv4","prefix":24},{"ip-address":"169.254.1.2","ip-address-type":"ipv4","prefix":16}]},
            {"name":"eth1"}]"#;
        let interfaces: Vec<QgaInterface> = serde_json::from_str(json).unwrap();
        assert_eq!(vm_addresses(&interfaces), vec!["192.0.2.10", "fd00::5"]);
    }

    #[test]
    fn container_addresses_read_the_old_inet_fields_too() {
        let json = r#"[{"name":"lo","hwaddr":"00:00:00:00:00:00","inet":"127.0.0.1/8","inet6":"::1/128"},
            {"name":"eth0","hwaddr":"bc:24:11:12:34:56","inet":"192.0.2.21/24","inet6":"fe80::be24:11ff:fe12:3456/64"}]"#;
        let interfaces: Vec<LxcInterface> = serde_json::from_str(json).unwrap();
        assert_eq!(lxc_addresses(&interfaces), vec!["192.0.2.21"]);
    }

    #[test]
    fn the_os_label_is_the_pretty_name_or_name_and_version() {
        let pretty: OsInfo =
            serde_json::from_str(r#"{"name":"Ubuntu","pretty-name":"Ubuntu 24.04.1 LTS","version":"24.04.1 LTS (Noble Numbat)"}"#)
                .unwrap();
        assert_eq!(pretty.label().as_deref(), Some("Ubuntu 24.04.1 LTS"));
        let plain: OsInfo = serde_json::from_str(
            r#"{"name":"Microsoft Windows","version":"Microsoft Windows Server 2022"}"#,
        )
        .unwrap();
        assert_eq!(
            plain.label().as_deref(),
            Some("Microsoft Windows Microsoft Windows Server 2022")
        );
        assert_eq!(OsInfo::default().label(), None);
    }
}
