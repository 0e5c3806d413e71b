//! Response types of the node-health endpoints (reference round 2 §1, §3, §4, §5):
//! `disks/list`, `disks/zfs`, `apt/update`, `apt/versions`, `certificates/info`.
//! Read leniently, like the other types: every field but the key is optional.
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::de;

/// One row of `GET /nodes/{node}/disks/list`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct DiskInfo {
    /// `/dev/sda`, `/dev/nvme0n1`.
    pub devpath: String,
    /// `hdd`, `ssd`, `nvme`, `usb`, `unknown` (`partition` for partition rows).
    #[serde(default, rename = "type", deserialize_with = "de::opt_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub vendor: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub serial: Option<String>,
    /// smartctl's verdict, verbatim: `PASSED`, `OK`, `FAILED!`, `UNKNOWN`, …
    #[serde(default, deserialize_with = "de::opt_string")]
    pub health: Option<String>,
    /// Percent of life left; `"N/A"` (HDDs, no wear attribute) becomes `None`.
    #[serde(default, deserialize_with = "wearout")]
    pub wearout: Option<f64>,
}

/// `wearout`: a number (possibly fractional), a numeric string, or `"N/A"`.
fn wearout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|w| w.is_finite()))
}

/// One row of `GET /nodes/{node}/disks/zfs` (sizes in bytes, `frag` in percent).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ZfsPool {
    pub name: String,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub alloc: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub free: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub frag: Option<u64>,
    /// `ONLINE`, `DEGRADED`, `FAULTED`, `OFFLINE`, `UNAVAIL`, `REMOVED`, `SUSPENDED`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub health: Option<String>,
}

/// One row of `GET /nodes/{node}/apt/update` or `apt/versions`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AptPackage {
    #[serde(rename = "Package")]
    pub package: String,
    /// The candidate (newest available) version.
    #[serde(default, rename = "Version", deserialize_with = "de::opt_string")]
    pub version: Option<String>,
    /// The installed version.
    #[serde(default, rename = "OldVersion", deserialize_with = "de::opt_string")]
    pub old_version: Option<String>,
    /// `apt/versions`: `Installed`, `NotInstalled`, `ConfigFiles`, …
    #[serde(default, rename = "CurrentState", deserialize_with = "de::opt_string")]
    pub current_state: Option<String>,
    /// `apt/versions`, `proxmox-ve` row: `uname -r` of the running kernel.
    #[serde(default, rename = "RunningKernel", deserialize_with = "de::opt_string")]
    pub running_kernel: Option<String>,
}

/// One row of `GET /nodes/{node}/certificates/info`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CertificateInfo {
    /// `pve-root-ca.pem`, `pve-ssl.pem`, `pveproxy-ssl.pem`.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub filename: Option<String>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "de::opt_u64")]
    pub notafter: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wearout_is_a_number_or_none_for_na() {
        let rows: Vec<DiskInfo> = serde_json::from_value(json!([
            {"devpath":"/dev/nvme0n1","type":"nvme","size":512000,"health":"PASSED","wearout":69,
             "osdid":-1,"osdid-list":null},
            {"devpath":"/dev/sda","type":"hdd","health":"PASSED","wearout":"N/A"},
            {"devpath":"/dev/sdb","type":"ssd","health":"FAILED!","wearout":99.5},
            {"devpath":"/dev/sdc","type":"ssd","wearout":"100"}
        ]))
        .unwrap();
        assert_eq!(rows[0].wearout, Some(69.0));
        assert_eq!(rows[1].wearout, None);
        assert_eq!(rows[2].wearout, Some(99.5));
        assert_eq!(rows[2].health.as_deref(), Some("FAILED!"));
        assert_eq!(rows[3].wearout, Some(100.0));
        assert_eq!(rows[3].health, None);
    }

    #[test]
    fn apt_rows_read_the_capitalised_fields() {
        let row: AptPackage = serde_json::from_value(json!({
            "Package":"proxmox-ve","Version":"8.3.0","OldVersion":"8.3.0",
            "CurrentState":"Installed","RunningKernel":"6.8.12-5-pve","Arch":"all"
        }))
        .unwrap();
        assert_eq!(row.running_kernel.as_deref(), Some("6.8.12-5-pve"));
        assert_eq!(row.old_version.as_deref(), Some("8.3.0"));
    }
}
