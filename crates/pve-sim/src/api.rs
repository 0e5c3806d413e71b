//! The Proxmox VE API under `/api2/json`.
//!
//! A request goes through the same stages, in the same order, as on a real pveproxy:
//!
//! 1. faults injected through the control API (slow, error status, dropped connection);
//! 2. authentication (`PVEAPIToken=…`; failures answer 401 after a delay, empty body);
//! 3. route lookup (`501 Method 'GET /x' not implemented`);
//! 4. the permission check, which comes *before* parameters and proxying;
//! 5. proxying to the node in the path (`500 hostname lookup …` for an unknown node,
//!    `595 No route to host` with an empty body after a delay for an offline one);
//! 6. parameter verification (`400 Parameter verification failed.` with `errors`);
//! 7. the handler.
//!
//! Every request is counted per route template and recorded for `/_sim/requests`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, Request, Response};
use serde_json::{json, Map, Value};

use super::access::{permission_denied, Token};
use super::agent::{self, AgentCommand};
use super::health::{self, HealthRoute};
use super::node_health;
use super::nodepower::{self, Bulk};
use super::params::{self, validate, Action, ParamErrors, Params, RawValue};
use super::render;
use super::respond::{failure, success, ApiError, Reply};
use super::rows;
use super::snapshots::{self, SnapAction};
use super::state::{Fault, FaultKind, RecordedRequest, RuntimeConfig, Sim, State};
use super::tasks::{self, Upid, VzdumpJob};
use super::world::{now, GuestType, PveVersion, World};

/// pveproxy refuses request bodies above 512 KiB.
const MAX_BODY: usize = 512 * 1024;

/// The handler asked for the connection to be closed without any response (a `drop`
/// fault). Returned as the service error, which makes hyper abort the connection.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a simulated fault")
    }
}

impl std::error::Error for DropConnection {}

/// A matched API route, with its path parameters.
#[derive(Clone, Debug)]
enum Route {
    Version,
    ClusterResources,
    ClusterStatus,
    ClusterTasks,
    ClusterBackup,
    NotBackedUp,
    ClusterHaStatus,
    Nodes,
    StorageIndex,
    AccessPermissions,
    NodeStatus {
        node: String,
    },
    GuestList {
        node: String,
        kind: GuestType,
    },
    GuestCurrent {
        node: String,
        kind: GuestType,
        vmid: String,
    },
    GuestAction {
        node: String,
        kind: GuestType,
        vmid: String,
        action: Action,
    },
    NodeStorage {
        node: String,
    },
    StorageContent {
        node: String,
        storage: String,
    },
    NodeTasks {
        node: String,
    },
    TaskStatus {
        node: String,
        upid: String,
    },
    TaskLog {
        node: String,
        upid: String,
    },
    TaskStop {
        node: String,
        upid: String,
    },
    Vzdump {
        node: String,
    },
    AptUpdates {
        node: String,
    },
    /// `POST /nodes/{node}/status` (reboot/shutdown).
    NodeCommand {
        node: String,
    },
    /// `POST /nodes/{node}/{startall|stopall|suspendall}`.
    BulkPower {
        node: String,
        bulk: Bulk,
    },
    /// `POST /nodes/{node}/wakeonlan` (no proxying: `node` is the target).
    WakeOnLan {
        node: String,
    },
    /// Ceph status and replication (`health`).
    Health(HealthRoute),
    /// `…/{qemu|lxc}/{vmid}/snapshot[/{snapname}[/rollback]]`; `action` `None` = the list.
    Snapshot {
        node: String,
        kind: GuestType,
        vmid: String,
        snapname: Option<String>,
        action: Option<SnapAction>,
    },
    /// Node health (see `node_health`): disks, ZFS, APT versions, certificates.
    DisksList {
        node: String,
    },
    DisksZfs {
        node: String,
    },
    AptVersions {
        node: String,
    },
    CertificatesInfo {
        node: String,
    },
    /// `GET /nodes/{node}/qemu/{vmid}/agent/{command}` (see `agent`).
    GuestAgent {
        node: String,
        vmid: String,
        command: AgentCommand,
    },
    /// `GET /nodes/{node}/lxc/{vmid}/interfaces` (PVE >= 8.1).
    LxcInterfaces {
        node: String,
        vmid: String,
    },
}

