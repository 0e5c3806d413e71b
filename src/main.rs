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
