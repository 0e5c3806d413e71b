//! `cargo xtask …`: the project's harnesses, on tokio and rumqttc.
//!
//! - `cargo xtask soak`: the real bridge against the simulator and a private Mosquitto for
//!   minutes, with random commands, faults and restarts (soak/RESULTS.md);
//! - `cargo xtask bench`: what the bridge costs Proxmox, the broker and the host, per
//!   cluster size (bench/RESULTS.md);
//! - `cargo xtask failover`: how long the bridge is away when its broker node dies, on a
//!   3-node NATS cluster (README, "Brokers").
//!
//! The scripts `scripts/soak.sh` and `scripts/bench.sh` build the bridge binary first.

mod bench;
mod mqtt;
mod procs;
mod sim;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "pve2mqtt's harnesses: soak and bench")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Soak test: minutes of random commands, faults and restarts; exit 1 if an invariant failed.
    Soak(soak::SoakArgs),
    /// Performance benchmark per cluster size; prints Markdown tables (bench/RESULTS.md).
    Bench(bench::BenchArgs),
    /// Broker failover: kill the NATS node the bridge uses; kill -> online, kill -> first command result.
    Failover(bench::failover::FailoverArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.task {
            Task::Soak(args) => soak::main(args).await,
            Task::Bench(args) => bench::main(args).await,
            Task::Failover(args) => bench::failover::main(args).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