/// Matches a method and path; returns the route and its template (the counter key).
fn match_route(method: &str, segments: &[String]) -> Option<(Route, String)> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let node = |n: &str| n.to_string();
    let route = match (method, s.as_slice()) {
        ("GET", ["version"]) => (Route::Version, "GET /version".to_string()),
        ("GET", ["cluster", "resources"]) => {
            (Route::ClusterResources, "GET /cluster/resources".into())
        }
        ("GET", ["cluster", "status"]) => (Route::ClusterStatus, "GET /cluster/status".into()),
        ("GET", ["cluster", "tasks"]) => (Route::ClusterTasks, "GET /cluster/tasks".into()),
        ("GET", ["cluster", "backup"]) => (Route::ClusterBackup, "GET /cluster/backup".into()),
        ("GET", ["cluster", "backup-info", "not-backed-up"]) => (
            Route::NotBackedUp,
            "GET /cluster/backup-info/not-backed-up".into(),
        ),
        ("GET", ["cluster", "ha", "status", "current"]) => (
            Route::ClusterHaStatus,
            "GET /cluster/ha/status/current".into(),
        ),
        ("GET", ["nodes"]) => (Route::Nodes, "GET /nodes".into()),
        ("GET", ["storage"]) => (Route::StorageIndex, "GET /storage".into()),
        ("GET", ["access", "permissions"]) => {
            (Route::AccessPermissions, "GET /access/permissions".into())
        }
        ("GET", ["nodes", n, "status"]) => (
            Route::NodeStatus { node: node(n) },
            "GET /nodes/{node}/status".into(),
        ),
        ("GET", ["nodes", n, kind]) if GuestType::parse(kind).is_some() => (
            Route::GuestList {
                node: node(n),
                kind: GuestType::parse(kind)?,
            },
            format!("GET /nodes/{{node}}/{kind}"),
        ),
        ("GET", ["nodes", n, kind, vmid, "status", "current"])
            if GuestType::parse(kind).is_some() =>
        {
            (
                Route::GuestCurrent {
                    node: node(n),
                    kind: GuestType::parse(kind)?,
                    vmid: vmid.to_string(),
                },
                format!("GET /nodes/{{node}}/{kind}/{{vmid}}/status/current"),
            )
        }
        ("POST", ["nodes", n, kind, vmid, "status", action]) => {
            let kind = GuestType::parse(kind)?;
            let action = Action::parse(kind, action)?;
            (
                Route::GuestAction {
                    node: node(n),
                    kind,
                    vmid: vmid.to_string(),
                    action,
                },
                format!(
                    "POST /nodes/{{node}}/{}/{{vmid}}/status/{}",
                    kind.as_str(),
                    action.as_str()
                ),
            )
        }
        ("GET", ["nodes", n, "storage"]) => (
            Route::NodeStorage { node: node(n) },
            "GET /nodes/{node}/storage".into(),
        ),
        ("GET", ["nodes", n, "storage", storage, "content"]) => (
            Route::StorageContent {
                node: node(n),
                storage: storage.to_string(),
            },
            "GET /nodes/{node}/storage/{storage}/content".into(),
        ),
        ("GET", ["nodes", n, "tasks"]) => (
            Route::NodeTasks { node: node(n) },
            "GET /nodes/{node}/tasks".into(),
        ),
        ("GET", ["nodes", n, "tasks", upid, "status"]) => (
            Route::TaskStatus {
                node: node(n),
                upid: upid.to_string(),
            },
            "GET /nodes/{node}/tasks/{upid}/status".into(),
        ),
        ("GET", ["nodes", n, "tasks", upid, "log"]) => (
            Route::TaskLog {
                node: node(n),
                upid: upid.to_string(),
            },
            "GET /nodes/{node}/tasks/{upid}/log".into(),
        ),
        ("DELETE", ["nodes", n, "tasks", upid]) => (
            Route::TaskStop {
                node: node(n),
                upid: upid.to_string(),
            },
            "DELETE /nodes/{node}/tasks/{upid}".into(),
        ),
        ("POST", ["nodes", n, "vzdump"]) => (
            Route::Vzdump { node: node(n) },
            "POST /nodes/{node}/vzdump".into(),
        ),
        ("GET", ["nodes", n, "apt", "update"]) => (
            Route::AptUpdates { node: node(n) },
            "GET /nodes/{node}/apt/update".into(),
        ),
        ("POST", ["nodes", n, "status"]) => (
            Route::NodeCommand {
                node: n.to_string(),
            },
            "POST /nodes/{node}/status".into(),
        ),
        ("POST", ["nodes", n, "wakeonlan"]) => (
            Route::WakeOnLan {
                node: n.to_string(),
            },
            "POST /nodes/{node}/wakeonlan".into(),
        ),
        ("POST", ["nodes", n, action]) if Bulk::parse(action).is_some() => {
            let bulk = Bulk::parse(action)?;
            (
                Route::BulkPower {
                    node: n.to_string(),
                    bulk,
                },
                format!("POST /nodes/{{node}}/{}", bulk.as_str()),
            )
        }
        (method, ["nodes", n, kind, vmid, "snapshot", rest @ ..]) => {
            let kind = GuestType::parse(kind)?;
            let (action, snapname, tail) = match (method, rest) {
                ("GET", []) => (None, None, ""),
                ("POST", []) => (Some(SnapAction::Create), None, ""),
                ("DELETE", [name]) => (Some(SnapAction::Delete), Some(*name), "/{snapname}"),
                ("POST", [name, "rollback"]) => (
                    Some(SnapAction::Rollback),
                    Some(*name),
                    "/{snapname}/rollback",
                ),
                _ => return None,
            };
            (
                Route::Snapshot {
                    node: node(n),
                    kind,
                    vmid: vmid.to_string(),
                    snapname: snapname.map(str::to_string),
                    action,
                },
                format!(
                    "{method} /nodes/{{node}}/{}/{{vmid}}/snapshot{tail}",
                    kind.as_str()
                ),
            )
        }
        ("GET", ["nodes", n, "disks", "list"]) => (
            Route::DisksList { node: node(n) },
            "GET /nodes/{node}/disks/list".into(),
        ),
        ("GET", ["nodes", n, "disks", "zfs"]) => (
            Route::DisksZfs { node: node(n) },
            "GET /nodes/{node}/disks/zfs".into(),
        ),
        ("GET", ["nodes", n, "apt", "versions"]) => (
            Route::AptVersions { node: node(n) },
            "GET /nodes/{node}/apt/versions".into(),
        ),
        ("GET", ["nodes", n, "certificates", "info"]) => (
            Route::CertificatesInfo { node: node(n) },
            "GET /nodes/{node}/certificates/info".into(),
        ),
        ("GET", ["nodes", n, "qemu", vmid, "agent", command]) => {
            let command = AgentCommand::parse(command)?;
            (
                Route::GuestAgent {
                    node: node(n),
                    vmid: vmid.to_string(),
                    command,
                },
                format!(
                    "GET /nodes/{{node}}/qemu/{{vmid}}/agent/{}",
                    command.as_str()
                ),
            )
        }
        ("GET", ["nodes", n, "lxc", vmid, "interfaces"]) => (
            Route::LxcInterfaces {
                node: node(n),
                vmid: vmid.to_string(),
            },
            "GET /nodes/{node}/lxc/{vmid}/interfaces".into(),
        ),
        _ => {
            let (route, template) = health::match_route(method, &s)?;
            (Route::Health(route), template)
        }
    };
    Some(route)
}

impl Route {
    /// The node a pveproxy would forward this request to (`proxyto => 'node'`).
    fn proxy_node(&self) -> Option<&str> {
        match self {
            Route::NodeStatus { node }
            | Route::GuestList { node, .. }
            | Route::GuestCurrent { node, .. }
            | Route::GuestAction { node, .. }
            | Route::NodeStorage { node }
            | Route::StorageContent { node, .. }
            | Route::NodeTasks { node }
            | Route::TaskStatus { node, .. }
            | Route::TaskLog { node, .. }
            | Route::TaskStop { node, .. }
            | Route::Vzdump { node }
            | Route::AptUpdates { node }
            | Route::NodeCommand { node }
            | Route::BulkPower { node, .. }
            | Route::Snapshot { node, .. }
            | Route::DisksList { node }
            | Route::DisksZfs { node }
            | Route::AptVersions { node }
            | Route::CertificatesInfo { node }
            | Route::GuestAgent { node, .. }
            | Route::LxcInterfaces { node, .. } => Some(node),
            Route::Health(route) => route.proxy_node(),
            _ => None,
        }
    }

