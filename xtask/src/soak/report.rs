//! The soak's verdict: invariant failures, `summary.json`, `commands.jsonl` and the
//! printed summary (the same lines and fields as the Python harness had, plus the
//! broker's persistence and the retained commands).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};

use super::end::EndState;
use super::observe::{Classified, HUNG_TASK_DEADLINE};
use super::run::Soak;

/// The invariant failures found in the accounting (the live checks add their own).
pub(super) fn accounting_failures(
    c: &Classified,
    regressions: usize,
    unknown_ids: usize,
) -> Vec<String> {
    let mut failures = Vec::new();
    if !c.missing_unexplained.is_empty() {
        failures.push(format!(
            "{} acknowledged command(s) got no final result",
            c.missing_unexplained.len()
        ));
    }
    if !c.duplicates.is_empty() {
        failures.push(format!(
            "{} command(s) got their final result twice without a restart in between: {}",
            c.duplicates.len(),
            first_ids(&c.duplicates)
        ));
    }
    if !c.conflicting.is_empty() {
        failures.push(format!(
            "{} command(s) got two different final results: {}",
            c.conflicting.len(),
            first_ids(&c.conflicting)
        ));
    }
    if regressions > 0 {
        failures.push(format!(
            "{regressions} non-final state(s) after a final result"
        ));
    }
    if unknown_ids > 0 {
        failures.push(format!(
            "{unknown_ids} task message(s) with an id we never sent"
        ));
    }
    failures
}

fn first_ids(ids: &[String]) -> String {
    let mut text = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        text += ", …";
    }
    text
}

