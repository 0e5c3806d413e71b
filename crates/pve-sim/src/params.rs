//! Parameter verification as pve-common's `JSONSchema.pm` does it.
//!
//! The real server is strict, and clients trip over exactly that: an unknown parameter, a
//! form-encoded boolean `true` (only `0`/`1` pass in forms; JSON bodies may use
//! `true`/`false`) or a bad enum value gives `400 Parameter verification failed.` with an
//! `errors` map naming each parameter. The messages below are the real ones.

use std::collections::BTreeMap;

use serde_json::Value;

use super::world::{GuestType, PveVersion};

/// A parameter as received: form and query values are text, JSON bodies keep their types.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    Text(String),
    Json(Value),
}

impl RawValue {
    /// How Perl would print the value in an error message.
    pub fn display(&self) -> String {
        match self {
            RawValue::Text(text) => text.clone(),
            RawValue::Json(Value::String(text)) => text.clone(),
            RawValue::Json(Value::Bool(true)) => "1".into(),
            RawValue::Json(Value::Bool(false)) => String::new(),
            RawValue::Json(other) => other.to_string(),
        }
    }

    /// For recording requests: the value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            RawValue::Text(text) => Value::String(text.clone()),
            RawValue::Json(value) => value.clone(),
        }
    }
}

/// The declared type of a parameter.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Bool,
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Str {
        max_len: Option<usize>,
    },
    Enum(&'static [&'static str]),
    /// `pve-vmid`: an integer that must look like a VM ID.
    Vmid,
    /// `pve-vmid-list`: `100,101` (also `;` or space separated).
    VmidList,
    /// `pve-node`
    Node,
    /// `pve-storage-id`
    StorageId,
    /// `pve-configid` (`[a-z][a-z0-9_-]+`, case-insensitive): snapshot names.
    ConfigId {
        max_len: usize,
    },
}

/// One parameter of an endpoint's schema.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
}

const fn opt(name: &'static str, kind: Kind) -> Spec {
    Spec {
        name,
        kind,
        optional: true,
    }
}

const fn req(name: &'static str, kind: Kind) -> Spec {
    Spec {
        name,
        kind,
        optional: false,
    }
}

const BOOL: Kind = Kind::Bool;
const STR: Kind = Kind::Str { max_len: None };
const INT: Kind = Kind::Int {
    min: None,
    max: None,
};
const UINT: Kind = Kind::Int {
    min: Some(0),
    max: None,
};

/// A parameter value after verification.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// Verified parameters, typed per their schema.
#[derive(Clone, Debug, Default)]
pub struct Params {
    values: BTreeMap<String, Typed>,
}

impl Params {
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(Typed::Bool(value)) => Some(*value),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.bool(name).unwrap_or(false)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(Typed::Int(value)) => Some(*value),
            _ => None,
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Typed::Str(value)) => Some(value),
            _ => None,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Names of the parameters given, in alphabetical order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The value as vzdump prints it on its command line.
    pub fn display(&self, name: &str) -> Option<String> {
        self.values.get(name).map(|value| match value {
            Typed::Bool(b) => u8::from(*b).to_string(),
            Typed::Int(i) => i.to_string(),
            Typed::Str(s) => s.clone(),
        })
    }
}

/// Verification errors: parameter name to message.
pub type ParamErrors = BTreeMap<String, String>;

const NOT_IN_SCHEMA: &str =
    "property is not defined in schema and the schema does not allow additional properties";

fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

fn looks_like_vmid(text: &str) -> bool {
    let bytes = text.as_bytes();
    (3..=9).contains(&bytes.len())
        && bytes[0] != b'0'
        && bytes.iter().all(|byte| byte.is_ascii_digit())
}

