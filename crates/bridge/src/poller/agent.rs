//! The agent lane of one cluster: guest-agent data (addresses, OS, a VM's disk used)
//! for running guests, in its own task beside the fast and slow lanes, so that an agent
//! that takes Proxmox 3–8 s to give up on never delays either of them.
//!
//! - Who is asked: running VMs and running containers of the latest view (templates
//!   and stopped, paused or unreachable guests never). A VM costs up to 3 requests per
//!   visit (`network-get-interfaces`, `get-fsinfo`, and `get-osinfo` only after a
//!   (re)start); a container 1 (`…/lxc/{vmid}/interfaces`, PVE >= 8.1).
//! - Whether a VM has the agent configured: `/cluster/resources` does not say, and
//!   reading each VM's config would cost a request per VM as well. So the first call
//!   finds out: Proxmox answers 500 `No QEMU guest agent configured` at once (no 3 s
//!   ping) for a VM without the `agent` key; that VM is then asked again only after
//!   [`NOT_CONFIGURED_RETRY`] intervals or when it restarts (enabling the agent needs a
//!   restart to take effect anyway).
//! - Cadence: every guest at most once per `poll.agent_interval`; per round of the slow
//!   lane's interval at most `poll.agent_max_per_round` guests, the most overdue first,
//!   one call at a time, spread over the round. What is not done this round is done in
//!   the next ones.
//! - Failures: an agent that is not running or times out makes `agent` false and its
//!   guest waits 2, 4, 8, then 16 intervals ([`backoff`]); never a retry in a loop. A
//!   403 (the token lacks `VM.GuestAgent.Audit` on PVE 9, `VM.Monitor` on PVE 8) skips
//!   the guest quietly for [`FORBIDDEN_RETRY`]. Each call is bounded by [`CALL_TIMEOUT`].
//! - The lane sends its knowledge (`AgentData`) once per round, only when it changed;
//!   the poller merges it into the next view without a request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::model::{AgentData, AgentInfo, ClusterView};
use crate::pve::agent::{disk_used, lxc_addresses, vm_addresses};
use crate::pve::{GuestKind, PveClient, PveError};

/// `poll.agent_interval` and `poll.agent_max_per_round`.
#[derive(Clone, Debug)]
pub struct AgentCadence {
    /// Each guest at most once per this.
    pub interval: Duration,
    /// At most this many guests per round (0: the lane is off).
    pub max_per_round: usize,
}

impl Default for AgentCadence {
    fn default() -> Self {
        AgentCadence {
            interval: Duration::from_secs(300),
            max_per_round: 20,
        }
    }
}

/// Above Proxmox's own worst case (3 s ping + 5 s QGA timeout), so its error text
/// normally arrives first; bounds a call on a hung node.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A VM without the agent configured is asked again after this many intervals (or when
/// it restarts).
pub const NOT_CONFIGURED_RETRY: u32 = 12;
/// A guest the token may not ask about is asked again after this.
pub const FORBIDDEN_RETRY: Duration = Duration::from_secs(3600);
/// A cluster without the container interfaces endpoint (PVE < 8.1) is asked again after this.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(6 * 3600);

/// The wait after `failures` consecutive failures: 2, 4, 8, then 16 intervals.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    interval * 2u32.pow(failures.clamp(1, 4))
}

/// What the lane remembers per guest.
#[derive(Debug, Default)]
struct Memory {
    info: AgentInfo,
    /// Not before this (None: due now).
    next: Option<Instant>,
    failures: u32,
    /// The guest's `started` at the last visit: a restart makes it due at once.
    started: Option<u64>,
    /// The `started` for which the OS was read.
    os_started: Option<u64>,
}

/// One guest to visit.
#[derive(Clone, Debug)]
struct Visit {
    vmid: u32,
    kind: GuestKind,
    /// The view's own text: planning a round allocates nothing per guest.
    node: Arc<str>,
    started: Option<u64>,
}

/// How a visit ended, for the next due time.
enum Outcome {
    Answered,
    NotConfigured,
    Forbidden,
    Unsupported,
    Failed,
    /// Stopped meanwhile: nothing to learn now.
    Gone,
}

