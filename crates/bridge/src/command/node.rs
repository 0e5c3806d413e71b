//! Node commands on `{base}/{c}/node/{node}/set` (SPEC §7, issue 11): `reboot`,
//! `shutdown`, `startall`, `stopall`, `suspendall`, `wakeonlan`.
//!
//! Pure parsing, the policy switch (`[commands] node_power`) and the safety rules; the
//! inbox and the runner are in [`super::node_run`]. The payload is a bare word or JSON,
//! as for guest commands:
//! `{"action": "stopall", "vms": [100, 101], "force": true, "timeout": 60, "id": "x"}`.

use serde_json::{Map, Value};

use super::parse::{
    bit, boolean, envelope, id_field, option_allowed, reject as invalid, Envelope, Rejection,
    RejectionKind,
};
use super::requests::Vmid;
use crate::config::CommandsConfig;
use crate::model::ClusterView;

/// The most guests one `vms` list may name.
pub const MAX_VMS: usize = 500;

/// stopall's `timeout` range in Proxmox (`0..7200`).
pub const MAX_STOPALL_TIMEOUT: u64 = 7200;

pub use crate::pve::NodeAction;

/// A parsed, well-formed node command (not yet authorised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCommand {
    pub action: NodeAction,
    pub id: Option<String>,
    /// Only these guests (`vms`), in the order given.
    pub vms: Vec<u32>,
    /// reboot/shutdown: override the safety rules; startall: also guests without
    /// `onboot`; stopall: `force-stop` (Proxmox's default is on).
    pub force: Option<bool>,
    /// stopall: seconds per guest before the force stop (Proxmox's default 180).
    pub timeout: Option<u64>,
}

impl NodeCommand {
    pub fn new(action: NodeAction) -> NodeCommand {
        NodeCommand {
            action,
            id: None,
            vms: Vec::new(),
            force: None,
            timeout: None,
        }
    }

    /// The safety override of reboot/shutdown.
    pub fn forced(&self) -> bool {
        self.force == Some(true)
    }

    /// The form of the bulk POST, booleans as `0`/`1`.
    pub fn bulk_form(&self) -> Vec<(&'static str, String)> {
        let mut form = Vec::new();
        if !self.vms.is_empty() {
            let list: Vec<String> = self.vms.iter().map(u32::to_string).collect();
            form.push(("vms", list.join(",")));
        }
        match (self.action, self.force) {
            (NodeAction::StartAll, Some(f)) => form.push(("force", bit(f))),
            (NodeAction::StopAll, Some(f)) => form.push(("force-stop", bit(f))),
            _ => {}
        }
        if let (NodeAction::StopAll, Some(t)) = (self.action, self.timeout) {
            form.push(("timeout", t.to_string()));
        }
        form
    }
}

fn unknown_action(word: &str) -> Rejection {
    let shown: String = word.chars().take(40).collect();
    let all: Vec<&str> = NodeAction::ALL.iter().map(|a| a.as_str()).collect();
    Rejection::invalid(format!(
        "unknown node action '{shown}' (one of: {})",
        all.join(", ")
    ))
}

/// Parses a node command payload. The `id` is recovered even from payloads that are
/// otherwise rejected.
pub fn parse_node(payload: &[u8]) -> Result<NodeCommand, (Option<String>, Rejection)> {
    let object = match envelope(payload).map_err(|r| (None, r))? {
        Envelope::Word(word) => {
            let action = NodeAction::parse(word).ok_or_else(|| (None, unknown_action(word)))?;
            return Ok(NodeCommand::new(action));
        }
        Envelope::Object(object) => object,
    };
    let id = id_field(&object).map_err(|r| (None, r))?;
    match parse_object(&object) {
        Ok(mut command) => {
            command.id = id;
            Ok(command)
        }
        Err(rejection) => Err((id, rejection)),
    }
}

/// The `id` of a payload, whatever else is wrong with it.
pub fn id_of(payload: &[u8]) -> Option<String> {
    parse_node(payload).map_or_else(|(id, _)| id, |c| c.id)
}

