//! The counters behind `GET /metrics` and `GET /healthz`: plain atomics and small maps that
//! the tasks bump as they work (one call per event, no locking on the hot path except the
//! per-endpoint and per-command maps, touched once per request or command), rendered in
//! the Prometheus text format on request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::publisher::PublishStats;

/// Everything the listener reports. Built once in `app::run_with`, shared by `Arc`.
pub struct Metrics {
    /// Three poll intervals: a cluster not polled within this is unhealthy.
    poll_limit: Duration,
    pub mqtt_connected: AtomicBool,
    /// ConnAcks so far; reconnects are the ones after the first.
    pub mqtt_sessions: AtomicU64,
    pub publish: Arc<PublishStats>,
    pub requests: Arc<RequestCounts>,
    clusters: Vec<Arc<PollStats>>,
}

/// One configured cluster's polls.
pub struct PollStats {
    started: Instant,
    /// The cluster id once resolved; the first configured URL until then.
    label: Mutex<String>,
    ok: AtomicU64,
    failed: AtomicU64,
    duration_micros: AtomicU64,
    /// Milliseconds after `started` of the last successful poll, plus one; 0 = never.
    last_ok: AtomicU64,
    /// Cluster views built and handed to the publisher (polls and rebuilds).
    views: AtomicU64,
    /// Guest rows of the answers built into views: reused from the last answer (the
    /// same row, not read again), and read (scanned or decoded).
    guest_rows: [AtomicU64; 2],
}

/// Proxmox API requests and failed ones, by endpoint (`GET /nodes/{node}/status`).
#[derive(Default)]
pub struct RequestCounts(Mutex<BTreeMap<String, [u64; 2]>>);

