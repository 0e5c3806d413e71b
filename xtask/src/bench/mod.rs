//! `cargo xtask bench`: the performance benchmark (issue 5; figures in bench/RESULTS.md).
//!
//! Runs, per cluster size, the simulator (`pve2mqtt sim`), a private Mosquitto and the
//! bridge (`pve2mqtt run`) as separate processes of the RELEASE binary, and measures what
//! the bridge costs Proxmox, the broker and the host:
//! - Proxmox requests per fast-lane poll and per slow-lane round, by endpoint (the
//!   simulator's `/_sim/counters` and `/_sim/requests`);
//! - MQTT messages and bytes per poll in two worlds, side by side: the *frozen* world (the
//!   simulator started with `--frozen`: nothing moves, and 5 % of the guests change state
//!   between two polls in a second phase) and the *moving* world (the simulator's figures
//!   move on pvestatd's 10 s cadence, not aligned with the polls: counters grow, uptimes
//!   advance, cpu and memory wobble, usage drifts);
//! - bridge CPU time per poll (`/proc/<pid>/stat` utime+stime) and peak RSS (`VmHWM`);
//! - time from the bridge's start to its last discovery message, and whether every
//!   discovery payload reached the broker (a fresh subscriber counts the retained copies);
//! - command latency: MQTT publish on `…/set` -> the POST seen by the simulator, and ->
//!   `accepted` on the task topic; task end (`ok` on the task topic) -> the guest's new
//!   state on MQTT.

mod ci;
pub mod failover;
mod latency;
mod report;
mod size;
mod timeline;

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use report::{summarise_windows, Window};
use size::{slow_rounds, SizeRun};

pub const BASE: &str = "pve2mqtt";
pub const DISCOVERY_PREFIX: &str = "homeassistant";
/// The cluster id the simulator's generated world gets.
pub const CLUSTER: &str = "simcluster";
/// The default fast lane (`poll.interval`) and slow lane (`poll.slow_interval`) of the
/// benchmark, seconds (`--poll-interval`, `--slow-interval`).
pub const POLL_INTERVAL: f64 = 2.0;
pub const SLOW_INTERVAL: f64 = 20.0;
/// The simulator's lifecycle task length.
pub const TASK_DURATION_MS: u64 = 200;
pub const FAST_ROUTE: &str = "GET /cluster/resources";
/// Is this a slow-lane route? Every GET the bridge makes on a schedule except the fast
/// lane's (`/cluster/resources`, `/cluster/tasks`, the hourly `/access/permissions`), the
/// agent lane's and what commands and task follow-ups read (`/tasks/…`, `status/current`).
pub fn is_slow_route(route: &str) -> bool {
    route.starts_with("GET ")
        && route != FAST_ROUTE
        && route != "GET /cluster/tasks"
        && route != "GET /access/permissions"
        && !is_agent_route(route)
        && !route.contains("/tasks/")
        && !route.ends_with("/status/current")
}

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The pve2mqtt binary (scripts/bench.sh builds the release one) [default:
    /// target/release/pve2mqtt; with --ci, target/debug/pve2mqtt].
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Only 1x10 and 3x300.
    #[arg(long)]
    pub quick: bool,
    /// CI quick mode (scripts/test.sh, ~40 s): the debug binary, 1x10, 3 idle, 2 changed
    /// and 2 moving polls, 10 commands; exits 1 unless the report is complete and the fast
    /// lane makes at most 2 requests per poll. Its figures are not for publication.
    #[arg(long)]
    pub ci: bool,
    /// Comma-separated NODESxGUESTS, e.g. 1x10,10x5000.
    #[arg(long)]
    pub sizes: Option<String>,
    #[arg(long, default_value_t = 11)]
    pub idle_polls: usize,
    #[arg(long, default_value_t = 6)]
    pub changed_polls: usize,
    #[arg(long, default_value_t = 200)]
    pub commands: usize,
    /// Also write the raw results here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep each size's logs and configs.
    #[arg(long)]
    pub keep_logs: bool,
    /// Experiment: Mosquitto with `set_tcp_nodelay true` (default: Mosquitto's default, off).
    #[arg(long)]
    pub broker_nodelay: bool,
    /// Polls measured in the moving world (after one to let the thaw pass).
    #[arg(long, default_value_t = 10)]
    pub moving_polls: usize,
    #[command(flatten)]
    pub world: WorldArgs,
}

