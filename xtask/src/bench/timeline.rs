//! The simulator's request log as a timeline: polls `/_sim/requests` and stamps each
//! recorded Proxmox request with the time it was first seen (an upper bound of when the
//! simulator served it, within the polling period).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::FAST_ROUTE;
use crate::sim::Simulator;

#[derive(Clone, Debug)]
pub struct Entry {
    pub seq: u64,
    pub route: String,
    pub method: String,
    pub path: String,
    /// Seconds since the bench's clock origin.
    pub seen: f64,
}

#[derive(Default)]
struct Data {
    entries: Vec<Entry>,
    poll_times: Vec<f64>,
}

/// The polling task and what it saw.
pub struct Timeline {
    data: Arc<Mutex<Data>>,
    period_us: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    pub fn spawn(sim: Arc<Simulator>, origin: Instant) -> Timeline {
        let data = Arc::new(Mutex::new(Data::default()));
        let period_us = Arc::new(AtomicU64::new(20_000));
        let stopping = Arc::new(AtomicBool::new(false));
        let (d, p, s) = (data.clone(), period_us.clone(), stopping.clone());
        let task = tokio::spawn(async move {
            let mut last_seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                let rows = match sim.get(&format!("/_sim/requests?since={last_seq}")).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        // The simulator is going away at the end, or closed a kept-alive
                        // connection after its 100 requests: try again.
                        if !s.load(Ordering::Relaxed) {
                            eprintln!("[bench] timeline: {error:#}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let t = origin.elapsed().as_secs_f64();
                if let Some(rows) = rows.as_array() {
                    let mut data = d.lock().unwrap();
                    for row in rows {
                        let entry = Entry {
                            seq: row["seq"].as_u64().unwrap_or(0),
                            route: text(&row["route"]),
                            method: text(&row["method"]),
                            path: text(&row["path"]),
                            seen: t,
                        };
                        if entry.route == FAST_ROUTE {
                            data.poll_times.push(t);
                        }
                        last_seq = last_seq.max(entry.seq);
                        data.entries.push(entry);
                    }
                }
                let period = p.load(Ordering::Relaxed);
                if period > 0 {
                    tokio::time::sleep(Duration::from_micros(period)).await;
                }
            }
        });
        Timeline {
            data,
            period_us,
            stopping,
            task,
        }
    }

    /// How often the log is read (20 ms normally, ~1 ms while commands run).
    pub fn set_period(&self, period: Duration) {
        self.period_us
            .store(period.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<Entry> {
        self.data.lock().unwrap().entries.clone()
    }

    pub fn len(&self) -> usize {
        self.data.lock().unwrap().entries.len()
    }

    pub fn since(&self, index: usize) -> Vec<Entry> {
        self.data
            .lock()
            .unwrap()
            .entries
            .get(index..)
            .map(<[Entry]>::to_vec)
            .unwrap_or_default()
    }

    pub fn polls_after(&self, t: f64) -> Vec<f64> {
        self.data
            .lock()
            .unwrap()
            .poll_times
            .iter()
            .copied()
            .filter(|seen| *seen > t)
            .collect()
    }

    /// When the first fast-lane poll after `t` was seen.
    pub async fn wait_poll_after(
        &self,
        origin: Instant,
        t: f64,
        timeout: f64,
    ) -> anyhow::Result<f64> {
        let deadline = origin.elapsed().as_secs_f64() + timeout;
        while origin.elapsed().as_secs_f64() < deadline {
            if let Some(first) = self.polls_after(t).first() {
                return Ok(*first);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::bail!("no fast-lane poll seen within {timeout} s")
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}
