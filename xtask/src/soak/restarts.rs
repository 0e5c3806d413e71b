//! Broker restarts (SIGKILL, or SIGTERM with persistence) and the bridge restart.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::observe::{self, BridgeRestart, BrokerRestart, BASE, CLUSTER, PROBE};
use super::report;
use super::run::{log, uniform, Event, Soak};

/// What the stopping bridge logs for a task it can no longer follow.
const STOPPED_TEXT: &str = "the bridge stopped while the task was running";

impl Soak {
    // --- restarts ----------------------------------------------------------------------------

    pub(super) async fn do_broker_restart(&mut self) -> anyhow::Result<()> {
        let down = uniform(&mut self.rng, 1.0, 4.0);
        let mut restart = BrokerRestart {
            killed_at: self.now(),
            signal: if self.persistence {
                "SIGTERM"
            } else {
                "SIGKILL"
            },
            ..Default::default()
        };
        if self.persistence {
            self.broker.stop(); // saves the db, as a supervisor's restart would
        } else {
            self.broker.kill();
        }
        self.event(&format!(
            "broker stopped by {} (down for {down:.1} s)",
            restart.signal
        ));
        // Commands keep flowing meanwhile: their publishes fail (not acknowledged).
        let end = Instant::now() + Duration::from_secs_f64(down);
        while Instant::now() < end {
            self.run_due_commands().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.broker.start_again()?;
        let up_at = self.now();
        restart.up_at = Some(up_at);
        self.event("broker up again");
        // Until the bridge is subscribed again the broker would accept commands and drop
        // them (no session): hold the random ones, send one probe to show what happens.
        self.holding = true;
        self.send_probe().await;
        restart.bridge_online_at = self.wait_online(up_at, 60.0).await?;
        self.holding = false;
        let number = self.broker_restarts.len() + 1;
        let back = restart.bridge_online_at;
        self.broker_restarts.push(restart);
        if back.is_none() {
            self.fail(format!(
                "the bridge did not come back online within 60 s of broker restart #{number}"
            ));
        }
        let back = back.map_or("never".into(), |t| format!("{:.1} s", t - up_at));
        log(&format!(
            "broker restart #{number} (down {down:.1} s, bridge online again after {back})"
        ));
        Ok(())
    }

    /// One command published while the bridge has no subscription (clean session, so a
    /// stale command is never replayed).
    pub(super) async fn send_probe(&mut self) {
        let live = self.live_guests();
        let vmid = live[self.rng.usize(..live.len())];
        self.send_command(vmid, "start", PROBE, false).await;
    }

    pub(super) async fn do_bridge_restart(&mut self) -> anyhow::Result<()> {
        let mut restart = BridgeRestart {
            rss_before_kb: self.sample_rss("before the bridge restart"),
            ..Default::default()
        };
        self.bridge_expected_down = true;
        self.holding = true;
        restart.sigterm_at = self.now();
        let in_flight: Vec<String> = {
            let observer = self.observer.lock().unwrap();
            observer
                .commands
                .values()
                .filter(|c| c.acked && c.finals.is_empty() && !c.states.is_empty())
                .map(|c| c.id.clone())
                .collect()
        };
        let code = self.bridge.terminate().await;
        let exited_at = self.now();
        restart.exited_at = Some(exited_at);
        restart.stop_results_logged = self.new_stop_failures();
        restart.exit_code = code;
        self.event(&format!(
            "bridge SIGTERM -> exit code {} after {:.1} s",
            report::code(code),
            exited_at - restart.sigterm_at
        ));
        if code != Some(0) {
            self.fail(format!(
                "the bridge exited with code {} on SIGTERM (expected 0)",
                report::code(code)
            ));
        }
        self.send_probe().await;
        self.bridge.start()?;
        let started_at = self.now();
        restart.started_at = Some(started_at);
        self.bridge_expected_down = false;
        log(&format!(
            "bridge restarted (SIGTERM exit code {}), new pid {}",
            report::code(code),
            self.bridge.pid().unwrap_or(0)
        ));
        restart.bridge_online_at = self.wait_online(started_at, 30.0).await?;
        self.holding = false;
        let online = restart.bridge_online_at.is_some();
        self.bridge_restarts.push(restart);
        if !online {
            self.fail("the restarted bridge did not come online within 30 s".into());
        }
        self.sample_rss("after the bridge restart");
        let index = self.bridge_restarts.len() - 1;
        self.schedule(self.now() + 8.0, Event::CheckInFlight(index, in_flight));
        Ok(())
    }

    /// How many more "the bridge stopped while the task was running" results the bridge
    /// has logged since the last call.
    pub(super) fn new_stop_failures(&mut self) -> usize {
        let text = std::fs::read(&self.bridge.log).unwrap_or_default();
        let total = String::from_utf8_lossy(&text).matches(STOPPED_TEXT).count();
        let new = total.saturating_sub(self.stop_failures_seen);
        self.stop_failures_seen = total;
        new
    }

    /// Commands in flight at the bridge restart: did their end reach MQTT, and what does
    /// their guest's retained `…/task` say now that their task is over?
    pub(super) async fn do_check_in_flight(
        &mut self,
        index: usize,
        in_flight: Vec<String>,
    ) -> anyhow::Result<()> {
        let running = self.hung_upids().await?;
        let retained = self
            .read_retained(&format!("{BASE}/{CLUSTER}/+/+/task"), 1.0)
            .await?;
        let (mut published, mut stuck) = (0, Vec::new());
        {
            let observer = self.observer.lock().unwrap();
            for c in in_flight.iter().filter_map(|id| observer.commands.get(id)) {
                if c.finals
                    .iter()
                    .any(|f| f.value.contains("the bridge stopped"))
                {
                    published += 1;
                }
                let topic = format!("{BASE}/{CLUSTER}/{}/{}/task", c.kind, c.vmid);
                let report: Value = retained
                    .get(&topic)
                    .and_then(|p| serde_json::from_slice(p).ok())
                    .unwrap_or(Value::Null);
                let state = report["state"].as_str().unwrap_or("");
                let upid_running = c.upid.as_ref().is_some_and(|u| running.contains(u));
                if report["id"] == c.id.as_str() && !observe::is_final(state) && !upid_running {
                    stuck.push(format!(
                        "{}/{} id={} {} retained state={state}",
                        c.kind, c.vmid, c.id, c.action
                    ));
                }
            }
        }
        let restart = &mut self.bridge_restarts[index];
        restart.stop_results_published += published;
        restart.stuck_after_restart.extend(stuck);
        let text = format!(
            "in flight at the bridge restart: {}; stuck retained: {:?}; stop results logged {}, published {}",
            in_flight.len(),
            restart.stuck_after_restart,
            restart.stop_results_logged,
            restart.stop_results_published
        );
        self.event(&text);
        Ok(())
    }
}
