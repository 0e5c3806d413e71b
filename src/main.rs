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
    /// Ask the running bridge's `/healthz` (container HEALTHCHECK): exit 0 when healthy.
    Health {
        /// Where the bridge listens (`http.listen`); 0.0.0.0 or [::] is asked on loopback.
        #[arg(long, env = "PVE2MQTT_HTTP__LISTEN", default_value = "127.0.0.1:9102")]
        listen: String,
    },
    /// The built-in Proxmox VE simulator.
    #[cfg(feature = "sim")]
    Sim(pve_sim::SimArgs),
    /// Simulator + embedded MQTT broker + bridge in one process.
    #[cfg(feature = "demo")]
    Demo(pve2mqtt_demo::DemoArgs),
}

fn main() -> ExitCode {
    tune_malloc();
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
            Command::Health { listen } => health(&listen).await,
            #[cfg(feature = "sim")]
            Command::Sim(args) => {
                pve_sim::run(args.into_options(), pve2mqtt::signal::shutdown()).await
            }
            #[cfg(feature = "demo")]
            Command::Demo(args) => pve2mqtt_demo::run(args, pve2mqtt::signal::shutdown()).await,
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

/// GET `/healthz` of the bridge at `listen`; prints its answer, fails unless 200.
async fn health(listen: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = listen
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("not an address and port: {listen}"))?;
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let url = format!(
        "http://{}/healthz",
        std::net::SocketAddr::new(ip, addr.port())
    );
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = response.status();
    println!("{}", response.text().await.unwrap_or_default());
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok(())
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref()).map_err(|e| FatalConfigError(e.to_string()).into())
}

/// Keeps glibc's malloc from holding memory the bridge no longer uses (with the
/// row-by-row decoding, `scripts/bench.sh` at 10 nodes / 5,000 guests went from a
/// 44.9 MB to a 25.0 MB peak RSS; see `bench/RESULTS.md`).
///
/// - One arena: glibc gives threads that allocate their own arena (up to 8 per core),
///   and memory freed in one is not reused by another. Tokio's workers take turns
///   building the views, so free memory piled up in every arena. The bridge mostly waits
///   on I/O; small allocations stay lock-free in the per-thread cache anyway.
/// - A fixed mmap threshold (128 KiB, glibc's initial value): by default glibc raises it
///   to the size of each large block freed, so after the first poll the 1.6 MB answer
///   body came from the heap, and freed heap memory under a live block stays resident.
///   Fixed, such blocks are mapped and unmapped; the fast lane allocates one per poll.
/// - Trim the heap top above 128 KiB (also made dynamic by default).
///
/// Each setting is skipped when its glibc variable (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) is set, for anyone tuning it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const SETTINGS: [(&str, libc::c_int, libc::c_int); 3] = [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 * 1024),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 128 * 1024),
    ];
    for (variable, parameter, value) in SETTINGS {
        if std::env::var_os(variable).is_none() {
            // SAFETY: runs first in main, before any other thread exists; mallopt only
            // sets a tuning parameter of the allocator.
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