/// The simulated world and the bridge's polling.
#[derive(Args, Clone, Debug)]
pub struct WorldArgs {
    /// The bridge's `poll.interval`, seconds (issue 10's scenario: 5).
    #[arg(long, default_value_t = POLL_INTERVAL)]
    pub poll_interval: f64,
    /// The bridge's `poll.slow_interval`, seconds (the bridge's own default is 60).
    #[arg(long, default_value_t = SLOW_INTERVAL)]
    pub slow_interval: f64,
    /// Percentage of running guests in the generated world (issue 10's scenario: 90).
    #[arg(long, default_value_t = 85)]
    pub running: u32,
    /// The simulator's pvestatd cadence in the moving world (default: the simulator's, 10s).
    #[arg(long)]
    pub stats_interval: Option<String>,
}

pub(crate) fn log(message: &str) {
    eprintln!("[bench] {message}");
}

/// `1x10,3x300` as (nodes, guests) pairs.
pub fn parse_sizes(text: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    text.split(',')
        .map(|size| {
            let (nodes, guests) = size.trim().split_once('x').ok_or_else(|| {
                anyhow::anyhow!("size {size:?}: expected NODESxGUESTS, e.g. 3x300")
            })?;
            Ok((nodes.parse()?, guests.parse()?))
        })
        .collect()
}

pub async fn main(mut args: BenchArgs) -> anyhow::Result<i32> {
    if args.ci {
        args.sizes = None;
        args.idle_polls = ci::IDLE_POLLS;
        args.changed_polls = ci::CHANGED_POLLS;
        args.moving_polls = ci::MOVING_POLLS;
        args.commands = ci::COMMANDS;
    }
    let sizes = match (&args.sizes, args.quick, args.ci) {
        (_, _, true) => vec![ci::SIZE],
        (Some(sizes), _, _) => parse_sizes(sizes)?,
        (None, true, _) => vec![(1, 10), (3, 300)],
        (None, false, _) => vec![(1, 10), (3, 300), (10, 1000), (10, 5000)],
    };
    let (binary, build) = match (&args.binary, args.ci) {
        (Some(binary), _) => (binary.clone(), "cargo build --release"),
        (None, true) => (PathBuf::from("target/debug/pve2mqtt"), "cargo build"),
        (None, false) => (
            PathBuf::from("target/release/pve2mqtt"),
            "cargo build --release",
        ),
    };
    if !binary.is_file() {
        log(&format!(
            "{} not found: build it with `{build}`",
            binary.display()
        ));
        return Ok(2);
    }
    let binary = binary.canonicalize()?;
    let started = std::time::Instant::now();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M %Z")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pve2mqtt benchmark, {date}, commit {}, {cpus} CPUs, load average {load} at start; poll.interval {} s, poll.slow_interval {} s, simulator task length {TASK_DURATION_MS} ms, {} % of guests running, moving world on the simulator's {} cadence",
        if commit.is_empty() { "?" } else { &commit },
        args.world.poll_interval,
        args.world.slow_interval,
        args.world.running,
        args.world.stats_interval.as_deref().unwrap_or("10s"),
    );
    if args.ci {
        println!("CI quick mode (--ci): {}, the smallest size and a few polls; a check of the harness and the fast lane's budget, its figures are not for publication", binary.display());
    }
    let mut results = Vec::new();
    for (index, &(nodes, guests)) in sizes.iter().enumerate() {
        // Lone commands take ~0.4 s each: only at the largest size, to keep the run short.
        let isolated = index == sizes.len() - 1;
        let result = run_size(&binary, nodes, guests, &args, isolated).await?;
        report::print_tables(&result);
        results.push(result);
    }
    report::print_targets(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    log(&format!("total {:.0} s", started.elapsed().as_secs_f64()));
    if args.ci {
        let problems: Vec<String> = results.iter().flat_map(ci::check).collect();
        for problem in &problems {
            log(&format!("CI check failed: {problem}"));
        }
        if !problems.is_empty() {
            return Ok(1);
        }
        log("CI check passed: the report is complete and the fast lane within its budget (a debug build: figures not for publication)");
    }
    Ok(0)
}

