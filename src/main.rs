//! The `pve2mqtt` binary: parses the command line, sets up logging, and hands over to
//! the library. Exit codes (SPEC §1): 0 clean stop, 2 bad config or usage, 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pve2mqtt::app::FatalConfigError;
use pve2mqtt::config::Config;

#[derive(Parser)]
#[command(
    name = "pve2mqtt",
    version,
    about = "Proxmox VE cluster state and control on MQTT, with Home Assistant discovery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run {
        /// TOML config file; may be left out when every required key is in the environment.
        #[arg(long, short, env = "PVE2MQTT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the config, reach Proxmox and the broker, print a report.
    Check {
        /// TOML config file, as for `run`.
        #[arg(long, short, env = "PVE2MQTT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The built-in Proxmox VE simulator.
    #[cfg(feature = "sim")]
    Sim(pve2mqtt::sim::SimArgs),
    /// Simulator + embedded MQTT broker + bridge in one process.
    #[cfg(feature = "demo")]
    Demo(pve2mqtt::demo::DemoArgs),
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    pve2mqtt::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => {
                let config = load(config)?;
                pve2mqtt::app::run(config, pve2mqtt::signal::shutdown()).await
            }
            Command::Check { config } => {
                let config = load(config)?;
                pve2mqtt::check::run(&config).await
            }
            #[cfg(feature = "sim")]
            Command::Sim(args) => {
                pve2mqtt::sim::run(args.into_options(), pve2mqtt::signal::shutdown()).await
            }
            #[cfg(feature = "demo")]
            Command::Demo(args) => pve2mqtt::demo::run(args, pve2mqtt::signal::shutdown()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<FatalConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref()).map_err(|e| FatalConfigError(e.to_string()).into())
}

/// glibc gives threads that allocate their own malloc arena (up to 8 per core), and memory
/// freed in one arena is not reused by another. Tokio's workers take turns building the
/// views, so free memory piled up in every arena and RSS grew well past the live heap.
/// Two arenas are plenty for a bridge that mostly waits on I/O. `MALLOC_ARENA_MAX` in the
/// environment still wins, for anyone tuning it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: runs first in main, before any other thread exists; mallopt only sets a
        // tuning parameter of the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