fn parse_object(object: &Map<String, Value>) -> Result<NodeCommand, Rejection> {
    let action = match object.get("action") {
        Some(Value::String(word)) => NodeAction::parse(word).ok_or_else(|| unknown_action(word))?,
        Some(_) => return invalid("action must be a string"),
        None => return invalid("missing \"action\""),
    };
    let allowed = action.options();
    let mut command = NodeCommand::new(action);
    for (key, value) in object {
        if key == "action" || key == "id" {
            continue;
        }
        option_allowed(action, key, allowed)?;
        match key.as_str() {
            "vms" => command.vms = vms(value)?,
            "force" => command.force = Some(boolean(key, value)?),
            "timeout" => match value.as_u64() {
                Some(t) if t <= MAX_STOPALL_TIMEOUT => command.timeout = Some(t),
                _ => {
                    return invalid(format!(
                    "'timeout' must be a whole number of seconds from 0 to {MAX_STOPALL_TIMEOUT}"
                ))
                }
            },
            _ => return invalid(format!("unknown option '{key}'")),
        }
    }
    Ok(command)
}

/// `vms`: a JSON list of vmids, or Proxmox's own comma-separated text.
fn vms(value: &Value) -> Result<Vec<u32>, Rejection> {
    const RULE: &str =
        "'vms' must be a list of vmids (100 to 999999999), e.g. [100, 101] or \"100,101\"";
    let items: Vec<Value> = match value {
        Value::Array(list) => list.clone(),
        Value::String(text) => text
            .split(',')
            .map(|part| match part.trim().parse::<u64>() {
                Ok(n) if part.trim().chars().all(|c| c.is_ascii_digit()) => Value::from(n),
                _ => Value::Null,
            })
            .collect(),
        _ => return invalid(RULE),
    };
    if items.is_empty() {
        return invalid(format!("{RULE}; the list is empty"));
    }
    if items.len() > MAX_VMS {
        return invalid(format!("'vms' names at most {MAX_VMS} guests"));
    }
    let mut list = Vec::with_capacity(items.len());
    for item in &items {
        let vmid = item
            .as_u64()
            .and_then(|n| Vmid::new(n).ok())
            .ok_or_else(|| Rejection::invalid(RULE))?;
        if !list.contains(&vmid.get()) {
            list.push(vmid.get());
        }
    }
    Ok(list)
}

/// The `[commands]` switches for node power: `enabled`, `read_only` and `node_power`.
pub fn authorize_node(policy: &CommandsConfig) -> Result<(), Rejection> {
    let refuse = |reason: &str| Err(Rejection::new(RejectionKind::Policy, reason));
    if !policy.enabled {
        return refuse("commands are disabled ([commands] enabled = false)");
    }
    if policy.read_only {
        return refuse("the bridge is read-only ([commands] read_only = true)");
    }
    if !policy.node_power {
        return refuse("node power commands are off ([commands] node_power = false)");
    }
    Ok(())
}

/// Whether node power is possible at all (discovery announces the buttons then).
pub fn node_power_possible(policy: &CommandsConfig) -> bool {
    authorize_node(policy).is_ok()
}