    /// The endpoint's own permission check: an ACL path and privileges (any of them).
    fn permission(&self, version: PveVersion) -> Option<(String, &'static [&'static str])> {
        match self {
            Route::ClusterStatus
            | Route::ClusterHaStatus
            | Route::ClusterBackup
            | Route::NotBackedUp => Some(("/".into(), &["Sys.Audit"])),
            Route::GuestAgent { vmid, .. } => {
                Some((format!("/vms/{vmid}"), agent::agent_privileges(version)))
            }
            Route::LxcInterfaces { vmid, .. } => Some((format!("/vms/{vmid}"), &["VM.Audit"])),
            Route::NodeStatus { node } => Some((format!("/nodes/{node}"), &["Sys.Audit"])),
            Route::AptUpdates { node } => Some((format!("/nodes/{node}"), &["Sys.Modify"])),
            Route::NodeCommand { node } | Route::WakeOnLan { node } => {
                Some((format!("/nodes/{node}"), &["Sys.PowerMgmt"]))
            }
            // disks/list is `or` of two paths: see `alternative_permission`.
            Route::DisksZfs { .. } => Some(("/".into(), &["Sys.Audit"])),
            Route::AptVersions { node } => Some((format!("/nodes/{node}"), &["Sys.Audit"])),
            Route::GuestCurrent { vmid, .. } => Some((format!("/vms/{vmid}"), &["VM.Audit"])),
            Route::GuestAction { vmid, .. } => Some((format!("/vms/{vmid}"), &["VM.PowerMgmt"])),
            Route::StorageContent { storage, .. } => Some((
                format!("/storage/{storage}"),
                &["Datastore.Audit", "Datastore.AllocateSpace"],
            )),
            Route::Health(route) => route.permission(),
            Route::Snapshot { vmid, action, .. } => Some((
                format!("/vms/{vmid}"),
                match action {
                    None => &["VM.Audit"],
                    Some(SnapAction::Rollback) => &["VM.Snapshot", "VM.Snapshot.Rollback"],
                    Some(_) => &["VM.Snapshot"],
                },
            )),
            _ => None,
        }
    }

    /// Parameters taken from the path, which a body may only repeat with the same value.
    fn path_params(&self) -> Vec<(&'static str, &str)> {
        match self {
            Route::NodeStatus { node }
            | Route::GuestList { node, .. }
            | Route::NodeStorage { node }
            | Route::NodeTasks { node }
            | Route::Vzdump { node }
            | Route::AptUpdates { node }
            | Route::NodeCommand { node }
            | Route::BulkPower { node, .. }
            | Route::WakeOnLan { node } => vec![("node", node)],
            Route::DisksList { node }
            | Route::DisksZfs { node }
            | Route::AptVersions { node }
            | Route::CertificatesInfo { node } => vec![("node", node)],
            Route::GuestCurrent { node, vmid, .. }
            | Route::GuestAction { node, vmid, .. }
            | Route::GuestAgent { node, vmid, .. }
            | Route::LxcInterfaces { node, vmid } => {
                vec![("node", node), ("vmid", vmid)]
            }
            Route::StorageContent { node, storage } => vec![("node", node), ("storage", storage)],
            Route::Snapshot {
                node,
                vmid,
                snapname,
                ..
            } => {
                let mut params = vec![("node", node.as_str()), ("vmid", vmid.as_str())];
                if let Some(name) = snapname {
                    params.push(("snapname", name.as_str()));
                }
                params
            }
            Route::TaskStatus { node, upid }
            | Route::TaskLog { node, upid }
            | Route::TaskStop { node, upid } => vec![("node", node), ("upid", upid)],
            Route::Health(route) => route.path_params(),
            _ => Vec::new(),
        }
    }

    fn specs(&self, version: PveVersion) -> Vec<params::Spec> {
        match self {
            Route::Version
            | Route::ClusterStatus
            | Route::ClusterTasks
            | Route::ClusterBackup
            | Route::NotBackedUp
            | Route::ClusterHaStatus
            | Route::Nodes => params::none(),
            Route::ClusterResources => params::cluster_resources(),
            Route::StorageIndex => params::storage_index(),
            Route::AccessPermissions => params::access_permissions(),
            Route::NodeStatus { .. }
            | Route::AptUpdates { .. }
            | Route::DisksZfs { .. }
            | Route::AptVersions { .. }
            | Route::CertificatesInfo { .. } => params::node_only(),
            Route::DisksList { .. } => params::disks_list(),
            Route::GuestList { kind, .. } => match kind {
                GuestType::Qemu => params::qemu_list(),
                GuestType::Lxc => params::node_only(),
            },
            Route::GuestCurrent { .. } | Route::GuestAgent { .. } | Route::LxcInterfaces { .. } => {
                params::guest_current()
            }
            Route::GuestAction { kind, action, .. } => params::lifecycle(*kind, *action, version),
            Route::NodeStorage { .. } => params::node_storage(),
            Route::StorageContent { .. } => params::storage_content(),
            Route::NodeTasks { .. } => params::node_tasks(),
            Route::TaskStatus { .. } | Route::TaskStop { .. } => params::task_status(),
            Route::TaskLog { .. } => params::task_log(),
            Route::Vzdump { .. } => params::vzdump(version),
            Route::NodeCommand { .. } => nodepower::status_specs(),
            Route::BulkPower { bulk, .. } => nodepower::bulk_specs(*bulk),
            Route::WakeOnLan { .. } => nodepower::wakeonlan_specs(),
            Route::Health(route) => route.specs(),
            Route::Snapshot { kind, action, .. } => match action {
                None => params::guest_current(),
                Some(SnapAction::Create) => params::snapshot_create(*kind),
                Some(SnapAction::Rollback) => params::snapshot_rollback(),
                Some(SnapAction::Delete) => params::snapshot_delete(),
            },
        }
    }
}