pub(super) async fn agent_lane(
    client: PveClient,
    cadence: AgentCadence,
    round: Duration,
    mut views: watch::Receiver<Option<Arc<ClusterView>>>,
    out: watch::Sender<Arc<AgentData>>,
    shutdown: CancellationToken,
) {
    let mut memory: HashMap<u32, Memory> = HashMap::new();
    // What was sent, shared with the watch: not a second copy of every guest's data.
    let mut sent: Arc<AgentData> = Arc::default();
    let mut lxc_unsupported_until: Option<Instant> = None;
    let mut told_forbidden = false;
    loop {
        // Wait for a view.
        let view = loop {
            if let Some(view) = views.borrow_and_update().clone() {
                break view;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = views.changed() => if changed.is_err() { return },
            }
        };
        let round_start = Instant::now();
        let lxc_ok = lxc_unsupported_until.is_none_or(|until| until <= round_start);
        // Whether any guest's info changed this round: only then is `AgentData` (every
        // guest's info, ~4,500 at 10x5000) built again and compared with what was sent.
        let mut changed = false;
        let visits = plan(
            &view,
            &mut memory,
            &cadence,
            round_start,
            lxc_ok,
            &mut changed,
        );
        drop(view);
        let spacing = (round / (2 * visits.len().max(1) as u32)).min(Duration::from_secs(2));
        for (i, visit) in visits.iter().enumerate() {
            if i > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(spacing) => {}
                }
            }
            let entry = memory.entry(visit.vmid).or_default();
            let before = entry.info.clone();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = visit_guest(&client, visit, entry) => outcome,
            };
            changed |= entry.info != before;
            let now = Instant::now();
            entry.started = visit.started;
            entry.next = Some(match outcome {
                Outcome::Answered | Outcome::Gone => {
                    entry.failures = 0;
                    now + cadence.interval
                }
                Outcome::NotConfigured => now + cadence.interval * NOT_CONFIGURED_RETRY,
                Outcome::Forbidden => {
                    if !told_forbidden {
                        info!(vmid = visit.vmid, "the API token may not read guest agents (VM.GuestAgent.Audit on PVE 9, VM.Monitor on PVE 8): agent data skipped");
                        told_forbidden = true;
                    }
                    now + FORBIDDEN_RETRY
                }
                Outcome::Unsupported => {
                    debug!(
                        "no container interfaces endpoint (PVE < 8.1): containers get no addresses"
                    );
                    lxc_unsupported_until = Some(now + UNSUPPORTED_RETRY);
                    now + UNSUPPORTED_RETRY
                }
                Outcome::Failed => {
                    entry.failures = entry.failures.saturating_add(1);
                    let wait = backoff(cadence.interval, entry.failures);
                    debug!(
                        vmid = visit.vmid,
                        failures = entry.failures,
                        ?wait,
                        "guest agent did not answer: backing off"
                    );
                    now + wait
                }
            });
        }
        if changed {
            let data: AgentData = memory
                .iter()
                .filter(|(_, m)| m.info != AgentInfo::default())
                .map(|(vmid, m)| (*vmid, m.info.clone()))
                .collect();
            if data != *sent {
                sent = Arc::new(data);
                let _ = out.send(sent.clone());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(round_start + round) => {}
        }
    }
}

/// Syncs the memory with the view (guests gone are forgotten; guests not running lose
/// their addresses and `agent`) and picks this round's visits: running guests that are
/// due (or restarted), the most overdue first, at most `max_per_round`. Sets `changed`
/// when a guest's info was dropped or cleared.
fn plan(
    view: &ClusterView,
    memory: &mut HashMap<u32, Memory>,
    cadence: &AgentCadence,
    now: Instant,
    lxc_ok: bool,
    changed: &mut bool,
) -> Vec<Visit> {
    memory.retain(|vmid, m| {
        let keep = view.guests.contains_key(vmid);
        *changed |= !keep && m.info != AgentInfo::default();
        keep
    });
    let mut due: Vec<(Option<Instant>, Visit)> = Vec::new();
    for guest in view.guests.values() {
        let running = &*guest.status == "running" && !guest.template;
        if !running {
            if let Some(m) = memory.get_mut(&guest.vmid) {
                *changed |= m.info.responding.is_some() || !m.info.ip_addresses.is_empty();
                m.info.responding = None;
                m.info.ip_addresses.clear();
                m.next = None;
                m.failures = 0;
            }
            continue;
        }
        if guest.kind == GuestKind::Lxc && !lxc_ok {
            continue;
        }
        let m = memory.get(&guest.vmid);
        let restarted = m.is_some_and(|m| m.started.is_some() && m.started != guest.started);
        let next = m.and_then(|m| m.next);
        if restarted || next.is_none_or(|at| at <= now) {
            due.push((
                if restarted { None } else { next },
                Visit {
                    vmid: guest.vmid,
                    kind: guest.kind,
                    node: Arc::clone(&guest.node),
                    started: guest.started.get(),
                },
            ));
        }
    }
    // Never-asked and restarted first, then the most overdue; stable for equals.
    due.sort_by_key(|(next, _)| *next);
    // Copied out, not collected from `due.into_iter()`: that collection reuses `due`'s
    // buffer (every running guest, ~0.5 MB at 5,000) for the few visits, and the round
    // holds them for its whole length (issue 10).
    due.iter()
        .take(cadence.max_per_round)
        .map(|(_, visit)| visit.clone())
        .collect()
}