/// Checks the command against the latest view: the node is known, its state fits the
/// action, `vms` are guests on it. The safety rules are [`check_safety`].
pub fn check_against_view(
    view: &ClusterView,
    node: &str,
    command: &NodeCommand,
) -> Result<(), Rejection> {
    let Some(state) = view.nodes.get(node) else {
        return Err(Rejection::new(
            RejectionKind::Unknown,
            format!("unknown node '{node}' in cluster '{}'", view.id),
        ));
    };
    let online = state.status == "online";
    let action = command.action;
    if action == NodeAction::WakeOnLan {
        if online {
            return invalid(format!(
                "node {node} is online: Wake-on-LAN only wakes a node that is off"
            ));
        }
        if !view
            .nodes
            .values()
            .any(|n| n.node != node && n.status == "online")
        {
            return invalid(format!(
                "no other node is online to send the Wake-on-LAN packet for {node} (Proxmox sends it from the node the request reaches)"
            ));
        }
        return Ok(());
    }
    if !online {
        return invalid(format!(
            "node {node} is {}: '{action}' needs it online",
            state.status
        ));
    }
    for vmid in &command.vms {
        match view.guests.get(vmid) {
            None => return invalid(format!("'vms': unknown guest {vmid}")),
            Some(g) if *g.node != *node => {
                return invalid(format!(
                    "'vms': guest {vmid} is on node {}, not {node}",
                    g.node
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reboot/shutdown of the bridge's own node, of the last online node or of the node
/// whose loss would cost quorum need `force`. `host_node` is the node the bridge runs
/// on, if it could tell (see `node_run::host_node`).
pub fn check_safety(
    view: &ClusterView,
    node: &str,
    command: &NodeCommand,
    host_node: Option<&str>,
) -> Result<(), Rejection> {
    let action = command.action;
    if action.powers_off() && !command.forced() {
        if host_node == Some(node) {
            return invalid(format!(
                "refused: the bridge runs on node {node}, and would {} with it; send {{\"action\":\"{action}\",\"force\":true}} to do it anyway",
                if action == NodeAction::Shutdown { "go down" } else { "go down while it reboots" }
            ));
        }
        let total = view.nodes.len();
        let online_after = view
            .nodes
            .values()
            .filter(|n| n.node != node && n.status == "online")
            .count();
        if total <= 1 || online_after == 0 {
            return invalid(format!(
                "refused: node {node} is the last online node (nothing would be left to wake it or to answer the bridge); send {{\"action\":\"{action}\",\"force\":true}} to do it anyway"
            ));
        }
        if online_after * 2 <= total {
            return invalid(format!(
                "refused: without node {node} only {online_after} of {total} nodes would be online and the cluster would lose quorum; send {{\"action\":\"{action}\",\"force\":true}} to do it anyway"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse::MAX_PAYLOAD;

    #[test]
    fn bare_words_and_json_become_node_commands() {
        assert_eq!(
            parse_node(b"stopall").unwrap(),
            NodeCommand::new(NodeAction::StopAll)
        );
        let c = parse_node(
            br#"{"action":"stopall","vms":[101,100,101],"force":false,"timeout":60,"id":"x"}"#,
        )
        .unwrap();
        assert_eq!(c.id.as_deref(), Some("x"));
        assert_eq!(c.vms, [101, 100]);
        assert_eq!(
            c.bulk_form(),
            vec![
                ("vms", "101,100".to_string()),
                ("force-stop", "0".to_string()),
                ("timeout", "60".to_string())
            ]
        );
        let c = parse_node(br#"{"action":"startall","vms":"100, 102","force":true}"#).unwrap();
        assert_eq!(
            c.bulk_form(),
            vec![("vms", "100,102".to_string()), ("force", "1".to_string())]
        );
        let c = parse_node(br#"{"action":"shutdown","force":true}"#).unwrap();
        assert!(c.forced());
        assert!(c.bulk_form().is_empty());
    }

    #[test]
    fn junk_is_rejected_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"explode", "unknown node action"),
            (b"start", "unknown node action"),
            (b"{not json", "not valid JSON"),
            (b"[1]", "must be an object"),
            (br#"{"vms":[100]}"#, "missing"),
            (br#"{"action":7}"#, "must be a string"),
            (
                br#"{"action":"wakeonlan","force":true}"#,
                "takes no options",
            ),
            (br#"{"action":"suspendall","force":true}"#, "unknown option"),
            (br#"{"action":"stopall","vms":[99]}"#, "list of vmids"),
            (br#"{"action":"stopall","vms":["abc"]}"#, "list of vmids"),
            (br#"{"action":"stopall","vms":"100,x"}"#, "list of vmids"),
            (br#"{"action":"stopall","vms":[]}"#, "empty"),
            (br#"{"action":"stopall","vms":100}"#, "list of vmids"),
            (br#"{"action":"stopall","timeout":9000}"#, "0 to 7200"),
            (br#"{"action":"stopall","timeout":"5"}"#, "0 to 7200"),
            (br#"{"action":"reboot","force":"yes"}"#, "true or false"),
            (&[0xff], "UTF-8"),
        ];
        for (payload, reason) in cases {
            let (_, r) = parse_node(payload).expect_err(&String::from_utf8_lossy(payload));
            assert!(
                r.reason.contains(reason),
                "{:?}: {}",
                String::from_utf8_lossy(payload),
                r.reason
            );
        }
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(parse_node(&big).unwrap_err().1.reason.contains("too large"));
        assert_eq!(
            id_of(br#"{"action":"fly","id":"r-1"}"#).as_deref(),
            Some("r-1")
        );
    }

    #[test]
    fn node_power_is_off_unless_switched_on() {
        let mut policy = CommandsConfig::default();
        let refused = authorize_node(&policy).unwrap_err();
        assert_eq!(refused.kind, RejectionKind::Policy);
        assert!(refused.reason.contains("node_power = false"));
        policy.node_power = true;
        assert!(authorize_node(&policy).is_ok());
        policy.read_only = true;
        assert!(authorize_node(&policy)
            .unwrap_err()
            .reason
            .contains("read-only"));
    }
}