fn looks_like_node(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

fn looks_like_storage_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_bool(raw: &RawValue) -> Result<bool, String> {
    let text = match raw {
        RawValue::Json(Value::Bool(value)) => return Ok(*value),
        RawValue::Json(Value::Number(n)) => n.to_string(),
        RawValue::Json(Value::String(s)) | RawValue::Text(s) => s.clone(),
        RawValue::Json(other) => other.to_string(),
    };
    match text.as_str() {
        "1" => Ok(true),
        "0" | "" => Ok(false),
        _ => Err(format!("type check ('boolean') failed - got '{text}'")),
    }
}

fn check_int(raw: &RawValue) -> Result<i64, String> {
    let text = match raw {
        RawValue::Json(Value::Number(n)) => match n.as_i64() {
            Some(value) => return Ok(value),
            None => n.to_string(),
        },
        RawValue::Json(Value::String(s)) | RawValue::Text(s) => s.clone(),
        other => other.display(),
    };
    if is_integer_text(&text) {
        text.parse::<i64>()
            .map_err(|_| format!("type check ('integer') failed - got '{text}'"))
    } else {
        Err(format!("type check ('integer') failed - got '{text}'"))
    }
}

fn check_range(value: i64, min: Option<i64>, max: Option<i64>) -> Result<(), String> {
    if let Some(min) = min.filter(|min| value < *min) {
        return Err(format!("value must have a minimum value of {min}"));
    }
    if let Some(max) = max.filter(|max| value > *max) {
        return Err(format!("value must have a maximum value of {max}"));
    }
    Ok(())
}

fn check_one(kind: Kind, raw: &RawValue) -> Result<Typed, String> {
    match kind {
        Kind::Bool => check_bool(raw).map(Typed::Bool),
        Kind::Int { min, max } => {
            let value = check_int(raw)?;
            check_range(value, min, max)?;
            Ok(Typed::Int(value))
        }
        Kind::Vmid => {
            let value = check_int(raw)?;
            if !looks_like_vmid(&value.to_string()) {
                return Err("invalid format - value does not look like a valid VM ID\n".into());
            }
            check_range(value, Some(100), Some(999_999_999))?;
            Ok(Typed::Int(value))
        }
        Kind::Str { max_len } => {
            let text = raw.display();
            if let Some(max) = max_len.filter(|max| text.chars().count() > *max) {
                return Err(format!("value may only be {max} characters long"));
            }
            Ok(Typed::Str(text))
        }
        Kind::Enum(values) => {
            let text = raw.display();
            if values.contains(&text.as_str()) {
                Ok(Typed::Str(text))
            } else {
                Err(format!(
                    "value '{text}' does not have a value in the enumeration '{}'",
                    values.join(", ")
                ))
            }
        }
        Kind::VmidList => {
            let text = raw.display();
            let ok = text
                .split([',', ';', ' '])
                .filter(|part| !part.is_empty())
                .all(looks_like_vmid)
                && !text.trim().is_empty();
            if ok {
                Ok(Typed::Str(text))
            } else {
                Err("invalid format - value does not look like a valid VM ID\n".into())
            }
        }
        Kind::Node => {
            let text = raw.display();
            if looks_like_node(&text) {
                Ok(Typed::Str(text))
            } else {
                Err("invalid format - value does not look like a valid node name\n".into())
            }
        }
        Kind::ConfigId { max_len } => {
            let text = raw.display();
            // pve-common checks the format first, then the length.
            let mut chars = text.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && text.len() >= 2
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(format!(
                    "invalid format - invalid configuration ID '{text}'\n"
                ));
            }
            if text.chars().count() > max_len {
                return Err(format!("value may only be {max_len} characters long"));
            }
            Ok(Typed::Str(text))
        }
        Kind::StorageId => {
            let text = raw.display();
            if looks_like_storage_id(&text) {
                Ok(Typed::Str(text))
            } else {
                Err(format!(
                    "invalid format - storage ID '{text}' contains illegal characters\n"
                ))
            }
        }
    }
}

/// Verifies `raw` against `specs`: unknown, missing and mistyped parameters all end up in
/// the error map at once, as in Proxmox. A JSON `null` counts as not given.
pub fn validate(specs: &[Spec], raw: &BTreeMap<String, RawValue>) -> Result<Params, ParamErrors> {
    let mut errors = ParamErrors::new();
    let mut values = BTreeMap::new();
    for (name, value) in raw {
        if matches!(value, RawValue::Json(Value::Null)) {
            continue;
        }
        match specs.iter().find(|spec| spec.name == name) {
            None => {
                errors.insert(name.clone(), NOT_IN_SCHEMA.into());
            }
            Some(spec) => match check_one(spec.kind, value) {
                Ok(typed) => {
                    values.insert(name.clone(), typed);
                }
                Err(message) => {
                    errors.insert(name.clone(), message);
                }
            },
        }
    }
    for spec in specs.iter().filter(|spec| !spec.optional) {
        if !values.contains_key(spec.name) && !errors.contains_key(spec.name) {
            errors.insert(
                spec.name.into(),
                "property is missing and it is not optional".into(),
            );
        }
    }
    if errors.is_empty() {
        Ok(Params { values })
    } else {
        Err(errors)
    }
}

