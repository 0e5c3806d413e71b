//! The soak's Proxmox faults, injected through the simulator's control API.

use reqwest::Method;
use serde_json::{json, Value};

use super::run::{uniform, weighted, Event, Soak};

const FAULT_WEIGHTS: &[(&str, f64)] = &[
    ("500 on /cluster/resources", 3.0),
    ("500 on /nodes", 1.0),
    ("slow /cluster/resources", 2.0),
    ("slow /nodes", 1.0),
    ("dropped connection", 2.0),
    ("node offline", 1.5),
    ("guest migrated", 2.0),
    ("guest deleted and re-added", 1.5),
    ("task fails", 2.0),
    ("task ends with warnings", 1.0),
];

impl Soak {
    // --- faults ------------------------------------------------------------------------------

    pub(super) fn count_fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_string()).or_default() += 1;
    }

    pub(super) async fn add_fault(&mut self, kind: &str, fault: Value) -> anyhow::Result<()> {
        self.sim
            .call(Method::POST, "/_sim/faults", Some(&fault))
            .await?;
        self.count_fault(kind);
        self.event(&format!("fault {kind}: {fault}"));
        Ok(())
    }

    pub(super) async fn sim_call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> bool {
        match self.sim.call(method, path, body.as_ref()).await {
            Ok(_) => true,
            Err(error) => {
                self.event(&format!("sim control call refused: {error:#}"));
                false
            }
        }
    }

    pub(super) async fn world_guest(&self, vmid: u32) -> anyhow::Result<Option<Value>> {
        let world = self.sim.get("/_sim/world").await?;
        Ok(world["guests"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["vmid"] == vmid).cloned()))
    }

    pub(super) fn live_guests(&self) -> Vec<u32> {
        self.guests
            .keys()
            .filter(|v| !self.deleted.contains(v))
            .copied()
            .collect()
    }

    pub(super) async fn do_fault(&mut self) -> anyhow::Result<()> {
        let next = self.now() + uniform(&mut self.rng, 4.0, 10.0);
        self.schedule(next, Event::Fault);
        let mut kind = weighted(&mut self.rng, FAULT_WEIGHTS);
        if kind == "node offline" && self.offline_node.is_some() {
            kind = "500 on /cluster/resources"; // one node offline at a time
        }
        let rng = &mut self.rng;
        match kind {
            "500 on /cluster/resources" => {
                let fault = json!({"path_prefix": "/cluster/resources", "kind": "status", "status": 500, "count": rng.u32(2..=5)});
                self.add_fault(kind, fault).await?;
            }
            "500 on /nodes" => {
                // Hits node status polls, lifecycle POSTs and task status reads alike.
                let fault = json!({"path_prefix": "/nodes", "kind": "status", "status": 500, "count": rng.u32(1..=4)});
                self.add_fault(kind, fault).await?;
            }
            "slow /cluster/resources" => {
                // Sometimes beyond the bridge's 5 s timeout.
                let delay = [800, 2000, 4000, 6500][rng.usize(..4)];
                let fault = json!({"path_prefix": "/cluster/resources", "kind": "slow", "delay_ms": delay, "count": rng.u32(1..=3)});
                self.add_fault(kind, fault).await?;
            }
            "slow /nodes" => {
                let delay = [500, 1500, 3000][rng.usize(..3)];
                let fault = json!({"path_prefix": "/nodes", "kind": "slow", "delay_ms": delay, "count": rng.u32(1..=4)});
                self.add_fault(kind, fault).await?;
            }
            "dropped connection" => {
                let prefix = ["/cluster/resources", "/nodes"][rng.usize(..2)];
                let fault = json!({"path_prefix": prefix, "kind": "drop", "count": rng.u32(1..=3)});
                self.add_fault(kind, fault).await?;
            }
            "node offline" => {
                let node = self.nodes[rng.usize(..self.nodes.len())].clone();
                let seconds = uniform(rng, 5.0, 15.0);
                self.sim_call(
                    Method::POST,
                    &format!("/_sim/nodes/{node}"),
                    Some(json!({"online": false})),
                )
                .await;
                self.offline_node = Some(node.clone());
                self.count_fault(kind);
                self.event(&format!("fault node offline: {node} for {seconds:.1} s"));
                self.schedule(self.now() + seconds, Event::NodeOnline(node));
            }
            "guest migrated" => {
                let live = self.live_guests();
                let vmid = live[self.rng.usize(..live.len())];
                let Some(world) = self.world_guest(vmid).await? else {
                    return Ok(());
                };
                let from = world["node"].as_str().unwrap_or("").to_string();
                let others: Vec<String> =
                    self.nodes.iter().filter(|n| **n != from).cloned().collect();
                let target = others[self.rng.usize(..others.len())].clone();
                let path = format!("/_sim/guests/{vmid}/migrate");
                if self
                    .sim_call(Method::POST, &path, Some(json!({"target": target})))
                    .await
                {
                    self.count_fault(kind);
                    self.event(&format!("fault guest migrated: {vmid} {from} -> {target}"));
                }
            }
            "guest deleted and re-added" => {
                let live = self.live_guests();
                let vmid = live[self.rng.usize(..live.len())];
                let Some(world) = self.world_guest(vmid).await? else {
                    return Ok(());
                };
                if self
                    .sim_call(Method::DELETE, &format!("/_sim/guests/{vmid}"), None)
                    .await
                {
                    self.deleted.insert(vmid);
                    self.count_fault(kind);
                    let seconds = uniform(&mut self.rng, 4.0, 12.0);
                    let node = world["node"].as_str().unwrap_or("").to_string();
                    self.event(&format!(
                        "fault guest deleted: {vmid} on {node}, back in {seconds:.1} s"
                    ));
                    self.schedule(self.now() + seconds, Event::GuestReAdd(world));
                }
            }
            "task fails" => {
                self.override_and_command(kind, "fail").await?;
            }
            _ => {
                self.override_and_command(kind, "warnings").await?;
            }
        }
        Ok(())
    }

    /// Makes the next task of an idle guest fail/hang/warn, then commands that guest with
    /// an action that starts a task in its current state.
    pub(super) async fn override_and_command(
        &mut self,
        kind: &str,
        outcome: &str,
    ) -> anyhow::Result<bool> {
        let busy = self.pending_vmids();
        let candidates: Vec<u32> = self
            .live_guests()
            .into_iter()
            .filter(|v| !busy.contains(v) && !truthy(&self.guests[v]["hastate"]))
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        let vmid = candidates[self.rng.usize(..candidates.len())];
        let Some(world) = self.world_guest(vmid).await? else {
            return Ok(false);
        };
        let action = match world["status"].as_str() {
            Some("running") => "reboot",
            Some("paused") => "resume",
            _ => "start",
        };
        let body = json!({"vmid": vmid, "outcome": outcome});
        self.sim_call(Method::POST, "/_sim/tasks/next", Some(body))
            .await;
        self.count_fault(kind);
        self.event(&format!("fault {kind}: next task of {vmid} -> {outcome}"));
        self.send_command(vmid, action, outcome, false).await;
        Ok(true)
    }

    pub(super) async fn do_guest_re_add(&mut self, world: Value) {
        let mut body = json!({
            "vmid": world["vmid"], "type": world["type"], "node": world["node"],
            "name": world["name"], "status": world["status"],
        });
        for key in ["tags", "pool"] {
            if truthy(&world[key]) {
                body[key] = world[key].clone();
            }
        }
        if truthy(&world["hastate"]) {
            let request = &world["ha_request"];
            body["hastate"] = if truthy(request) {
                request.clone()
            } else {
                world["hastate"].clone()
            };
        }
        if self
            .sim_call(Method::POST, "/_sim/guests", Some(body))
            .await
        {
            let vmid = world["vmid"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0);
            self.deleted.remove(&vmid);
            self.event(&format!("guest re-added: {vmid} on {}", world["node"]));
        }
    }
}

/// Python's truthiness for the simulator's optional fields (null, "", false, [] are unset).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}
