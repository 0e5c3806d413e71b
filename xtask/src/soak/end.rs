//! The end of a soak: drain, convergence, stuck topics, the accounting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::observe::{self, Classified, BASE, CLUSTER};
use super::report;
use super::run::{log, Soak};
use crate::mqtt;

impl Soak {
    // --- the end -------------------------------------------------------------------------------

    pub(super) async fn finish(&mut self) -> anyhow::Result<EndState> {
        self.sim_call(Method::DELETE, "/_sim/faults", None).await;
        self.end_commands_at = self.now();
        log("schedule done: faults cleared, waiting for the last results");
        let deadline = Instant::now() + Duration::from_secs_f64(self.args.drain);
        while Instant::now() < deadline {
            self.check_bridge_alive()?;
            if self.classify().await?.missing_unexplained.is_empty() && !self.waiting_for_results()
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.check_bridge_alive()?;
        if self.sample_rss("end").is_none() {
            self.fail("could not read the bridge's RSS at the end".into());
        }
        let convergence = self.check_convergence().await?;
        let stale_tasks = self.retained_non_final_tasks().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let final_state = self.observer.lock().unwrap().last_bridge_state();
        if final_state.as_deref() != Some("online") {
            self.fail(format!(
                "bridge/state ended '{}', not 'online'",
                final_state.as_deref().unwrap_or("None")
            ));
        }
        let counters = self.sim.get("/_sim/counters").await?;
        // Stop the bridge as a service manager would, and check it stops cleanly.
        self.bridge_expected_down = true;
        let final_exit = self.bridge.terminate().await;
        let final_stop_results = self.new_stop_failures();
        if final_exit != Some(0) {
            self.fail(format!(
                "the bridge exited with code {} on the final SIGTERM (expected 0)",
                report::code(final_exit)
            ));
        }
        let classified = self.classify().await?;
        Ok(EndState {
            counters,
            final_state,
            final_exit,
            convergence,
            stale_tasks,
            final_stop_results,
            classified,
        })
    }

    pub(super) async fn read_retained(
        &self,
        filter: &str,
        quiet: f64,
    ) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let id = format!("soak-check-{}", std::process::id());
        mqtt::read_retained(
            self.broker.port,
            &id,
            filter,
            Duration::from_secs_f64(quiet),
        )
        .await
    }

    /// Retained `…/task` payloads still `accepted`/`running` at the end, with no task
    /// running in the simulator for them: what a user would see stuck forever.
    pub(super) async fn retained_non_final_tasks(&self) -> anyhow::Result<Vec<String>> {
        let running = self.hung_upids().await?;
        let mut stale = Vec::new();
        for (topic, payload) in self
            .read_retained(&format!("{BASE}/{CLUSTER}/+/+/task"), 2.0)
            .await?
        {
            let Ok(report) = serde_json::from_slice::<Value>(&payload) else {
                continue;
            };
            let state = report["state"].as_str().unwrap_or("");
            let upid_running = report["upid"].as_str().is_some_and(|u| running.contains(u));
            if !observe::is_final(state) && !upid_running {
                stale.push(format!("{topic} id={} state={state}", report["id"]));
            }
        }
        Ok(stale)
    }

    /// Commands sent in the last seconds may still be running.
    pub(super) fn waiting_for_results(&self) -> bool {
        let now = self.now();
        let observer = self.observer.lock().unwrap();
        observer
            .commands
            .values()
            .any(|c| c.acked && c.finals.is_empty() && now - c.sent_at < 20.0)
    }

    pub(super) async fn hung_upids(&self) -> anyhow::Result<BTreeSet<String>> {
        let tasks = self.sim.get("/_sim/tasks").await?;
        Ok(tasks
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["running"] == true)
            .filter_map(|t| t["upid"].as_str().map(str::to_string))
            .collect())
    }

    pub(super) async fn classify(&self) -> anyhow::Result<Classified> {
        let hung = self.hung_upids().await?;
        let observer = self.observer.lock().unwrap();
        Ok(observe::classify(
            observer.commands.values(),
            &self.broker_restarts,
            &self.bridge_restarts,
            &hung,
        ))
    }

    /// After the faults stop, the retained guest states must match the simulator's world:
    /// the same guests, each on its node, with its power state.
    pub(super) async fn check_convergence(&mut self) -> anyhow::Result<Convergence> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let world = self.sim.get("/_sim/world").await?;
            let truth: BTreeMap<u64, Value> = world["guests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| Some((g["vmid"].as_u64()?, g.clone())))
                .collect();
            let mut states = BTreeMap::new();
            for (topic, payload) in self
                .read_retained(&format!("{BASE}/{CLUSTER}/+/+"), 2.0)
                .await?
            {
                let parts: Vec<&str> = topic.split('/').collect();
                if matches!(parts.get(2), Some(&("qemu" | "lxc"))) && !payload.is_empty() {
                    if let (Some(vmid), Ok(state)) = (
                        parts[3].parse::<u64>().ok(),
                        serde_json::from_slice::<Value>(&payload),
                    ) {
                        states.insert(vmid, state);
                    }
                }
            }
            let mismatches = mismatches(&truth, &states);
            if mismatches.is_empty() || Instant::now() >= deadline {
                if !mismatches.is_empty() {
                    let first: Vec<&String> = mismatches.iter().take(5).collect();
                    self.fail(format!(
                        "retained guest states did not converge to the simulator: {first:?}"
                    ));
                }
                return Ok(Convergence {
                    guests: truth.len(),
                    mismatches,
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Where the retained guest states differ from the simulator's world.
pub(super) fn mismatches(
    truth: &BTreeMap<u64, Value>,
    states: &BTreeMap<u64, Value>,
) -> Vec<String> {
    let vmids: BTreeSet<u64> = truth.keys().chain(states.keys()).copied().collect();
    let mut out = Vec::new();
    for vmid in vmids {
        let (Some(sim), Some(seen)) = (truth.get(&vmid), states.get(&vmid)) else {
            out.push(format!(
                "{vmid}: sim has {}, MQTT has {}",
                truth.contains_key(&vmid),
                states.contains_key(&vmid)
            ));
            continue;
        };
        if sim["node"] != seen["node"] {
            out.push(format!(
                "{vmid}: node {} != sim {}",
                seen["node"], sim["node"]
            ));
        }
        if !observe::same_power(sim, seen["status"].as_str()) {
            out.push(format!(
                "{vmid}: status {} != sim {}",
                seen["status"], sim["status"]
            ));
        }
    }
    out
}

#[derive(serde::Serialize)]
pub(super) struct Convergence {
    pub guests: usize,
    pub mismatches: Vec<String>,
}

pub(super) struct EndState {
    pub counters: Value,
    pub final_state: Option<String>,
    pub final_exit: Option<i32>,
    pub convergence: Convergence,
    pub stale_tasks: Vec<String>,
    pub final_stop_results: usize,
    pub classified: Classified,
}