/// A call bounded by [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, PveError>>,
) -> Result<T, PveError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(PveError::Timeout {
            url: "guest agent call".into(),
        }),
    }
}

/// How an error ends a visit.
fn classify(err: &PveError) -> Outcome {
    match err {
        PveError::Forbidden { .. } => Outcome::Forbidden,
        PveError::Api { status: 501, .. } => Outcome::Unsupported,
        PveError::Api {
            status: 500,
            reason,
            ..
        } if reason.contains("No QEMU guest agent configured") => Outcome::NotConfigured,
        // `VM 100 is not running`: stopped since the view was built.
        PveError::Api {
            status: 500,
            reason,
            ..
        } if reason.starts_with("VM ") && reason.ends_with(" is not running") => Outcome::Gone,
        _ => Outcome::Failed,
    }
}

async fn visit_guest(client: &PveClient, visit: &Visit, memory: &mut Memory) -> Outcome {
    let (node, vmid) = (&*visit.node, visit.vmid);
    let info = &mut memory.info;
    if visit.kind == GuestKind::Lxc {
        return match bounded(client.lxc_interfaces(node, vmid)).await {
            Ok(rows) => {
                info.ip_addresses = rows.as_deref().map(lxc_addresses).unwrap_or_default();
                Outcome::Answered
            }
            Err(err) => {
                debug!(vmid, error = %err, "container interfaces");
                classify(&err)
            }
        };
    }
    // The addresses first: the cheapest way to learn whether the agent is there at all.
    let interfaces = match bounded(client.agent_interfaces(node, vmid)).await {
        Ok(interfaces) => interfaces,
        Err(err) => {
            debug!(vmid, error = %err, "guest agent network-get-interfaces");
            let outcome = classify(&err);
            match outcome {
                // Last known addresses, OS and disk stay; the agent is reported down.
                Outcome::Failed => info.responding = Some(false),
                _ => {
                    info.responding = None;
                    info.ip_addresses.clear();
                }
            }
            return outcome;
        }
    };
    info.responding = Some(true);
    info.ip_addresses = vm_addresses(&interfaces);
    match bounded(client.agent_fsinfo(node, vmid)).await {
        Ok(filesystems) => {
            if let Some(used) = disk_used(&filesystems) {
                info.disk_used = Some(used);
            }
        }
        Err(err) => {
            debug!(vmid, error = %err, "guest agent get-fsinfo");
            // The agent answered a moment ago: a command it refuses (a blocklist) is
            // not a reason to call it down; a timeout is.
            if matches!(classify(&err), Outcome::Failed) && is_timeout(&err) {
                info.responding = Some(false);
                return Outcome::Failed;
            }
        }
    }
    if memory.os_started != visit.started || info.os.is_none() {
        match bounded(client.agent_osinfo(node, vmid)).await {
            Ok(os) => {
                info.os = os.label();
                memory.os_started = visit.started;
            }
            Err(err) => {
                debug!(vmid, error = %err, "guest agent get-osinfo");
                if is_timeout(&err) {
                    info.responding = Some(false);
                    return Outcome::Failed;
                }
            }
        }
    }
    Outcome::Answered
}

