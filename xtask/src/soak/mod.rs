//! `cargo xtask soak`: the real bridge binary against the simulator and a private
//! Mosquitto, for minutes of wall time, with random commands, random Proxmox faults,
//! broker restarts and one bridge restart (issue 4; with a persistent broker, issue 9).
//!
//! Why not a cargo test: it runs for minutes, restarts processes by PID (the broker, the
//! bridge itself) and measures the bridge's RSS from /proc.
//!
//! What it checks (exit status 1 if any fails):
//! - every command whose publish the broker acknowledged (QoS 1 PUBACK) gets exactly one
//!   final result (`ok`, `failed` or `rejected`) on its guest's retained `…/task` topic;
//!   commands that may legitimately have none are counted apart, each with its reason
//!   (sent while the bridge had no subscription, in flight at the bridge restart, a task the
//!   simulator was told to hang);
//! - no command id gets two different final results (a retained copy included), and an
//!   identical final result is delivered again only after a broker or bridge restart;
//!   no id shows a non-final state after its final;
//! - the bridge never exits on its own, and stops with exit code 0 on SIGTERM;
//! - the bridge comes back `online` after every broker restart and after its own restart,
//!   and `pve2mqtt/bridge/state` is `online` at the end;
//! - at the end, every guest's retained state shows the node and power state the simulator
//!   has (the bridge converged after all the faults).

mod end;
mod faults;
mod observe;
mod report;
mod restarts;
mod run;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use run::Soak;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Persistence {
    On,
    Off,
    Both,
}

#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// The pve2mqtt binary (scripts/soak.sh builds it).
    #[arg(long, default_value = "target/debug/pve2mqtt")]
    pub binary: PathBuf,
    /// Minutes of commands and faults.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// 2 minutes, broker restarts every 40 s.
    #[arg(long)]
    pub quick: bool,
    /// CI mode: --quick for 1.5 minutes, against a broker with persistence on and with
    /// retained commands, as the field runs (the Home Assistant Mosquitto add-on).
    #[arg(long)]
    pub ci: bool,
    /// Mosquitto persistence: `on` as in the Home Assistant add-on (restarts by SIGTERM keep
    /// retained messages), `off` (restarts by SIGKILL lose them), or `both`, one after the other.
    #[arg(long, value_enum, default_value_t = Persistence::On)]
    pub persistence: Persistence,
    /// Commands per second (mean).
    #[arg(long, default_value_t = 3.0)]
    pub rate: f64,
    /// Share of random commands published with the retain flag, as users do by mistake.
    #[arg(long, default_value_t = 0.05)]
    pub retained_share: f64,
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    #[arg(long, default_value_t = 60)]
    pub guests: u32,
    /// Seconds between broker restarts.
    #[arg(long, default_value_t = 90.0)]
    pub broker_every: f64,
    /// Tasks the simulator hangs (default 2, quick 1).
    #[arg(long)]
    pub hangs: Option<u32>,
    /// Max seconds to wait for the last results.
    #[arg(long, default_value_t = 45.0)]
    pub drain: f64,
    /// Replays the same schedule of commands and faults.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where logs and summary.json go (default: a new temporary directory).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Print every event.
    #[arg(long)]
    pub verbose: bool,
}

impl SoakArgs {
    /// Applies --ci and --quick, and picks a seed.
    fn resolved(mut self) -> SoakArgs {
        if self.ci {
            self.quick = true;
            self.persistence = Persistence::On;
        }
        if self.quick {
            self.minutes = if self.ci { 1.5 } else { 2.0 };
            self.broker_every = 40.0;
        }
        self.hangs.get_or_insert(if self.quick { 1 } else { 2 });
        self.seed.get_or_insert_with(|| fastrand::u64(1..1_000_000));
        self
    }
}

/// Runs the soak once per persistence setting; the process exit code.
pub async fn main(args: SoakArgs) -> anyhow::Result<i32> {
    let args = args.resolved();
    if !args.binary.is_file() {
        eprintln!(
            "no executable at {}: build it first (scripts/soak.sh does)",
            args.binary.display()
        );
        return Ok(2);
    }
    let settings: &[bool] = match args.persistence {
        Persistence::On => &[true],
        Persistence::Off => &[false],
        Persistence::Both => &[false, true],
    };
    let root = match &args.workdir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "pve2mqtt-soak-{}-{}",
            args.seed.unwrap_or(0),
            std::process::id()
        )),
    };
    let mut failed = Vec::new();
    for &persistence in settings {
        let workdir = if settings.len() > 1 {
            root.join(if persistence {
                "persistence-on"
            } else {
                "persistence-off"
            })
        } else {
            root.clone()
        };
        std::fs::create_dir_all(&workdir)?;
        let mut soak = Soak::start(args.clone(), persistence, workdir).await?;
        let result = soak.run_all().await;
        soak.cleanup().await;
        result?;
        if !soak.failures.is_empty() {
            failed.push(if persistence {
                "persistence on"
            } else {
                "persistence off"
            });
        }
    }
    if settings.len() > 1 {
        let verdict = if failed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({})", failed.join(", "))
        };
        println!("both runs: {verdict}");
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}