// ---- The schemas of the endpoints the simulator serves (PVE 9.1 apidata.js). ----

const NODE: Spec = req("node", Kind::Node);
const VMID: Spec = req("vmid", Kind::Vmid);

pub fn none() -> Vec<Spec> {
    Vec::new()
}

pub fn node_only() -> Vec<Spec> {
    vec![NODE]
}

/// `GET /nodes/{node}/disks/list`.
pub fn disks_list() -> Vec<Spec> {
    vec![
        NODE,
        opt("include-partitions", BOOL),
        opt("skipsmart", BOOL),
        opt("type", Kind::Enum(&["unused", "journal_disks"])),
    ]
}

pub fn cluster_resources() -> Vec<Spec> {
    vec![opt("type", Kind::Enum(&["vm", "storage", "node", "sdn"]))]
}

pub fn qemu_list() -> Vec<Spec> {
    vec![NODE, opt("full", BOOL)]
}

/// `GET /nodes/{node}/replication`: `guest` filters by vmid.
pub fn node_replication() -> Vec<Spec> {
    vec![NODE, opt("guest", Kind::Vmid)]
}

pub fn guest_current() -> Vec<Spec> {
    vec![NODE, VMID]
}

/// `pve-snapshot-name`.
const SNAPNAME: Spec = req("snapname", Kind::ConfigId { max_len: 40 });

/// `POST …/snapshot` (qemu also takes `vmstate`).
pub fn snapshot_create(kind: GuestType) -> Vec<Spec> {
    let mut specs = vec![
        NODE,
        VMID,
        SNAPNAME,
        opt(
            "description",
            Kind::Str {
                max_len: Some(8192),
            },
        ),
    ];
    if kind == GuestType::Qemu {
        specs.push(opt("vmstate", BOOL));
    }
    specs
}

/// `POST …/snapshot/{snapname}/rollback`.
pub fn snapshot_rollback() -> Vec<Spec> {
    vec![NODE, VMID, SNAPNAME, opt("start", BOOL)]
}

/// `DELETE …/snapshot/{snapname}`.
pub fn snapshot_delete() -> Vec<Spec> {
    vec![NODE, VMID, SNAPNAME, opt("force", BOOL)]
}

pub fn node_storage() -> Vec<Spec> {
    vec![
        NODE,
        opt("content", STR),
        opt("enabled", BOOL),
        opt("format", BOOL),
        opt("storage", Kind::StorageId),
        opt("target", Kind::Node),
    ]
}

pub fn storage_index() -> Vec<Spec> {
    vec![opt(
        "type",
        Kind::Enum(&[
            "btrfs",
            "cephfs",
            "cifs",
            "dir",
            "esxi",
            "iscsi",
            "iscsidirect",
            "lvm",
            "lvmthin",
            "nfs",
            "pbs",
            "rbd",
            "zfs",
            "zfspool",
        ]),
    )]
}

pub fn storage_content() -> Vec<Spec> {
    vec![
        NODE,
        req("storage", Kind::StorageId),
        opt(
            "content",
            Kind::Enum(&[
                "images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import",
            ]),
        ),
        opt("vmid", Kind::Vmid),
    ]
}

pub fn access_permissions() -> Vec<Spec> {
    vec![opt("path", STR), opt("userid", STR)]
}

pub fn node_tasks() -> Vec<Spec> {
    vec![
        NODE,
        opt("errors", BOOL),
        opt("limit", UINT),
        opt("since", INT),
        opt("source", Kind::Enum(&["archive", "active", "all"])),
        opt("start", UINT),
        opt("statusfilter", STR),
        opt("typefilter", STR),
        opt("until", INT),
        opt("userfilter", STR),
        opt("vmid", Kind::Vmid),
    ]
}

pub fn task_status() -> Vec<Spec> {
    vec![NODE, req("upid", STR)]
}

pub fn task_log() -> Vec<Spec> {
    vec![
        NODE,
        req("upid", STR),
        opt("download", BOOL),
        opt("limit", UINT),
        opt("start", UINT),
    ]
}