async fn run_size(
    binary: &std::path::Path,
    nodes: u32,
    guests: u32,
    args: &BenchArgs,
    isolated: bool,
) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!(
        "pve2mqtt-bench-{nodes}x{guests}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    log(&format!(
        "=== {nodes} node(s) x {guests} guests (logs in {})",
        dir.display()
    ));
    let mut run = SizeRun::start(
        binary,
        (nodes, guests),
        &args.world,
        dir.clone(),
        args.broker_nodelay,
    )
    .await?;
    let result = measure(&mut run, args, isolated).await;
    run.teardown().await;
    if !args.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(run: &mut SizeRun, args: &BenchArgs, isolated: bool) -> anyhow::Result<Value> {
    run.start_bridge()?;
    run.wait_discovery().await?;
    run.wait_first_slow_round().await?;
    // Let rates settle (the first polls after start have no previous counters).
    run.timeline
        .wait_poll_after(run.origin, run.now(), run.poll_interval * 3.0)
        .await?;
    log("frozen world: idle polls");
    let mut idle = run.run_windows(args.idle_polls, 0.0).await?;
    log("frozen world: polls with 5 % of guests changed");
    let mut changed = run.run_windows(args.changed_polls, 0.05).await?;
    let frozen_peak = run.status_mb("VmHWM");
    log("moving world: the simulator's figures move on pvestatd's cadence");
    run.set_frozen(false).await?;
    // The first poll after the thaw sees every figure jump at once: not a steady poll.
    let mut moving = run.run_windows(args.moving_polls + 1, 0.0).await?;
    moving.remove(0);
    run.set_frozen(true).await?;
    let moving_peak = run.status_mb("VmHWM");
    log(&format!(
        "commands: {} in a burst (one every 50 ms)",
        args.commands
    ));
    run.run_commands("burst", args.commands, usize::MAX, 0.05)
        .await?;
    if isolated {
        log(&format!("commands: {} one at a time", args.commands));
        run.run_commands("isolated", args.commands, 1, 0.1).await?;
    }
    run.classify_slow(&mut idle);
    run.classify_slow(&mut changed);
    run.classify_slow(&mut moving);
    let windows = |ws: &[Window], f: &dyn Fn(&Window) -> bool| {
        summarise_windows(&ws.iter().filter(|w| f(w)).collect::<Vec<_>>())
    };
    let r = &mut run.result;
    // Idle polls in three kinds: the fast lane alone; with slow-lane requests served in the
    // same window (their decoding costs CPU); with the end of a slow round, whose view
    // republishes the nodes (their status/current figures are live).
    r.insert(
        "idle".into(),
        windows(&idle, &|w| !w.slow_view && w.slow_requests == 0),
    );
    r.insert(
        "idle_slow_requests".into(),
        windows(&idle, &|w| !w.slow_view && w.slow_requests > 0),
    );
    r.insert("idle_slow_view".into(), windows(&idle, &|w| w.slow_view));
    r.insert(
        "changed".into(),
        windows(&changed, &|w| !w.slow_view && !w.split),
    );
    // The two worlds side by side, on the same footing: every poll of the phase. (In the
    // moving world a broadcast that a slow-lane round's view follows is published then,
    // so leaving those windows out would drop a share of the broadcasts.)
    r.insert("frozen".into(), windows(&idle, &|_| true));
    r.insert("moving".into(), windows(&moving, &|_| true));
    // With polls faster than pvestatd's 10 s, some polls see a new broadcast and some
    // do not: both kinds, apart.
    let saw_broadcast = |w: &Window| w.messages.get("guest").copied().unwrap_or(0) > 0;
    r.insert(
        "moving_broadcast".into(),
        windows(&moving, &|w| saw_broadcast(w)),
    );
    r.insert(
        "moving_between".into(),
        windows(&moving, &|w| !saw_broadcast(w)),
    );
    r.insert("rss_peak_frozen_mb".into(), json!(frozen_peak));
    r.insert("rss_peak_moving_mb".into(), json!(moving_peak));
    r.insert(
        "changed_split_windows".into(),
        json!(changed.iter().filter(|w| w.split).count()),
    );
    // Fast lane alone: windows in which no slow-lane request was served.
    let pure: Vec<&Window> = idle
        .iter()
        .chain(&changed)
        .filter(|w| w.slow_requests == 0)
        .collect();
    let polls: u64 = pure.iter().map(|w| w.polls).sum();
    let mut fast: std::collections::BTreeMap<String, u64> = Default::default();
    for w in &pure {
        // The agent lane runs beside both lanes; it has its own row ("agent_lane").
        for (k, v) in w.counters.iter().filter(|(k, _)| !is_agent_route(k)) {
            *fast.entry(k.clone()).or_default() += v;
        }
    }
    let per_poll: serde_json::Map<String, Value> = if polls > 0 {
        fast.iter()
            .map(|(k, v)| (k.clone(), json!(*v as f64 / polls as f64)))
            .collect()
    } else {
        Default::default()
    };
    let polls_per_window: std::collections::BTreeSet<u64> =
        idle.iter().chain(&changed).map(|w| w.polls).collect();
    r.insert(
        "fast_lane".into(),
        json!({"windows": pure.len(), "polls": polls, "requests_per_poll": per_poll, "polls_per_window": polls_per_window}),
    );
    let rounds = slow_rounds(&run.timeline.snapshot());
    let complete = &rounds[..rounds.len().saturating_sub(1)]; // the last one may still be running
    let min_gap = complete
        .iter()
        .flat_map(|x| x.times.windows(2).map(|p| p[1] - p[0]))
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.min(g))));
    run.result.insert(
        "slow_lane".into(),
        json!({
            "rounds": complete.len(),
            "requests_per_round": complete.iter().map(|x| x.routes.values().sum::<u64>()).collect::<Vec<_>>(),
            "by_endpoint": complete.last().map(|x| json!(x.routes)).unwrap_or(json!({})),
            "round_duration_s": complete.iter().map(|x| x.end - x.start).collect::<Vec<_>>(),
            "min_gap_s": min_gap,
        }),
    );
    run.result.insert(
        "agent_lane".into(),
        agent_lane(&run.timeline.snapshot(), args.world.slow_interval),
    );
    run.count_retained().await?;
    run.read_logs();
    Ok(Value::Object(run.result.clone()))
}

