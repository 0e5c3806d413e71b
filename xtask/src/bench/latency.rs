//! The command phases of the bench: latency from an MQTT command to Proxmox and back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use super::report::{self, topic_class};
use super::size::{truthy, wall, SizeRun};
use super::timeline::Entry;
use super::{BASE, CLUSTER, TASK_DURATION_MS};
use crate::mqtt::Msg;

impl SizeRun {
    /// `count` lifecycle commands (stop a running guest, start a stopped one), each on a
    /// guest with no command in flight, so the per-guest busy rule never serialises them;
    /// guests are reused only when there are fewer than `count`.
    ///
    /// `burst`: a new command every `gap` seconds whatever is still running.
    /// `isolated`: one command at a time, the next `gap` seconds after the previous one
    /// finished (its `ok` and the guest's new state both seen): a lone command's latency.
    pub async fn run_commands(
        &mut self,
        mode: &str,
        count: usize,
        max_in_flight: usize,
        gap: f64,
    ) -> anyhow::Result<()> {
        self.timeline.set_period(Duration::from_millis(1)); // tight while commands run
        let (started, cpu_before) = (self.now(), self.cpu());
        let world = self.sim.get("/_sim/world").await?;
        let guests: Vec<Value> = world["guests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| {
                !truthy(&g["template"])
                    && !truthy(&g["hastate"])
                    && matches!(g["status"].as_str(), Some("running" | "stopped"))
            })
            .cloned()
            .collect();
        let mut by_vmid: BTreeMap<u64, Value> = guests
            .iter()
            .map(|g| (g["vmid"].as_u64().unwrap_or(0), g.clone()))
            .collect();
        let mut idle: std::collections::VecDeque<u64> = guests
            .iter()
            .map(|g| g["vmid"].as_u64().unwrap_or(0))
            .collect();
        let mut busy: BTreeMap<u64, usize> = BTreeMap::new();
        let mut pending_post: BTreeMap<u64, usize> = BTreeMap::new();
        let mut records: Vec<Record> = Vec::new();
        let mut msg_index = self.probe.len();
        let mut req_index = self.timeline.len();
        let (mut sent, mut next_send) = (0, self.now());
        let deadline = self.now() + 150.0;
        while (sent < count || !busy.is_empty()) && self.now() < deadline {
            if sent < count
                && !idle.is_empty()
                && busy.len() < max_in_flight
                && self.now() >= next_send
            {
                let vmid = idle.pop_front().expect("not empty");
                let g = &by_vmid[&vmid];
                let action = if g["status"] == "running" {
                    "stop"
                } else {
                    "start"
                };
                let id = format!("{mode}-{sent}");
                let topic = format!(
                    "{BASE}/{CLUSTER}/{}/{vmid}/set",
                    g["type"].as_str().unwrap_or("qemu")
                );
                let payload = json!({"action": action, "id": id}).to_string().into_bytes();
                let wall_pub = wall();
                let t_pub = self.probe.publish(&topic, payload).await?;
                records.push(Record::new(vmid, action, id, wall_pub, t_pub));
                busy.insert(vmid, records.len() - 1);
                pending_post.insert(vmid, records.len() - 1);
                sent += 1;
                next_send = t_pub + gap;
            }
            // POSTs seen by the simulator.
            let fresh: Vec<Entry> = self.timeline.since(req_index);
            req_index += fresh.len();
            for e in fresh {
                if e.method == "POST" && e.path.contains("/status/") {
                    if let Some(vmid) = e.path.split('/').nth(4).and_then(|v| v.parse().ok()) {
                        if let Some(i) = pending_post.remove(&vmid) {
                            records[i].t_post = Some(e.seen);
                        }
                    }
                }
            }
            // Task and state messages.
            let messages: Vec<Msg> = self.probe.since(msg_index);
            msg_index += messages.len();
            for m in messages {
                let class = topic_class(&m.topic);
                if class != "task" && class != "guest" {
                    continue;
                }
                let Some(vmid) = m
                    .topic
                    .split('/')
                    .nth(3)
                    .and_then(|v| v.parse::<u64>().ok())
                else {
                    continue;
                };
                let Some(&i) = busy.get(&vmid) else { continue };
                let Ok(body) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                let rec = &mut records[i];
                if class == "task" && body["id"] == rec.id.as_str() {
                    let state = body["state"].as_str().unwrap_or("").to_string();
                    rec.times.entry(state.clone()).or_insert(m.t);
                    if matches!(state.as_str(), "ok" | "failed" | "rejected") {
                        rec.final_state = Some(state);
                    }
                } else if class == "guest" && body["status"] == rec.expect && m.t > rec.t_pub {
                    rec.t_state.get_or_insert(m.t);
                }
                if let Some(final_state) = rec.final_state.clone() {
                    if rec.t_state.is_some() || final_state != "ok" {
                        busy.remove(&vmid);
                        if final_state == "ok" {
                            if let Some(g) = by_vmid.get_mut(&vmid) {
                                g["status"] = json!(rec.expect);
                            }
                        }
                        idle.push_back(vmid);
                        if max_in_flight == 1 {
                            next_send = self.now() + gap;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        self.timeline.set_period(Duration::from_millis(20));
        self.match_answered_posts(&mut records);
        let mut summary = summarise_commands(&records);
        // What the phase cost the bridge (the bench's own polling of the simulator and the
        // broker is not in it), and its peak RSS by the end of the phase.
        summary["seconds"] = json!(self.now() - started);
        summary["bridge_cpu_s"] = json!(self.cpu() - cpu_before);
        summary["rss_peak_mb"] = json!(self.status_mb("VmHWM"));
        let commands = self.result.entry("commands").or_insert_with(|| json!({}));
        commands[mode] = summary;
        Ok(())
    }

    /// `answered_after`: when the bridge logged the POST's answer (its own clock, µs).
    fn match_answered_posts(&self, records: &mut [Record]) {
        let text = std::fs::read(self.dir.join("bridge.stderr")).unwrap_or_default();
        let text = strip_ansi(&String::from_utf8_lossy(&text));
        let mut answered: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            if let Some(pair) = parse_answered(line) {
                answered.push(pair);
            }
        }
        for r in records {
            let path = format!("/{}/status/{}", r.vmid, r.action);
            let first = answered
                .iter()
                .filter(|(call, at)| call.ends_with(&path) && *at >= r.wall_pub)
                .map(|(_, at)| *at)
                .fold(f64::INFINITY, f64::min);
            if first.is_finite() {
                r.answered_after = Some(first - r.wall_pub);
            }
        }
    }
}

/// One command of the latency phases.
pub struct Record {
    pub vmid: u64,
    pub action: &'static str,
    pub id: String,
    pub expect: &'static str,
    pub wall_pub: f64,
    pub t_pub: f64,
    pub t_post: Option<f64>,
    pub answered_after: Option<f64>,
    /// First time each task state was seen.
    pub times: BTreeMap<String, f64>,
    pub t_state: Option<f64>,
    pub final_state: Option<String>,
}

impl Record {
    pub fn new(vmid: u64, action: &'static str, id: String, wall_pub: f64, t_pub: f64) -> Record {
        let expect = if action == "stop" {
            "stopped"
        } else {
            "running"
        };
        Record {
            vmid,
            action,
            id,
            expect,
            wall_pub,
            t_pub,
            t_post: None,
            answered_after: None,
            times: BTreeMap::new(),
            t_state: None,
            final_state: None,
        }
    }

    /// When the simulator served the POST, as tightly as measured: the earlier of the two
    /// upper bounds (seen by polling `/_sim/requests`; answered, in the bridge's log).
    pub fn post_time(&self) -> Option<f64> {
        let answered = self.answered_after.map(|a| self.t_pub + a);
        match (self.t_post, answered) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the simulator ends the task: the POST + the task's length (its lifecycle
    /// tasks last `task_duration` times 0.5 for a stop and 1.0 for a start).
    pub fn task_end(&self) -> Option<f64> {
        let factor = if self.action == "stop" { 0.5 } else { 1.0 };
        Some(self.post_time()? + TASK_DURATION_MS as f64 / 1000.0 * factor)
    }
}

pub fn summarise_commands(records: &[Record]) -> Value {
    let ms = |values: Vec<f64>| values.into_iter().map(|v| v * 1000.0).collect::<Vec<_>>();
    let post = ms(records
        .iter()
        .filter_map(|r| Some(r.t_post? - r.t_pub))
        .collect());
    let answered = ms(records.iter().filter_map(|r| r.answered_after).collect());
    let best = ms(records
        .iter()
        .filter_map(|r| Some(r.post_time()? - r.t_pub))
        .collect());
    let accepted = ms(records
        .iter()
        .filter_map(|r| Some(r.times.get("accepted")? - r.t_pub))
        .collect());
    let ok_to_state = ms(records
        .iter()
        .filter_map(|r| Some(r.t_state? - r.times.get("ok")?))
        .collect());
    let end_to_state = ms(records
        .iter()
        .filter_map(|r| Some(r.t_state? - r.task_end()?))
        .collect());
    let mut finals: BTreeMap<String, u64> = BTreeMap::new();
    for r in records {
        *finals
            .entry(r.final_state.clone().unwrap_or_else(|| "unfinished".into()))
            .or_default() += 1;
    }
    let rel =
        |t: Option<f64>, r: &Record| t.map(|t| ((t - r.t_pub) * 1000.0 * 100.0).round() / 100.0);
    json!({
        "sent": records.len(),
        "distinct_guests": records.iter().map(|r| r.vmid).collect::<BTreeSet<_>>().len(),
        "finals": finals,
        "pub_to_post_ms": report::stats(&post),
        "pub_to_accepted_ms": report::stats(&accepted),
        "pub_to_post_answered_ms": report::stats(&answered),
        "pub_to_post_best_ms": report::stats(&best),
        "ok_to_state_ms": report::stats(&ok_to_state),
        "task_end_to_state_ms": report::stats(&end_to_state),
        "records": records.iter().map(|r| json!({
            "vmid": r.vmid, "action": r.action, "id": r.id, "final": r.final_state,
            "t_post": rel(r.t_post, r), "t_state": rel(r.t_state, r),
            "t_accepted": rel(r.times.get("accepted").copied(), r), "t_ok": rel(r.times.get("ok").copied(), r),
            "answered_after": r.answered_after,
        })).collect::<Vec<_>>(),
    })
}

/// Removes the ANSI colour codes tracing writes to a terminal-less stderr sometimes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(call path, unix time)` from the client's debug line
/// `2026-12-06T13:45:01.123456Z DEBUG pve2mqtt::pve::client: Proxmox answered … call=POST /nodes/…`.
pub fn parse_answered(line: &str) -> Option<(String, f64)> {
    let (stamp, rest) = line.split_once(char::is_whitespace)?;
    let stamp = stamp.strip_suffix('Z')?;
    let rest = rest
        .trim_start()
        .strip_prefix("DEBUG pve2mqtt::pve::client: Proxmox answered")?;
    let call = rest.split("call=POST ").nth(1)?.split_whitespace().next()?;
    Some((call.to_string(), parse_utc(stamp)?))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]` (UTC) as seconds since the Unix epoch.
pub fn parse_utc(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, s) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_log_clock_is_read_as_utc() {
        assert_eq!(parse_utc("1970-01-01T00:00:00"), Some(0.0));
        assert_eq!(parse_utc("2026-12-06T13:45:01.5"), Some(1_796_564_701.5));
    }

    #[test]
    fn an_answered_post_line_gives_its_path_and_time() {
        let line = "\u{1b}[2m2026-12-06T13:45:01.500000Z\u{1b}[0m DEBUG pve2mqtt::pve::client: Proxmox answered status=200 call=POST /nodes/pve1/qemu/100/status/stop elapsed=3ms";
        let (call, at) = parse_answered(&strip_ansi(line)).unwrap();
        assert_eq!(call, "/nodes/pve1/qemu/100/status/stop");
        assert_eq!(at, 1_796_564_701.5);
        assert_eq!(
            parse_answered("2026-12-06T13:45:01Z  INFO pve2mqtt: started"),
            None
        );
    }

    #[test]
    fn a_post_time_is_the_tighter_of_the_two_bounds() {
        let mut r = Record::new(100, "stop", "b-0".into(), 0.0, 10.0);
        assert_eq!(r.post_time(), None);
        r.t_post = Some(10.004);
        r.answered_after = Some(0.002);
        assert_eq!(r.post_time(), Some(10.002));
        assert!((r.task_end().unwrap() - (10.002 + TASK_DURATION_MS as f64 / 2000.0)).abs() < 1e-9);
    }
}