/// Lifecycle actions, per guest type (LXC has no `reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Shutdown,
    Reboot,
    Reset,
    Suspend,
    Resume,
}

impl Action {
    pub fn parse(kind: GuestType, text: &str) -> Option<Self> {
        let action = match text {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "shutdown" => Action::Shutdown,
            "reboot" => Action::Reboot,
            "reset" if kind == GuestType::Qemu => Action::Reset,
            "suspend" => Action::Suspend,
            "resume" => Action::Resume,
            _ => return None,
        };
        Some(action)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Shutdown => "shutdown",
            Action::Reboot => "reboot",
            Action::Reset => "reset",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
        }
    }
}

/// The parameters of `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/{action}`.
pub fn lifecycle(kind: GuestType, action: Action, version: PveVersion) -> Vec<Spec> {
    let mut specs = vec![NODE, VMID];
    let timeout = opt("timeout", UINT);
    let skiplock = opt("skiplock", BOOL);
    match (kind, action) {
        (GuestType::Qemu, Action::Start) => {
            specs.extend([
                opt("force-cpu", STR),
                opt("machine", STR),
                opt("migratedfrom", Kind::Node),
                opt("migration_network", STR),
                opt("migration_type", Kind::Enum(&["secure", "insecure"])),
                skiplock,
                opt("stateuri", Kind::Str { max_len: Some(128) }),
                opt("targetstorage", STR),
                timeout,
            ]);
            if version.is_pve9() {
                specs.extend([opt("nets-host-mtu", STR), opt("with-conntrack-state", BOOL)]);
            }
        }
        (GuestType::Qemu, Action::Stop) => specs.extend([
            opt("keepActive", BOOL),
            opt("migratedfrom", Kind::Node),
            opt("overrule-shutdown", BOOL),
            skiplock,
            timeout,
        ]),
        (GuestType::Qemu, Action::Shutdown) => specs.extend([
            opt("forceStop", BOOL),
            opt("keepActive", BOOL),
            skiplock,
            timeout,
        ]),
        (GuestType::Qemu, Action::Reboot) | (GuestType::Lxc, Action::Reboot) => specs.push(timeout),
        (GuestType::Qemu, Action::Reset) => specs.push(skiplock),
        (GuestType::Qemu, Action::Suspend) => specs.extend([
            skiplock,
            opt("statestorage", Kind::StorageId),
            opt("todisk", BOOL),
        ]),
        (GuestType::Qemu, Action::Resume) => specs.extend([opt("nocheck", BOOL), skiplock]),
        (GuestType::Lxc, Action::Start) => specs.extend([opt("debug", BOOL), skiplock]),
        (GuestType::Lxc, Action::Stop) => specs.extend([opt("overrule-shutdown", BOOL), skiplock]),
        (GuestType::Lxc, Action::Shutdown) => specs.extend([opt("forceStop", BOOL), timeout]),
        (GuestType::Lxc, Action::Suspend) | (GuestType::Lxc, Action::Resume) => {}
        (GuestType::Lxc, Action::Reset) => {}
    }
    specs
}