/// Proxmox's `… failed - got timeout`, or our own bound.
fn is_timeout(err: &PveError) -> bool {
    match err {
        PveError::Timeout { .. } => true,
        PveError::Api { reason, .. } => {
            reason.ends_with("got timeout") || reason.contains("agent is not running")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view of `n` running VMs (vmids from 100) and one stopped container.
    fn view(n: u32) -> ClusterView {
        let mut rows = vec![
            serde_json::json!({"id": "node/pve", "type": "node", "node": "pve", "status": "online"}),
        ];
        for vmid in 100..100 + n {
            rows.push(
                serde_json::json!({"id": format!("qemu/{vmid}"), "type": "qemu", "vmid": vmid,
                "node": "pve", "status": "running", "uptime": 100}),
            );
        }
        rows.push(serde_json::json!({"id": "lxc/999", "type": "lxc", "vmid": 999, "node": "pve", "status": "stopped"}));
        let rows: Vec<crate::pve::Resource> =
            serde_json::from_value(serde_json::Value::Array(rows)).unwrap();
        crate::model::tests::first_view("c", "", &rows)
    }

    #[test]
    fn a_rounds_visits_hold_room_for_the_cap_not_for_every_running_guest() {
        let cadence = AgentCadence {
            interval: Duration::from_secs(300),
            max_per_round: 3,
        };
        let visits = plan(
            &view(2_000),
            &mut HashMap::new(),
            &cadence,
            Instant::now(),
            true,
            &mut false,
        );
        assert_eq!(visits.len(), 3);
        // The round keeps them for its whole length.
        assert!(
            visits.capacity() <= 3,
            "room for {} visits",
            visits.capacity()
        );
        // The node text is the view's own, not a copy per guest.
        assert_eq!(&*visits[0].node, "pve");
    }

    #[test]
    fn a_round_visits_at_most_the_cap_most_overdue_first_and_never_stopped_guests() {
        let cadence = AgentCadence {
            interval: Duration::from_secs(300),
            max_per_round: 20,
        };
        let view = view(50);
        let mut memory = HashMap::new();
        let now = Instant::now();
        let first = plan(&view, &mut memory, &cadence, now, true, &mut false);
        assert_eq!(first.len(), 20);
        assert!(
            first.iter().all(|v| v.vmid != 999),
            "a stopped container is not asked"
        );
        // The first 20 were visited: the next round takes the 30 never asked, 20 of them.
        for visit in &first {
            let m = memory.entry(visit.vmid).or_default();
            m.next = Some(now + cadence.interval);
            m.started = visit.started;
        }
        let second = plan(
            &view,
            &mut memory,
            &cadence,
            now + Duration::from_secs(60),
            true,
            &mut false,
        );
        assert_eq!(second.len(), 20);
        assert!(second.iter().all(|v| v.vmid >= 120));
        // Nobody is due again before the interval is up.
        for visit in &second {
            memory.entry(visit.vmid).or_default().next = Some(now + cadence.interval);
        }
        let third = plan(
            &view,
            &mut memory,
            &cadence,
            now + Duration::from_secs(120),
            true,
            &mut false,
        );
        assert_eq!(third.len(), 10);
        let fourth = plan(
            &view,
            &mut memory,
            &cadence,
            now + Duration::from_secs(180),
            true,
            &mut false,
        );
        assert_eq!(fourth.len(), 10, "the last ten were never marked visited");
    }

    #[test]
    fn a_plan_says_when_it_dropped_or_cleared_what_a_guest_had_told() {
        let cadence = AgentCadence::default();
        let view = view(2);
        let now = Instant::now();
        let told = || Memory {
            info: AgentInfo {
                responding: Some(true),
                ip_addresses: vec!["192.0.2.1".into()],
                ..AgentInfo::default()
            },
            next: Some(now + cadence.interval),
            ..Memory::default()
        };
        // Running guests that told something and are not due: nothing changes.
        let mut memory = HashMap::from([(100, told()), (101, told())]);
        let mut changed = false;
        plan(&view, &mut memory, &cadence, now, true, &mut changed);
        assert!(!changed);
        // A stopped guest loses its addresses; a gone one is forgotten.
        for vmid in [999, 5000] {
            let mut memory = HashMap::from([(vmid, told())]);
            let mut changed = false;
            plan(&view, &mut memory, &cadence, now, true, &mut changed);
            assert!(changed, "guest {vmid}");
            assert!(memory
                .get(&vmid)
                .is_none_or(|m| m.info.ip_addresses.is_empty()));
        }
    }

    #[test]
    fn backoff_doubles_up_to_sixteen_intervals() {
        let i = Duration::from_secs(300);
        assert_eq!(backoff(i, 1), i * 2);
        assert_eq!(backoff(i, 2), i * 4);
        assert_eq!(backoff(i, 3), i * 8);
        assert_eq!(backoff(i, 4), i * 16);
        assert_eq!(backoff(i, 40), i * 16);
    }

    #[test]
    fn proxmoxs_agent_errors_are_told_apart() {
        let api = |reason: &str| PveError::Api {
            status: 500,
            reason: reason.into(),
            errors: None,
        };
        assert!(matches!(
            classify(&api("No QEMU guest agent configured")),
            Outcome::NotConfigured
        ));
        assert!(matches!(
            classify(&api("VM 100 is not running")),
            Outcome::Gone
        ));
        assert!(matches!(
            classify(&api("QEMU guest agent is not running")),
            Outcome::Failed
        ));
        assert!(matches!(
            classify(&api(
                "VM 100 qga command 'guest-get-fsinfo' failed - got timeout"
            )),
            Outcome::Failed
        ));
        assert!(matches!(
            classify(&PveError::Forbidden {
                reason: "Permission check failed (/vms/100, VM.Monitor)".into()
            }),
            Outcome::Forbidden
        ));
    }
}