/// An exit code as Python printed it: the number, or `None` when killed by a signal.
pub(super) fn code(code: Option<i32>) -> String {
    code.map_or("None".into(), |c| c.to_string())
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn joined<K: std::fmt::Display, V: std::fmt::Display>(map: &BTreeMap<K, V>, sep: &str) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Soak {
    pub(super) fn report(&mut self, end: &EndState) -> anyhow::Result<Value> {
        let c = &end.classified;
        let (regressions, unknown_ids, task_messages, cleared) = {
            let o = self.observer.lock().unwrap();
            (
                o.regressions.clone(),
                o.unknown_ids.clone(),
                o.task_messages,
                o.cleared_task_topics,
            )
        };
        for failure in accounting_failures(c, regressions.len(), unknown_ids.len()) {
            self.fail(failure);
        }
        let counters: BTreeMap<String, u64> = end
            .counters
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect();
        let total: u64 = counters.values().sum();
        let polls = counters.get("GET /cluster/resources").copied().unwrap_or(0);
        let duration = self.end_commands_at - self.started_at;
        let now = self.now();
        let date = std::process::Command::new("date")
            .arg("+%Y-%m-%d %H:%M:%S %Z")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut commands = serde_json::to_value(c)?;
        let commands_obj = commands.as_object_mut().expect("a struct");
        commands_obj.retain(|_, v| !v.is_array());
        let summary = json!({
            "date": date,
            "seed": self.args.seed,
            "binary": self.args.binary,
            "persistence": self.persistence,
            "retained_share": self.args.retained_share,
            "duration_s": (duration * 10.0).round() / 10.0,
            "proxmox_requests": total,
            "polls_cluster_resources": polls,
            "counters": counters,
            "commands": commands,
            "held_back": self.held,
            "missing": {
                "missing_probe": c.missing_probe,
                "missing_broker_crash": c.missing_broker_crash,
                "missing_bridge_restart": c.missing_bridge_restart,
                "missing_hung": c.missing_hung,
                "missing_unexplained": c.missing_unexplained,
            },
            "duplicates": c.duplicates,
            "conflicting": c.conflicting,
            "regressions": regressions,
            "unknown_ids": unknown_ids,
            "faults": self.faults,
            "broker_restarts": self.broker_restarts,
            "bridge_restarts": self.bridge_restarts,
            "rss_kb": self.rss.iter().map(|(t, pid, kb)| json!({"t": (t * 10.0).round() / 10.0, "pid": pid, "kb": kb})).collect::<Vec<_>>(),
            "final_bridge_state": end.final_state,
            "final_exit_code": end.final_exit,
            "convergence": end.convergence,
            "stuck_task_topics": end.stale_tasks,
            "final_stop_results_logged": end.final_stop_results,
            "task_messages": task_messages,
            "cleared_task_topics": cleared,
            "failures": self.failures,
        });
        std::fs::write(
            self.workdir().join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(
            self.workdir().join("commands.jsonl"),
        )?);
        for command in self.observer.lock().unwrap().commands.values() {
            writeln!(out, "{}", serde_json::to_string(command)?)?;
        }
        out.flush()?;
        self.print_summary(end, &counters, total, polls, duration, now);
        Ok(summary)
    }

    fn print_summary(
        &self,
        end: &EndState,
        counters: &BTreeMap<String, u64>,
        total: u64,
        polls: u64,
        duration: f64,
        now: f64,
    ) {
        let c = &end.classified;
        let _ = counters;
        let survived = self
            .broker_restarts
            .iter()
            .filter(|r| r.bridge_online_at.is_some())
            .count();
        let backs: Vec<String> = self
            .broker_restarts
            .iter()
            .map(|r| match (r.bridge_online_at, r.up_at) {
                (Some(online), Some(up)) => format!("{:.1} s", online - up),
                _ => "never".into(),
            })
            .collect();
        let exits: Vec<String> = self
            .bridge_restarts
            .iter()
            .map(|r| code(r.exit_code))
            .collect();
        let restart_kind = if self.persistence {
            "SIGTERM, persistence db kept"
        } else {
            "SIGKILL, persistence off"
        };
        let mut lines = vec![
            String::new(),
            "===== pve2mqtt soak summary =====".to_string(),
            format!(
                "duration            {:.1} min of commands and faults (+{:.0} s drain and checks), seed {}",
                duration / 60.0,
                now - self.end_commands_at,
                self.args.seed.unwrap_or(0)
            ),
            format!(
                "broker              Mosquitto, persistence {}",
                if self.persistence { "on" } else { "off" }
            ),
            format!("Proxmox requests    {total} served by the simulator, {polls} polls of /cluster/resources"),
            format!(
                "commands            {} published, {} acknowledged by the broker, {} not acknowledged (broker down; {} of them answered anyway); {} with the retain flag",
                c.sent, c.acked, c.not_acked, c.unacked_answered, c.retained_sent
            ),
            format!(
                "final results       {} of {} acknowledged commands; by state: {}",
                c.with_final,
                c.acked,
                joined(&c.by_state, " ")
            ),
            format!(
                "held back           {} random commands not published while the bridge reconnected after a restart (it has no session then; see the probes)",
                self.held
            ),
            format!("missing             {} unexplained (FAILURE if > 0)", c.missing_unexplained.len()),
            format!(
                "  expected, apart:  {} of {} probes published while the bridge had no subscription (clean session: nothing delivers them later)",
                c.missing_probe.len(),
                c.probes
            ),
            format!(
                "                    {} acknowledged < 0.5 s before the broker was stopped, never seen by the bridge (lost with the broker)",
                c.missing_broker_crash.len()
            ),
            format!(
                "                    {} in flight at the bridge restart (the stopping bridge does not publish their end; the new one does not know them)",
                c.missing_bridge_restart.len()
            ),
            format!(
                "                    {} on a task the simulator hangs (the bridge follows it for {HUNG_TASK_DEADLINE})",
                c.missing_hung.len()
            ),
            format!(
                "duplicates          {} (FAILURE if > 0); conflicting finals {} (FAILURE if > 0); identical re-deliveries after a restart {} (expected: retained task topics restored on the new broker)",
                c.duplicates.len(),
                c.conflicting.len(),
                c.replays_after_restart
            ),
            format!("fault commands      {}", joined(&c.fault_commands, ": ")),
            format!("faults injected     {}", joined(&self.faults, " ")),
            format!(
                "broker restarts     {}, survived {survived} ({restart_kind}; bridge back online after each: {})",
                self.broker_restarts.len(),
                backs.join(", ")
            ),
            format!(
                "bridge restarts     {} (SIGTERM exit codes {}; final SIGTERM exit code {})",
                self.bridge_restarts.len(),
                exits.join(", "),
                code(end.final_exit)
            ),
        ];
        for (i, r) in self.bridge_restarts.iter().enumerate() {
            lines.push(format!(
                "  restart #{}: stopping bridge logged {} final result(s) 'the bridge stopped while the task was running', {} reached MQTT; {} guest(s) left with a retained accepted/running task 8 s after the new bridge was online",
                i + 1,
                r.stop_results_logged,
                r.stop_results_published,
                r.stuck_after_restart.len()
            ));
            for entry in r.stuck_after_restart.iter().take(10) {
                lines.push(format!("    stuck: {entry}"));
            }
        }
        lines.push(format!(
            "  final stop: the bridge logged {} final result(s) for tasks still running (hung) as it stopped",
            end.final_stop_results
        ));
        let rss: Vec<u64> = self.rss.iter().map(|(_, _, kb)| *kb).collect();
        if let (Some(first), Some(last), Some(peak)) = (rss.first(), rss.last(), rss.iter().max()) {
            lines.push(format!(
                "bridge RSS          start {}, peak {}, end {}",
                mib(*first),
                mib(*peak),
                mib(*last)
            ));
            let mut per_pid: Vec<(u32, Vec<u64>)> = Vec::new();
            for (_, pid, kb) in &self.rss {
                match per_pid.iter_mut().find(|(p, _)| p == pid) {
                    Some((_, values)) => values.push(*kb),
                    None => per_pid.push((*pid, vec![*kb])),
                }
            }
            for (pid, values) in per_pid {
                let text: Vec<String> = values
                    .iter()
                    .map(|v| format!("{:.1}", *v as f64 / 1024.0))
                    .collect();
                lines.push(format!("  pid {pid:<8}      {} MiB", text.join(" ")));
            }
        }
        let converged = if end.convergence.mismatches.is_empty() {
            "converged to the simulator"
        } else {
            "NOT converged"
        };
        lines.push(format!(
            "guest states        {converged} ({} guests)",
            end.convergence.guests
        ));
        lines.push(format!(
            "stuck task topics   {} retained `.../task` still accepted/running with no task running in the simulator",
            end.stale_tasks.len()
        ));
        lines.push(format!(
            "bridge/state        ended '{}'",
            end.final_state.as_deref().unwrap_or("None")
        ));
        lines.push(format!(
            "result              {}",
            if self.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        ));
        for failure in &self.failures {
            lines.push(format!("  - {failure}"));
        }
        let lists: [(&str, &Vec<String>); 5] = [
            ("missing_unexplained", &c.missing_unexplained),
            ("missing_bridge_restart", &c.missing_bridge_restart),
            ("missing_hung", &c.missing_hung),
            ("missing_broker_crash", &c.missing_broker_crash),
            ("missing_probe", &c.missing_probe),
        ];
        for (key, entries) in lists {
            for entry in entries.iter().take(10) {
                lines.push(format!("  {key}: {entry}"));
            }
        }
        for entry in end.stale_tasks.iter().take(10) {
            lines.push(format!("  stuck: {entry}"));
        }
        let o = self.observer.lock().unwrap();
        for id in c.duplicates.iter().take(10) {
            lines.push(format!("  duplicate: {}", describe(o.commands.get(id))));
        }
        for id in c.conflicting.iter().take(10) {
            lines.push(format!("  conflicting: {}", describe(o.commands.get(id))));
        }
        for entry in o.regressions.iter().take(10) {
            lines.push(format!("  regression: {entry}"));
        }
        lines.push(format!(
            "details: {}/summary.json, commands.jsonl, events.log, bridge.log",
            self.workdir().display()
        ));
        println!("{}", lines.join("\n"));
    }
}

/// A command and every final it got, for a duplicate or conflict line.
fn describe(command: Option<&super::observe::Command>) -> String {
    let Some(c) = command else { return "?".into() };
    let finals: Vec<String> = c
        .finals
        .iter()
        .map(|f| {
            let state = serde_json::from_str::<Value>(&f.value)
                .ok()
                .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            format!(
                "{state}@{:.1}s{}",
                f.t,
                if f.retain { " (retained copy)" } else { "" }
            )
        })
        .collect();
    let retained = if c.retained {
        ", published retained"
    } else {
        ""
    };
    format!(
        "{} {} {}/{} sent {:.1}s{retained}: {}",
        c.id,
        c.action,
        c.kind,
        c.vmid,
        c.sent_at,
        finals.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_accounting_has_no_failures() {
        assert!(accounting_failures(&Classified::default(), 0, 0).is_empty());
    }

    #[test]
    fn every_broken_invariant_is_named() {
        let c = Classified {
            missing_unexplained: vec!["a".into()],
            duplicates: vec!["b".into()],
            conflicting: vec!["c".into(), "d".into()],
            ..Default::default()
        };
        let failures = accounting_failures(&c, 1, 2);
        assert_eq!(
            failures,
            [
                "1 acknowledged command(s) got no final result",
                "1 command(s) got their final result twice without a restart in between: b",
                "2 command(s) got two different final results: c, d",
                "1 non-final state(s) after a final result",
                "2 task message(s) with an id we never sent",
            ]
        );
    }
}