/// A guest-agent or container-interfaces route (the agent lane's).
pub fn is_agent_route(route: &str) -> bool {
    route.contains("/agent/") || route.ends_with("/interfaces")
}

/// The agent lane's requests (guest agent and container interfaces, issue 12): how
/// many, by endpoint, and how many per slow-lane interval on average over the run.
fn agent_lane(entries: &[timeline::Entry], slow_interval: f64) -> Value {
    let agent: Vec<&timeline::Entry> = entries
        .iter()
        .filter(|e| is_agent_route(&e.route))
        .collect();
    let mut by_endpoint = std::collections::BTreeMap::<String, u64>::new();
    for e in &agent {
        *by_endpoint.entry(e.route.clone()).or_default() += 1;
    }
    let span = match (entries.first(), entries.last()) {
        (Some(first), Some(last)) => last.seen - first.seen,
        _ => 0.0,
    };
    let rounds = (span / slow_interval).max(1.0);
    json!({
        "requests": agent.len(),
        "span_s": span,
        "per_slow_round": agent.len() as f64 / rounds,
        "by_endpoint": by_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_nodes_x_guests() {
        assert_eq!(parse_sizes("1x10, 10x5000").unwrap(), [(1, 10), (10, 5000)]);
        assert!(parse_sizes("10").is_err());
        assert!(parse_sizes("ax10").is_err());
    }
}