/// Decodes `%XX` escapes (and `+` as space in form data).
fn percent_decode(input: &str, plus_as_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while index < bytes.len() {
        match bytes[index] {
            b'+' if plus_as_space => {
                out.push(b' ');
                index += 1;
            }
            b'%' if index + 2 < bytes.len() => {
                match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high * 16 + low);
                        index += 3;
                    }
                    _ => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=1&b=2` (form bodies and query strings); a repeated key keeps the last value.
fn parse_urlencoded(text: &str) -> BTreeMap<String, RawValue> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(key, true),
                RawValue::Text(percent_decode(value, true)),
            )
        })
        .collect()
}

fn to_json_map(values: &BTreeMap<String, RawValue>) -> BTreeMap<String, Value> {
    values
        .iter()
        .map(|(key, value)| (key.clone(), value.to_json()))
        .collect()
}

/// Reads and decodes a request body per its Content-Type.
async fn read_body(
    method: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<BTreeMap<String, RawValue>, ApiError> {
    if headers
        .get(TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Err(ApiError::plain(
            501,
            "chunked transfer encoding not supported",
        ));
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if declared > MAX_BODY {
        return Err(ApiError::plain(501, "for data too large"));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::plain(501, "for data too large"))?;
    if !matches!(method, "POST" | "PUT") || bytes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-www-form-urlencoded");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" | "" => {
            Ok(parse_urlencoded(&String::from_utf8_lossy(&bytes)))
        }
        "application/json" => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map
                .into_iter()
                .map(|(key, value)| (key, RawValue::Json(value)))
                .collect()),
            Ok(_) | Err(_) => Err(ApiError::json(
                400,
                "malformed JSON string, neither array, object, number, string or atom",
            )),
        },
        _ => Err(ApiError::plain(
            506,
            format!("upload 'Content-Type '{content_type}' not implemented'"),
        )),
    }
}

/// Checks the `Authorization` header; `Err` holds the 401 reason phrase.
fn authenticate(
    state: &State,
    header: Option<&str>,
    version: PveVersion,
) -> Result<Arc<Token>, String> {
    let value = header
        .and_then(|h| {
            h.strip_prefix("PVEAPIToken=")
                .or_else(|| h.strip_prefix("PVEAPIToken "))
        })
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .ok_or_else(|| "No ticket".to_string())?;
    let reason = |specific: String| {
        if version.uniform_auth_failure() {
            "Authentication failed!".to_string()
        } else {
            specific
        }
    };
    let (full_id, secret) = Token::parse(value).map_err(|e| reason(e.to_string()))?;
    let Some(token) = state.tokens.get(&full_id) else {
        let (user, tokenid) = full_id.split_once('!').unwrap_or((&full_id, ""));
        return Err(reason(format!(
            "no such token '{tokenid}' for user '{user}'"
        )));
    };
    if token.secret != secret {
        return Err(reason("invalid token value!".into()));
    }
    Ok(Arc::clone(token))
}

/// Serves one request to the Proxmox API; `Err` drops the connection.
pub(crate) async fn handle(
    sim: &Sim,
    request: Request<Body>,
) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = request.into_parts();
    let version = sim.version();
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path();
    let Some(api_path) = raw_path.strip_prefix("/api2/json") else {
        return Ok(failure(&ApiError::plain(501, "no such uri"), version));
    };
    let api_path = if api_path.is_empty() { "/" } else { api_path };
    let segments: Vec<String> = api_path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| percent_decode(segment, false))
        .collect();
    let matched = match_route(&method, &segments);
    let template = matched
        .as_ref()
        .map_or_else(|| format!("{method} (unknown)"), |(_, t)| t.clone());
    sim.lock().count(&template);

    let query = parse_urlencoded(parts.uri.query().unwrap_or(""));
    let body = read_body(&method, &parts.headers, body).await;
    let form = body.as_ref().map(to_json_map).unwrap_or_default();
    let mut record = RecordedRequest {
        seq: 0,
        method: method.clone(),
        path: api_path.to_string(),
        route: template,
        query: to_json_map(&query),
        form,
        status: None,
        token_id: None,
        accept_encoding: parts
            .headers
            .get(ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let result = process(
        sim,
        version,
        Incoming {
            method: &method,
            path: api_path,
            matched: matched.map(|(route, _)| route),
            query,
            body,
            authorization: authorization.as_deref(),
        },
        &mut record,
    )
    .await;
    record.status = result.as_ref().ok().map(|r| r.status().as_u16());
    let accept = record.accept_encoding.clone();
    sim.lock().record(record);
    match result {
        Ok(response) => Ok(crate::respond::compress(response, accept.as_deref()).await),
        Err(drop) => Err(drop),
    }
}

/// The parts of a request that the stages need.
struct Incoming<'a> {
    method: &'a str,
    path: &'a str,
    matched: Option<Route>,
    query: BTreeMap<String, RawValue>,
    body: Result<BTreeMap<String, RawValue>, ApiError>,
    authorization: Option<&'a str>,
}

async fn process(
    sim: &Sim,
    version: PveVersion,
    incoming: Incoming<'_>,
    record: &mut RecordedRequest,
) -> Result<Response<Body>, DropConnection> {
    let (fault, config) = {
        let mut state = sim.lock();
        (
            state.take_fault(incoming.method, incoming.path),
            state.config,
        )
    };
    let Some(late) = fault.as_ref().filter(|f| f.kind == FaultKind::Late) else {
        return Box::pin(answer(sim, version, incoming, record, fault, config)).await;
    };
    let delay = std::time::Duration::from_millis(late.delay_ms.unwrap_or(2000));
    let result = Box::pin(answer(sim, version, incoming, record, None, config)).await;
    tokio::time::sleep(delay).await;
    result
}

async fn answer(
    sim: &Sim,
    version: PveVersion,
    incoming: Incoming<'_>,
    record: &mut RecordedRequest,
    fault: Option<Fault>,
    config: RuntimeConfig,
) -> Result<Response<Body>, DropConnection> {
    let fail = |error: ApiError| Ok(failure(&error, version));
    if let Some(fault) = fault {
        match fault.kind {
            FaultKind::Drop => return Err(DropConnection),
            FaultKind::Late => {}
            FaultKind::Slow => {
                let delay = fault.delay_ms.unwrap_or(2000);
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            FaultKind::Status => {
                let status = fault.status.unwrap_or(500);
                let message = fault.message.unwrap_or_else(|| match status {
                    595 => "No route to host".into(),
                    596 => "Connection timed out".into(),
                    503 => "service unavailable".into(),
                    _ => "simulated failure".into(),
                });
                return fail(if status >= 595 || status == 401 {
                    ApiError::empty(status, message)
                } else {
                    ApiError::json(status, message)
                });
            }
        }
    }
    if !matches!(incoming.method, "GET" | "POST" | "PUT" | "DELETE") {
        return fail(ApiError::plain(
            501,
            format!("method '{}' not available", incoming.method),
        ));
    }
    let body = match incoming.body {
        Ok(body) => body,
        Err(error) => return fail(error),
    };

    // Authentication.
    let token = {
        let state = sim.lock();
        authenticate(&state, incoming.authorization, version)
    };
    let token = match token {
        Ok(token) => token,
        Err(reason) => {
            tokio::time::sleep(config.auth_failure_delay).await;
            return fail(ApiError::empty(401, reason));
        }
    };
    record.token_id = Some(token.full_id.clone());

    // The container interfaces exist since PVE 8.1: older releases have no such method.
    let matched = incoming.matched.filter(|route| {
        !matches!(route, Route::LxcInterfaces { .. }) || agent::has_lxc_interfaces(version)
    });
    let Some(route) = matched else {
        return fail(ApiError::json(
            501,
            format!(
                "Method '{} {}' not implemented",
                incoming.method, incoming.path
            ),
        ));
    };

    // Permission, before parameters and proxying.
    if let Route::DisksList { node } = &route {
        // `['or', ['perm', '/', ['Sys.Audit']], ['perm', '/nodes/{node}', ['Sys.Audit']]]`:
        // an `or` check fails without a path/privilege suffix.
        if !token.has("/", "Sys.Audit") && !token.has(&format!("/nodes/{node}"), "Sys.Audit") {
            return fail(ApiError::forbidden("Permission check failed"));
        }
    }
    if let Some((path, privileges)) = route.permission(version) {
        if !token.has_any(&path, privileges) {
            return fail(ApiError::forbidden(permission_denied(&path, privileges)));
        }
    }

    // Proxying to the node in the path.
    if let Some(node) = route.proxy_node() {
        let (exists, online, delay) = {
            let state = sim.lock();
            (
                state.world.node(node).is_some(),
                state.world.node_online(node),
                state.config.proxy_offline_delay,
            )
        };
        if !exists {
            return fail(ApiError::server(format!(
                "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )));
        }
        if !online {
            tokio::time::sleep(delay).await;
            return fail(ApiError::empty(595, "No route to host"));
        }
    }

    // Parameters: query, then body, then the path (which must not conflict).
    let mut raw = incoming.query;
    raw.extend(body);
    let mut conflicts = ParamErrors::new();
    for (name, value) in route.path_params() {
        if let Some(given) = raw.get(name) {
            if given.display() != value {
                conflicts.insert(
                    name.to_string(),
                    "duplicate parameter (already defined in URI) with conflicting values!".into(),
                );
            }
        }
        raw.insert(name.to_string(), RawValue::Text(value.to_string()));
    }
    if !conflicts.is_empty() {
        return fail(ApiError::params(conflicts));
    }
    let params = match validate(&route.specs(version), &raw) {
        Ok(params) => params,
        Err(errors) => return fail(ApiError::params(errors)),
    };

    if let Route::GuestAgent { node, command, .. } = &route {
        // A failing agent holds this request (ping 3 s, command 5 s), not the simulator.
        let vmid = match vmid_param(&params) {
            Ok(vmid) => vmid,
            Err(error) => return fail(error),
        };
        let (delay, reply) = agent::qemu_agent(&sim.lock(), node, vmid, *command);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return Ok(match reply {
            Ok(data) => success(&Reply::data(data)),
            Err(error) => failure(&error, version),
        });
    }
    if let Route::ClusterResources = route {
        // Rendering every guest takes ~100 ms at 5,000 guests. pveproxy's workers serve
        // other requests meanwhile, so the list is rendered from a copy of the world, not
        // under the lock that every other request (a command's POST) needs.
        let (world, stats_time) = {
            let state = sim.lock();
            (state.world.clone(), state.config.stats_time(now()))
        };
        let reply = cluster_resources(&world, version, &token, stats_time, &params);
        return Ok(success(&reply));
    }
    let reply = {
        let mut state = sim.lock();
        dispatch(&mut state, &route, &params, &token, now())
    };
    Ok(match reply {
        Ok(reply) => success(&reply),
        Err(error) => failure(&error, version),
    })
}

/// `GET /cluster/resources`, with the optional `type` filter.
fn cluster_resources(
    world: &World,
    version: PveVersion,
    token: &Token,
    stats_time: f64,
    params: &Params,
) -> Reply {
    let mut rows = render::cluster_resources(world, version, token, stats_time, params.str("type"));
    Reply::raw(rows::write_array(&mut rows))
}

fn dispatch(
    state: &mut State,
    route: &Route,
    params: &Params,
    token: &Token,
    now: f64,
) -> Result<Reply, ApiError> {
    let version = state.version;
    let stats_time = state.config.stats_time(now);
    // Figures of the live endpoints (`now`, or the frozen instant); tasks keep real time.
    let live = state.config.live_time(now);
    let list = |rows: Vec<Value>| Ok(Reply::data(Value::Array(rows)));
    match route {
        Route::Version => Ok(Reply::data(render::version(version))),
        Route::ClusterResources => Ok(cluster_resources(
            &state.world,
            version,
            token,
            stats_time,
            params,
        )),
        Route::ClusterStatus => list(render::cluster_status(&state.world)),
        Route::ClusterTasks => list(cluster_tasks(state, token, now)),
        Route::ClusterBackup => list(crate::jobs::list(state, now)),
        Route::NotBackedUp => list(crate::jobs::not_backed_up(state, token)),
        Route::ClusterHaStatus => list(render::ha_status(&state.world, version, now)),
        Route::Nodes => list(render::nodes(&state.world, token, stats_time)),
        Route::StorageIndex => list(render::storage_index(
            &state.world,
            token,
            params.str("type"),
        )),
        Route::AccessPermissions => Ok(Reply::data(permissions(token, params, version))),
        Route::NodeStatus { node } => {
            let node = state
                .world
                .node(node)
                .ok_or_else(|| ApiError::server("no such node"))?;
            Ok(Reply::data(render::node_status(node, version, live)))
        }
        Route::GuestList { node, kind } => {
            let full = params.flag("full");
            let rows = state
                .world
                .guests
                .values()
                .filter(|g| g.kind == *kind && g.node == *node)
                .filter(|g| token.has(&format!("/vms/{}", g.vmid), "VM.Audit"))
                .map(|g| match kind {
                    GuestType::Qemu => render::qemu_list_row(g, live, version, full),
                    GuestType::Lxc => render::lxc_list_row(g, live, version),
                })
                .collect();
            list(rows)
        }
        Route::GuestCurrent { node, kind, .. } => {
            let vmid = vmid_param(params)?;
            let guest = state.world.guest_on(vmid, *kind, node).ok_or_else(|| {
                ApiError::server(format!(
                    "Configuration file 'nodes/{node}/{}/{vmid}.conf' does not exist",
                    kind.config_dir()
                ))
            })?;
            Ok(Reply::data(match kind {
                GuestType::Qemu => render::qemu_current(guest, live, version),
                GuestType::Lxc => render::lxc_current(guest, live, version),
            }))
        }
        Route::GuestAction {
            node, kind, action, ..
        } => guest_action(state, node, *kind, *action, params, token, now),
        Route::NodeStorage { node } => list(node_storage(state, node, params, token, live)),
        Route::StorageContent { node, storage } => {
            let storage = state
                .world
                .storage(storage)
                .filter(|s| s.on_node(node))
                .ok_or_else(|| ApiError::server(format!("storage '{storage}' does not exist")))?;
            let vmid = params.int("vmid").and_then(|v| u32::try_from(v).ok());
            list(render::storage_content(
                &state.world,
                storage,
                node,
                token,
                params.str("content"),
                vmid,
            ))
        }
        Route::NodeTasks { node } => list(node_tasks(state, node, params, token, now)),
        Route::TaskStatus { node, upid } => {
            let index = find_task(state, node, upid)?;
            check_task_access(state, index, token, node, "Sys.Audit")?;
            Ok(Reply::data(render::task_status(&state.tasks[index], now)))
        }
        Route::TaskLog { node, upid } => {
            let index = find_task(state, node, upid)?;
            check_task_access(state, index, token, node, "Sys.Audit")?;
            Ok(task_log(&state.tasks[index], params, now))
        }
        Route::TaskStop { node, upid } => {
            let index = find_task(state, node, upid)?;
            check_task_access(state, index, token, node, "Sys.Modify")?;
            state.kill_task(index, now);
            Ok(Reply::data(Value::Null))
        }
        Route::Vzdump { node } => vzdump(state, node, params, token, now),
        Route::NodeCommand { node } => state.node_command(node, params, now),
        Route::BulkPower { node, bulk } => state.bulk_power(node, *bulk, params, token, now),
        Route::WakeOnLan { node } => state.wake_on_lan(node, now),
        Route::Health(route) => route
            .answer(&state.world, token, params.int("guest"), live)
            .map(Reply::data),
        Route::Snapshot {
            node, kind, action, ..
        } => snapshots::handle(state, (node, *kind), *action, params, token, now),
        Route::AptUpdates { node } => list(node_health::apt_update(&state.world.health_of(node))),
        Route::DisksList { node } => list(node_health::disks_list(
            &state.world.health_of(node),
            params.flag("skipsmart"),
        )),
        Route::DisksZfs { node } => list(node_health::zfs_list(&state.world.health_of(node))?),
        Route::AptVersions { node } => list(node_health::apt_versions(
            &state.world.health_of(node),
            version,
        )),
        Route::CertificatesInfo { node } => {
            let fingerprint = state
                .world
                .node(node)
                .map(|n| n.ssl_fingerprint.clone())
                .unwrap_or_default();
            list(node_health::certificates_info(
                node,
                &state.world.health_of(node),
                &fingerprint,
            ))
        }
        Route::GuestAgent { node, command, .. } => {
            agent::qemu_agent(state, node, vmid_param(params)?, *command)
                .1
                .map(Reply::data)
        }
        Route::LxcInterfaces { node, .. } => {
            agent::lxc_interfaces(state, node, vmid_param(params)?).map(Reply::data)
        }
    }
}

fn vmid_param(params: &Params) -> Result<u32, ApiError> {
    params
        .int("vmid")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ApiError::param("vmid", "property is missing and it is not optional"))
}

fn permissions(token: &Token, params: &Params, version: PveVersion) -> Value {
    let unrestricted = token.privileges.is_none();
    let as_object = |privileges: std::collections::BTreeSet<String>| {
        let privileges = if unrestricted {
            agent::release_privileges(privileges, version)
        } else {
            privileges
        };
        Value::Object(
            privileges
                .into_iter()
                .map(|p| (p, Value::from(1)))
                .collect::<Map<String, Value>>(),
        )
    };
    match params.str("path") {
        Some(path) => json!({ path: as_object(token.effective(path)) }),
        None => Value::Object(
            token
                .permission_map()
                .into_iter()
                .map(|(path, privileges)| (path, as_object(privileges)))
                .collect(),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn guest_action(
    state: &mut State,
    node: &str,
    kind: GuestType,
    action: Action,
    params: &Params,
    token: &Token,
    now: f64,
) -> Result<Reply, ApiError> {
    let vmid = vmid_param(params)?;
    // A token's user is `user@realm!tokenid`, never `root@pam`.
    for option in ["skiplock", "keepActive", "nocheck"] {
        if params.flag(option) {
            return Err(ApiError::param(option, "Only root may use this option."));
        }
    }
    if params.has("migratedfrom") {
        return Err(ApiError::param(
            "migratedfrom",
            "Only root may use this option.",
        ));
    }
    if params.flag("todisk") && !token.has(&format!("/vms/{vmid}"), "VM.Config.Disk") {
        return Err(ApiError::forbidden(permission_denied(
            &format!("/vms/{vmid}"),
            &["VM.Config.Disk"],
        )));
    }
    let guest = state.world.guest_on(vmid, kind, node).cloned();
    let plan = tasks::plan(
        kind,
        action,
        vmid,
        node,
        guest.as_ref(),
        params,
        state.world.quorate(),
    )
    .map_err(ApiError::server)?;
    let upid = state.start_lifecycle_task(node, kind, vmid, &plan, &token.full_id, now);
    Ok(Reply::data(Value::String(upid)))
}

fn node_storage(state: &State, node: &str, params: &Params, token: &Token, t: f64) -> Vec<Value> {
    let contents: Vec<&str> = params
        .str("content")
        .map(|c| c.split(',').filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    let only = params.str("storage");
    let target = params.str("target").filter(|t| *t != node);
    state
        .world
        .storages
        .iter()
        .filter(|s| s.on_node(node))
        .filter(|s| only.is_none_or(|id| id == s.id))
        .filter(|s| contents.is_empty() || contents.iter().any(|c| s.supports(c)))
        .filter(|s| target.is_none() || s.shared)
        .filter(|s| {
            token.has_any(
                &format!("/storage/{}", s.id),
                &["Datastore.Audit", "Datastore.AllocateSpace"],
            )
        })
        .map(|s| {
            render::node_storage_row(
                &state.world,
                s,
                node,
                state.version,
                params.flag("format"),
                t,
            )
        })
        .collect()
}

fn task_visible(task: &tasks::Task, token: &Token) -> bool {
    task.upid.user == token.full_id || token.has(&format!("/nodes/{}", task.upid.node), "Sys.Audit")
}

fn node_tasks(state: &State, node: &str, params: &Params, token: &Token, now: f64) -> Vec<Value> {
    let source = params.str("source").unwrap_or("archive");
    let start = params.int("start").unwrap_or(0).max(0) as usize;
    let limit = params.int("limit").unwrap_or(50).max(0) as usize;
    let statuses: Vec<&str> = params
        .str("statusfilter")
        .map(|s| s.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let vmid = params.int("vmid").map(|v| v.to_string());
    let mut rows: Vec<&tasks::Task> = state
        .tasks
        .iter()
        .filter(|task| task.upid.node == node)
        .filter(|task| task_visible(task, token))
        .filter(|task| match source {
            "active" => task.is_running(now),
            "all" => true,
            _ => !task.is_running(now),
        })
        .filter(|task| {
            let exit = task.exitstatus(now);
            let is_ok = exit == Some("OK");
            let is_warning = exit.is_some_and(|e| e.starts_with("WARNINGS: "));
            let is_error = exit.is_some() && !is_ok && !is_warning;
            if params.flag("errors") && !is_error {
                return false;
            }
            statuses.is_empty()
                || statuses.iter().any(|status| match *status {
                    "ok" => is_ok,
                    "warning" => is_warning,
                    "error" => is_error,
                    "unknown" => exit.is_none(),
                    _ => false,
                })
        })
        .filter(|task| params.str("typefilter").is_none_or(|t| task.upid.kind == t))
        .filter(|task| {
            params
                .str("userfilter")
                .is_none_or(|u| task.upid.user.contains(u))
        })
        .filter(|task| vmid.as_deref().is_none_or(|v| task.upid.id == v))
        .filter(|task| {
            params
                .int("since")
                .is_none_or(|s| task.upid.starttime as i64 >= s)
        })
        .filter(|task| {
            params
                .int("until")
                .is_none_or(|u| task.upid.starttime as i64 <= u)
        })
        .collect();
    rows.sort_by(|a, b| b.created.total_cmp(&a.created));
    let take = if limit == 0 { usize::MAX } else { limit };
    rows.into_iter()
        .skip(start)
        .take(take)
        .map(|task| render::task_list_row(task, now))
        .collect()
}

/// `GET /cluster/tasks`: each node's last broadcast list (see `tasklist`).
fn cluster_tasks(state: &State, token: &Token, now: f64) -> Vec<Value> {
    // A frozen clock (the benchmark's still world) freezes figures, not tasks.
    let at = match state.config.stats.frozen_at {
        Some(_) => now,
        None => state.config.stats_time(now),
    };
    let nodes = state.world.nodes.iter().map(|n| n.name.as_str());
    crate::tasklist::cluster_tasks(&state.tasks, nodes, token, at)
}

/// Finds a task by UPID on the node in the path; anything else is `no such task`.
fn find_task(state: &State, node: &str, upid: &str) -> Result<usize, ApiError> {
    if Upid::parse(upid).is_none() {
        return Err(ApiError::param("upid", "unable to parse worker upid"));
    }
    state
        .task_by_upid
        .get(upid)
        .copied()
        .filter(|index| state.tasks[*index].upid.node == node)
        .ok_or_else(|| ApiError::param("upid", "no such task"))
}

fn check_task_access(
    state: &State,
    index: usize,
    token: &Token,
    node: &str,
    privilege: &'static str,
) -> Result<(), ApiError> {
    let path = format!("/nodes/{node}");
    if state.tasks[index].upid.user == token.full_id || token.has(&path, privilege) {
        Ok(())
    } else {
        Err(ApiError::forbidden(permission_denied(&path, &[privilege])))
    }
}

fn task_log(task: &tasks::Task, params: &Params, now: f64) -> Reply {
    let lines = task.visible_lines(now);
    let start = params.int("start").unwrap_or(0).max(0) as usize;
    let limit = params.int("limit").unwrap_or(50).max(0) as usize;
    if lines.is_empty() {
        return Reply {
            total: Some(1),
            ..Reply::data(json!([{"n": 1, "t": "no content"}]))
        };
    }
    let take = if limit == 0 { usize::MAX } else { limit };
    let rows: Vec<Value> = lines
        .iter()
        .enumerate()
        .skip(start)
        .take(take)
        .map(|(index, text)| json!({"n": index + 1, "t": text}))
        .collect();
    // Proxmox's `dump_logfile`: nothing past `start` gives one line numbered past the end.
    if rows.is_empty() {
        return Reply {
            total: Some(lines.len() + 1),
            ..Reply::data(json!([{"n": lines.len() + 1, "t": "no content"}]))
        };
    }
    Reply {
        total: Some(lines.len()),
        ..Reply::data(Value::Array(rows))
    }
}

/// `vzdump` renders its command line as `vzdump 100 101 --storage local --mode …`.
fn vzdump_command_line(params: &Params) -> String {
    let mut line = String::from("vzdump");
    if let Some(vmids) = params.str("vmid") {
        for vmid in vmids.split([',', ';', ' ']).filter(|v| !v.is_empty()) {
            line.push(' ');
            line.push_str(vmid);
        }
    }
    for name in params.names().filter(|name| *name != "vmid") {
        let value = params.display(name).unwrap_or_default();
        let value = if value.contains(char::is_whitespace) {
            format!("'{value}'")
        } else {
            value
        };
        line.push_str(&format!(" --{name} {value}"));
    }
    line
}

fn vzdump(
    state: &mut State,
    node: &str,
    params: &Params,
    token: &Token,
    now: f64,
) -> Result<Reply, ApiError> {
    if params.has("stdout") {
        return Err(ApiError::param(
            "stdout",
            "option is only allowed on the command line interface.",
        ));
    }
    for option in ["tmpdir", "dumpdir", "script", "job-id"] {
        if params.has(option) {
            return Err(ApiError::param(option, "Only root may use this option."));
        }
    }
    for option in ["bwlimit", "performance", "ionice"] {
        if params.has(option) && !token.has("/", "Sys.Modify") {
            return Err(ApiError::forbidden(permission_denied("/", &["Sys.Modify"])));
        }
    }
    let vmid_list = params.str("vmid");
    if params.flag("all") && vmid_list.is_some() {
        return Err(ApiError::param(
            "all",
            "option conflicts with option 'vmid'",
        ));
    }
    if params.has("exclude") && vmid_list.is_some() {
        return Err(ApiError::param(
            "exclude",
            "option conflicts with option 'vmid'",
        ));
    }
    let stop = params.flag("stop");
    if !(params.flag("all") || stop || params.has("pool")) && vmid_list.is_none() {
        return Err(ApiError::param(
            "vmid",
            "property is missing and it is not optional",
        ));
    }
    if stop {
        let path = format!("/nodes/{node}");
        if !token.has(&path, "Sys.Modify") {
            return Err(ApiError::forbidden(permission_denied(
                &path,
                &["Sys.Modify"],
            )));
        }
        let running: Vec<usize> = (0..state.tasks.len())
            .filter(|i| {
                let task = &state.tasks[*i];
                task.upid.node == node && task.upid.kind == "vzdump" && task.is_running(now)
            })
            .collect();
        for index in running {
            state.kill_task(index, now);
        }
    }
    let parse_list = |text: &str| -> Vec<u32> {
        text.split([',', ';', ' '])
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let mut local: Vec<u32> = if let Some(list) = vmid_list {
        // Guests on this node, plus ids that exist nowhere: "include IDs for deleted
        // guests, and visibly fail later".
        parse_list(list)
            .into_iter()
            .filter(|vmid| {
                state
                    .world
                    .guests
                    .get(vmid)
                    .is_none_or(|guest| guest.node == node)
            })
            .collect()
    } else if params.flag("all") {
        let excluded = params.str("exclude").map(parse_list).unwrap_or_default();
        state
            .world
            .guests
            .values()
            .filter(|g| g.node == node && !g.template && !excluded.contains(&g.vmid))
            .map(|g| g.vmid)
            .collect()
    } else if let Some(pool) = params.str("pool") {
        state
            .world
            .guests
            .values()
            .filter(|g| g.node == node && g.pool.as_deref() == Some(pool))
            .map(|g| g.vmid)
            .collect()
    } else {
        Vec::new()
    };
    local.sort_unstable();
    local.dedup();
    if local.is_empty() {
        // "silent exit if specified VMs run on other nodes"
        return Ok(Reply::data(Value::from("OK")));
    }
    let storage_id = params.str("storage").unwrap_or("local");
    let storage = state
        .world
        .storage(storage_id)
        .filter(|s| s.on_node(node))
        .cloned()
        .ok_or_else(|| ApiError::server(format!("storage '{storage_id}' does not exist")))?;
    let storage_path = format!("/storage/{storage_id}");
    if !token.has(&storage_path, "Datastore.AllocateSpace") {
        return Err(ApiError::forbidden(permission_denied(
            &storage_path,
            &["Datastore.AllocateSpace"],
        )));
    }
    if params.has("prune-backups") && !token.has(&storage_path, "Datastore.Allocate") {
        return Err(ApiError::forbidden(permission_denied(
            &storage_path,
            &["Datastore.Allocate"],
        )));
    }
    for vmid in &local {
        let path = format!("/vms/{vmid}");
        if !token.has(&path, "VM.Backup") {
            return Err(ApiError::forbidden(permission_denied(
                &path,
                &["VM.Backup"],
            )));
        }
    }
    let storage_error = (!storage.supports("backup")).then(|| {
        format!(
            "could not get storage information for '{storage_id}': can't use storage '{storage_id}' for backups - wrong content type"
        )
    });
    let compress = params
        .str("compress")
        .filter(|c| *c != "0")
        .map(str::to_string);
    let job = VzdumpJob {
        node: node.to_string(),
        cluster: state
            .world
            .cluster_name
            .clone()
            .unwrap_or_else(|| node.to_string()),
        storage: storage_id.to_string(),
        storage_shared: storage.shared,
        dump_dir: storage.dump_dir.clone(),
        storage_error,
        mode: params.str("mode").unwrap_or("snapshot").to_string(),
        compress,
        notes_template: params.str("notes-template").map(str::to_string),
        protected: params.flag("protected"),
        command_line: vzdump_command_line(params),
        guests: Vec::new(),
    };
    let lockwait = params.int("lockwait").unwrap_or(180).max(0) as u64;
    let upid = state.start_vzdump_task(job, local, &token.full_id, lockwait, now);
    Ok(Reply::data(Value::String(upid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes_in_paths_and_forms() {
        assert_eq!(
            percent_decode("UPID%3Apve%3A0001%3Aroot%40pam%21tok%3A", false),
            "UPID:pve:0001:root@pam!tok:"
        );
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", true), "100%");
        let form = parse_urlencoded("vmid=100%2C101&notes-template=%7B%7Bguestname%7D%7D&all");
        assert_eq!(form["vmid"], RawValue::Text("100,101".into()));
        assert_eq!(
            form["notes-template"],
            RawValue::Text("{{guestname}}".into())
        );
        assert_eq!(form["all"], RawValue::Text(String::new()));
    }

    #[test]
    fn routes_use_schema_templates() {
        let segments = |path: &str| -> Vec<String> {
            path.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (_, template) =
            match_route("POST", &segments("/nodes/pve/qemu/100/status/start")).expect("route");
        assert_eq!(template, "POST /nodes/{node}/qemu/{vmid}/status/start");
        assert!(match_route("POST", &segments("/nodes/pve/lxc/101/status/reset")).is_none());
        let (_, template) = match_route("GET", &segments("/nodes/pve/status")).expect("route");
        assert_eq!(template, "GET /nodes/{node}/status");
        assert!(match_route("GET", &segments("/nodes/pve/foo")).is_none());
    }
}