/// The parameters of `POST /nodes/{node}/vzdump`.
pub fn vzdump(version: PveVersion) -> Vec<Spec> {
    let mut specs = vec![
        NODE,
        opt("all", BOOL),
        opt("bwlimit", UINT),
        opt("compress", Kind::Enum(&["0", "1", "gzip", "lzo", "zstd"])),
        opt("dumpdir", STR),
        opt("exclude", Kind::VmidList),
        opt("exclude-path", STR),
        opt("fleecing", STR),
        opt(
            "ionice",
            Kind::Int {
                min: Some(0),
                max: Some(8),
            },
        ),
        opt("job-id", Kind::Str { max_len: Some(50) }),
        opt("lockwait", UINT),
        opt("mailnotification", Kind::Enum(&["always", "failure"])),
        opt("mailto", STR),
        opt(
            "maxfiles",
            Kind::Int {
                min: Some(1),
                max: None,
            },
        ),
        opt("mode", Kind::Enum(&["snapshot", "suspend", "stop"])),
        opt(
            "notes-template",
            Kind::Str {
                max_len: Some(1024),
            },
        ),
        opt(
            "notification-mode",
            Kind::Enum(&["auto", "legacy-sendmail", "notification-system"]),
        ),
        opt(
            "pbs-change-detection-mode",
            Kind::Enum(&["legacy", "data", "metadata"]),
        ),
        opt("performance", STR),
        opt("pigz", INT),
        opt("pool", STR),
        opt("protected", BOOL),
        opt("prune-backups", STR),
        opt("quiet", BOOL),
        opt("remove", BOOL),
        opt("script", STR),
        opt("stdexcludes", BOOL),
        opt("stdout", BOOL),
        opt("stop", BOOL),
        opt("stopwait", UINT),
        opt("storage", Kind::StorageId),
        opt("tmpdir", STR),
        opt("vmid", Kind::VmidList),
        opt("zstd", INT),
    ];
    if !version.is_pve9() {
        specs.extend([
            opt(
                "notification-policy",
                Kind::Enum(&["always", "failure", "never"]),
            ),
            opt("notification-target", STR),
        ]);
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, RawValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), RawValue::Text(v.to_string())))
            .collect()
    }

    fn v9() -> PveVersion {
        PveVersion::parse("9.1.5").expect("version")
    }

    #[test]
    fn form_booleans_must_be_zero_or_one() {
        let specs = lifecycle(GuestType::Qemu, Action::Shutdown, v9());
        let errors = validate(
            &specs,
            &form(&[("node", "pve"), ("vmid", "100"), ("forceStop", "true")]),
        )
        .expect_err("true is not a form boolean");
        assert_eq!(
            errors["forceStop"],
            "type check ('boolean') failed - got 'true'"
        );
        let params = validate(
            &specs,
            &form(&[("node", "pve"), ("vmid", "100"), ("forceStop", "1")]),
        )
        .expect("1 is a boolean");
        assert!(params.flag("forceStop"));
        let empty_is_false = validate(
            &specs,
            &form(&[("node", "pve"), ("vmid", "100"), ("forceStop", "")]),
        )
        .expect("empty is false");
        assert_eq!(empty_is_false.bool("forceStop"), Some(false));
    }

    #[test]
    fn json_booleans_are_accepted() {
        let specs = lifecycle(GuestType::Qemu, Action::Shutdown, v9());
        let mut raw = form(&[("node", "pve"), ("vmid", "100")]);
        raw.insert("forceStop".into(), RawValue::Json(Value::Bool(true)));
        raw.insert("timeout".into(), RawValue::Json(serde_json::json!(30)));
        let params = validate(&specs, &raw).expect("valid");
        assert!(params.flag("forceStop"));
        assert_eq!(params.int("timeout"), Some(30));
    }

    #[test]
    fn unknown_missing_and_enum_errors_are_reported_together() {
        let errors = validate(
            &vzdump(v9()),
            &form(&[("mode", "fast"), ("colour", "blue"), ("compress", "zstd")]),
        )
        .expect_err("invalid");
        assert_eq!(
            errors["mode"],
            "value 'fast' does not have a value in the enumeration 'snapshot, suspend, stop'"
        );
        assert_eq!(errors["colour"], NOT_IN_SCHEMA);
        assert_eq!(errors["node"], "property is missing and it is not optional");
        assert!(!errors.contains_key("compress"));
    }

    #[test]
    fn vmids_are_checked_for_type_then_format() {
        let specs = guest_current();
        let errors = validate(&specs, &form(&[("node", "pve"), ("vmid", "abc")])).expect_err("abc");
        assert_eq!(errors["vmid"], "type check ('integer') failed - got 'abc'");
        let errors = validate(&specs, &form(&[("node", "pve"), ("vmid", "99")])).expect_err("99");
        assert_eq!(
            errors["vmid"],
            "invalid format - value does not look like a valid VM ID\n"
        );
    }

    #[test]
    fn lxc_has_no_reset_and_version_gates_parameters() {
        assert_eq!(Action::parse(GuestType::Lxc, "reset"), None);
        assert_eq!(Action::parse(GuestType::Qemu, "reset"), Some(Action::Reset));
        let v8 = PveVersion::parse("8.4.1").expect("version");
        assert!(vzdump(v8).iter().any(|s| s.name == "notification-policy"));
        assert!(!vzdump(v9()).iter().any(|s| s.name == "notification-policy"));
    }
}