/// Final command results by action and result (`ok`, `failed`, `rejected`).
#[derive(Default, Debug)]
pub struct CommandCounts(Mutex<BTreeMap<(String, &'static str), u64>>);

/// Distinct actions counted by name at most; further ones (typos sent over MQTT) are
/// counted as `other`, so no sender can grow the map without bound.
const MAX_ACTIONS: usize = 64;

impl Metrics {
    /// `clusters`: the label of each configured cluster, in config order.
    pub fn new(
        clusters: &[String],
        poll_interval: Duration,
        publish: Arc<PublishStats>,
    ) -> Metrics {
        let started = Instant::now();
        Metrics {
            poll_limit: poll_interval * 3,
            mqtt_connected: AtomicBool::new(false),
            mqtt_sessions: AtomicU64::new(0),
            publish,
            requests: Default::default(),
            clusters: clusters
                .iter()
                .map(|label| Arc::new(PollStats::new(started, label)))
                .collect(),
        }
    }

    pub fn cluster(&self, index: usize) -> Arc<PollStats> {
        self.clusters[index].clone()
    }

    /// Healthy, or the reasons not (one sentence each), and the details for the JSON body.
    pub fn health(&self) -> (Vec<String>, serde_json::Value) {
        let mut reasons = Vec::new();
        let connected = self.mqtt_connected.load(Relaxed);
        if !connected {
            reasons.push("the MQTT link is down".to_string());
        }
        let mut clusters = serde_json::Map::new();
        for stats in &self.clusters {
            let label = stats.label();
            let age = stats.since_last_ok();
            if age > self.poll_limit {
                let polled = if stats.last_ok.load(Relaxed) == 0 {
                    "never polled successfully".to_string()
                } else {
                    format!("last polled {}s ago", age.as_secs())
                };
                reasons.push(format!(
                    "cluster {label}: {polled} (limit {}s, 3 poll intervals)",
                    self.poll_limit.as_secs()
                ));
            }
            let last = (stats.last_ok.load(Relaxed) != 0).then_some(age.as_secs_f64());
            clusters.insert(label, serde_json::json!({ "last_poll_age_seconds": last }));
        }
        let body = serde_json::json!({
            "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
            "reasons": reasons,
            "mqtt_connected": connected,
            "clusters": clusters,
        });
        (reasons, body)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        header(&mut out, "build_info", "gauge", "The running version.");
        let _ = writeln!(
            out,
            "pve2mqtt_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let sessions = self.mqtt_sessions.load(Relaxed);
        let simple = [
            (
                "mqtt_connected",
                "gauge",
                "1 while the MQTT link is up.",
                self.mqtt_connected.load(Relaxed) as u64,
            ),
            (
                "mqtt_connections_total",
                "counter",
                "MQTT sessions established (ConnAck).",
                sessions,
            ),
            (
                "mqtt_reconnects_total",
                "counter",
                "MQTT sessions after the first.",
                sessions.saturating_sub(1),
            ),
            (
                "mqtt_messages_published_total",
                "counter",
                "Messages handed to the MQTT client.",
                self.publish.messages.load(Relaxed),
            ),
            (
                "mqtt_messages_dropped_total",
                "counter",
                "Messages not published: the link was down or the client refused them.",
                self.publish.dropped.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in simple {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "pve2mqtt_{name} {value}");
        }

        header(
            &mut out,
            "polls_total",
            "counter",
            "Polls of /cluster/resources by result.",
        );
        for stats in &self.clusters {
            let cluster = escape(&stats.label());
            for (result, count) in [("ok", &stats.ok), ("failed", &stats.failed)] {
                let count = count.load(Relaxed);
                let _ = writeln!(
                    out,
                    "pve2mqtt_polls_total{{cluster=\"{cluster}\",result=\"{result}\"}} {count}"
                );
            }
        }
        header(
            &mut out,
            "views_total",
            "counter",
            "Cluster views built and compared by the publisher: one per successful poll, \
             plus a rebuild from the last answer for a command's result.",
        );
        for stats in &self.clusters {
            let cluster = escape(&stats.label());
            let count = stats.views.load(Relaxed);
            let _ = writeln!(out, "pve2mqtt_views_total{{cluster=\"{cluster}\"}} {count}");
        }
        header(
            &mut out,
            "guest_rows_total",
            "counter",
            "Guest rows of /cluster/resources built into views: reused (the same row as in \
             the last answer, whatever the order of its fields) or read.",
        );
        for stats in &self.clusters {
            let cluster = escape(&stats.label());
            for (outcome, count) in ["reused", "read"].iter().zip(&stats.guest_rows) {
                let count = count.load(Relaxed);
                let _ = writeln!(
                    out,
                    "pve2mqtt_guest_rows_total{{cluster=\"{cluster}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        }
        header(
            &mut out,
            "poll_duration_seconds",
            "summary",
            "Time of a poll: the request and building the view.",
        );
        for stats in &self.clusters {
            let cluster = escape(&stats.label());
            let seconds = stats.duration_micros.load(Relaxed) as f64 / 1e6;
            let count = stats.ok.load(Relaxed) + stats.failed.load(Relaxed);
            let _ = writeln!(
                out,
                "pve2mqtt_poll_duration_seconds_sum{{cluster=\"{cluster}\"}} {seconds}"
            );
            let _ = writeln!(
                out,
                "pve2mqtt_poll_duration_seconds_count{{cluster=\"{cluster}\"}} {count}"
            );
        }
        header(
            &mut out,
            "last_poll_age_seconds",
            "gauge",
            "Seconds since the last successful poll.",
        );
        for stats in self
            .clusters
            .iter()
            .filter(|s| s.last_ok.load(Relaxed) != 0)
        {
            let age = stats.since_last_ok().as_secs_f64();
            let _ = writeln!(
                out,
                "pve2mqtt_last_poll_age_seconds{{cluster=\"{}\"}} {age}",
                escape(&stats.label())
            );
        }

        let requests = self
            .requests
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        header(
            &mut out,
            "proxmox_requests_total",
            "counter",
            "Proxmox API requests by endpoint.",
        );
        for (endpoint, [count, _]) in &requests {
            let _ = writeln!(
                out,
                "pve2mqtt_proxmox_requests_total{{endpoint=\"{}\"}} {count}",
                escape(endpoint)
            );
        }
        header(
            &mut out,
            "proxmox_request_errors_total",
            "counter",
            "Proxmox API requests that failed, by endpoint.",
        );
        for (endpoint, [_, errors]) in &requests {
            let _ = writeln!(
                out,
                "pve2mqtt_proxmox_request_errors_total{{endpoint=\"{}\"}} {errors}",
                escape(endpoint)
            );
        }

        let commands = self
            .publish
            .commands
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        header(
            &mut out,
            "commands_total",
            "counter",
            "Commands by action and final result.",
        );
        for ((action, result), count) in &commands {
            let _ = writeln!(
                out,
                "pve2mqtt_commands_total{{action=\"{}\",result=\"{result}\"}} {count}",
                escape(action)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP pve2mqtt_{name} {help}\n# TYPE pve2mqtt_{name} {kind}"
    );
}

impl PollStats {
    fn new(started: Instant, label: &str) -> PollStats {
        PollStats {
            started,
            label: Mutex::new(label.to_string()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duration_micros: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            views: AtomicU64::new(0),
            guest_rows: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// One cluster view built and handed to the publisher.
    pub fn viewed(&self) {
        self.views.fetch_add(1, Relaxed);
    }

    /// The guest rows of one view: `reused` from the last answer, `read` again.
    pub fn guest_rows(&self, reused: usize, read: usize) {
        self.guest_rows[0].fetch_add(reused as u64, Relaxed);
        self.guest_rows[1].fetch_add(read as u64, Relaxed);
    }

    /// Guest rows reused and read so far (see [`PollStats::guest_rows`]).
    pub fn guest_rows_seen(&self) -> [u64; 2] {
        [0, 1].map(|i| self.guest_rows[i].load(Relaxed))
    }

    pub fn set_label(&self, label: &str) {
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_string();
    }

    fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One poll, successful or not, and how long it took.
    pub fn polled(&self, ok: bool, took: Duration) {
        self.duration_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        if ok {
            self.ok.fetch_add(1, Relaxed);
            let at = self.started.elapsed().as_millis() as u64 + 1;
            self.last_ok.store(at, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// Since the last successful poll, or since start when there was none.
    fn since_last_ok(&self) -> Duration {
        let at = Duration::from_millis(self.last_ok.load(Relaxed).saturating_sub(1));
        self.started.elapsed().saturating_sub(at)
    }
}

impl Default for PollStats {
    fn default() -> Self {
        PollStats::new(Instant::now(), "")
    }
}

impl RequestCounts {
    /// One request to `segments` (the path under `/api2/json`), and whether it failed.
    pub fn count(&self, method: &str, segments: &[&str], failed: bool) {
        let endpoint = endpoint_label(method, segments);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(endpoint).or_default();
        entry[0] += 1;
        entry[1] += failed as u64;
    }
}

impl CommandCounts {
    pub fn count(&self, action: &str, result: &'static str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let known = action.len() <= 32
            && action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && (map.len() < MAX_ACTIONS || map.contains_key(&(action.to_string(), result)));
        let action = if known { action } else { "other" };
        *map.entry((action.to_string(), result)).or_default() += 1;
    }
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`: the path with its names and ids
/// replaced, so there is one series per endpoint, not per guest.
pub fn endpoint_label(method: &str, segments: &[&str]) -> String {
    let parts: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(i, segment)| match i.checked_sub(1).map(|p| segments[p]) {
            Some("nodes") => "{node}",
            Some("qemu" | "lxc") => "{vmid}",
            Some("tasks") => "{upid}",
            Some("storage") => "{storage}",
            Some("snapshot") => "{snapshot}",
            _ if segment.bytes().all(|b| b.is_ascii_digit()) => "{id}",
            _ => segment,
        })
        .collect();
    format!("{method} /{}", parts.join("/"))
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_label_names_the_endpoint_not_the_guest() {
        let label = endpoint_label(
            "GET",
            &["nodes", "pve1", "qemu", "100", "status", "current"],
        );
        assert_eq!(label, "GET /nodes/{node}/qemu/{vmid}/status/current");
        assert_eq!(
            endpoint_label("GET", &["cluster", "resources"]),
            "GET /cluster/resources"
        );
    }

    #[test]
    fn actions_sent_as_garbage_are_counted_as_other() {
        let counts = CommandCounts::default();
        counts.count("start", "ok");
        counts.count("st\"art\n", "rejected");
        let map = counts.0.lock().unwrap();
        assert_eq!(map[&("start".to_string(), "ok")], 1);
        assert_eq!(map[&("other".to_string(), "rejected")], 1);
    }

    #[test]
    fn a_cluster_never_polled_within_three_intervals_is_unhealthy() {
        let metrics = Metrics::new(&["home".into()], Duration::ZERO, Default::default());
        metrics.mqtt_connected.store(true, Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let (reasons, body) = metrics.health();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("cluster home: never polled"),
            "{reasons:?}"
        );
        assert_eq!(body["status"], "unhealthy");
    }
}
