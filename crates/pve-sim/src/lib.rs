//! The built-in Proxmox VE simulator (`pve2mqtt sim`): a stateful fake of the Proxmox VE
//! API that the integration tests, the benchmarks and the demo run against.
//!
//! It is faithful to `reference/pve-api.md` rather than to any client: real envelopes and
//! typing (0/1 booleans, numbers as strings where Proxmox sends strings, random key order),
//! token authentication with per-token ACLs, reason phrases and `Connection: close` on
//! errors, 595 with an empty body for an offline node, the synchronous-vs-task failures of
//! the lifecycle actions, real UPIDs and task logs, vzdump with progress lines and new
//! backups, and figures that move with time.
//!
//! The world moves as a real one does: uptimes advance, traffic and I/O counters grow,
//! cpu and memory wobble, node and storage usage drift slowly. Like a real cluster,
//! `/cluster/resources` and `/nodes` show figures from the last pvestatd broadcast, which
//! happens every 10 s (at a random offset from the simulator's start, each broadcast up
//! to 0.5 s late), while `status/current` and node status are live. Tests that want live
//! figures everywhere set `stats_interval_ms: 0` with [`Sim::set_config`] (or
//! `POST /_sim/config`); tests that need a still world ask for it with
//! [`SimOptions::frozen`] (`pve2mqtt sim --frozen`) or `{"frozen": true}`.
//!
//! Layout:
//! - `world`: nodes, guests, storages, volumes; seed and generated worlds; figures as
//!   functions of time.
//! - `tasks`: UPIDs, the lifecycle rules, task logs (pure).
//! - `state`: the engine that applies task effects in time order, and [`Sim`].
//! - `api`: the Proxmox routes; `params`: parameter verification; `render`: the JSON the
//!   API returns; `rows`: flat rows written straight to JSON for the big lists;
//!   `respond`: envelopes, errors, reason phrases.
//! - `control`: the `/_sim` control API; `tls`: the generated CA and server certificate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use pve_sim::{start, SimOptions};
//! let sim = start(SimOptions::default()).await?;
//! println!("{} trusts {:?}", sim.base_url(), sim.fingerprint());
//! sim.world().set_node_online("pve", false)?;
//! sim.stop().await;
//! # Ok(()) }
//! ```

mod access;
mod agent;
mod api;
mod clock;
mod control;
mod health;
mod jobs;
mod join;
mod node_health;
mod nodepower;
mod params;
mod render;
mod replication;
mod respond;
mod rows;
mod snapshots;
mod state;
mod tasklist;
mod tasks;
mod tls;
mod world;

#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod motion_tests;
#[cfg(test)]
mod node_health_tests;
#[cfg(test)]
mod tasklist_tests;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;

pub use agent::{AgentConfig, AgentMode, AgentSetup};
pub use health::{CephCheck, CephPatch, NewReplicationJob, ReplicationPatch};
pub use state::{
    ConfigPatch, Fault, FaultKind, GuestPatch, NewGuest, RecordedRequest, Sim, SimError, Tags,
};
pub use tasks::{OverrideOutcome, TaskOverride};
pub use world::{GuestType, PowerState};

use access::Token;
use state::{RuntimeConfig, State};
use world::{PveVersion, World};

/// The token the simulator accepts with every privilege unless told otherwise.
pub const DEFAULT_TOKEN: &str = "root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001";

/// pveproxy closes a keep-alive connection after 100 requests.
const MAX_REQUESTS_PER_CONNECTION: u32 = 100;

/// pveproxy's handle timeout: idle keep-alive connections close after about 5 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the simulator runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Where to listen; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// HTTPS with a generated CA and server certificate (as pveproxy always does).
    pub tls: bool,
    /// Generated cluster size; `None` for both serves the seed world.
    pub nodes: Option<usize>,
    pub guests: Option<usize>,
    /// The full `USER@REALM!TOKENID=SECRET` accepted with every privilege.
    pub token: String,
    /// How long authentication failures take (real: 3 s).
    pub auth_failure_delay: Duration,
    /// How long proxied requests to an offline node hang before 595 (real: up to 30 s).
    pub proxy_offline_delay: Duration,
    /// Typical lifecycle task length (real: 1–5 s).
    pub task_duration: Duration,
    /// The pve-manager version to imitate, e.g. `9.1.5` (reference §7.9 switches).
    pub pve_version: String,
    /// How often the cluster-wide figures refresh (pvestatd: 10 s); zero = live.
    pub stats_interval: Duration,
    /// Every figure stays as it is at the start (uptimes, counters, cpu, memory, usage)
    /// until `POST /_sim/config {"frozen": false}`; state changes (start, stop, …) still
    /// happen.
    pub frozen: bool,
    /// Share of running guests in a generated world, in percent (default 85).
    pub running_percent: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls: true,
            nodes: None,
            guests: None,
            token: DEFAULT_TOKEN.to_string(),
            auth_failure_delay: Duration::from_secs(3),
            proxy_offline_delay: Duration::from_secs(5),
            task_duration: Duration::from_secs(1),
            pve_version: "9.1.5".to_string(),
            stats_interval: Duration::from_secs(10),
            frozen: false,
            running_percent: DEFAULT_RUNNING_PERCENT,
        }
    }
}

/// Share of running guests in a generated world, in percent.
pub const DEFAULT_RUNNING_PERCENT: u32 = 85;

/// Command-line options of `pve2mqtt sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8006")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated certificate (prints its fingerprint).
    #[arg(long)]
    pub tls: bool,
    /// Generate a cluster with this many nodes (pve1..pveN).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Generate this many guests (vmids from 100).
    #[arg(long)]
    pub guests: Option<usize>,
    /// API token accepted with every privilege (USER@REALM!TOKENID=SECRET).
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// Delay before answering an authentication failure.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub auth_delay: Duration,
    /// How long requests to an offline node hang before 595.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub offline_delay: Duration,
    /// Typical duration of a lifecycle task.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub task_duration: Duration,
    /// Proxmox VE version to imitate.
    #[arg(long, default_value = "9.1.5")]
    pub pve_version: String,
    /// How often the cluster-wide figures refresh, as pvestatd does (0s = live).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// A still world: uptimes, counters, cpu, memory and usage never change (state
    /// changes such as start and stop still happen).
    #[arg(long)]
    pub frozen: bool,
    /// Percentage of running guests in a generated world (0-100).
    #[arg(long, default_value_t = DEFAULT_RUNNING_PERCENT, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub running: u32,
}

impl SimArgs {
    pub fn into_options(self) -> SimOptions {
        SimOptions {
            listen: self.listen,
            tls: self.tls,
            nodes: self.nodes,
            guests: self.guests,
            token: self.token,
            auth_failure_delay: self.auth_delay,
            proxy_offline_delay: self.offline_delay,
            task_duration: self.task_duration,
            pve_version: self.pve_version,
            stats_interval: self.stats_interval,
            frozen: self.frozen,
            running_percent: self.running,
        }
    }
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    tls: bool,
    ca_pem: Option<String>,
    fingerprint: Option<String>,
    sim: Sim,
    server: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SimHandle {
    /// The address it listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (no `/api2/json`). An unspecified listen address
    /// (`0.0.0.0`) is given as loopback, so the URL is always usable locally.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        format!("{scheme}://{addr}")
    }

    /// PEM of the CA that signed the server certificate (what a user puts in `ca_file`).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// SHA-256 of the server certificate, `AB:CD:…`, as Proxmox shows it.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    /// The world, for in-process control (the same operations as `/_sim`).
    pub fn world(&self) -> Sim {
        self.sim.clone()
    }

    /// Stops listening and closes every connection.
    pub async fn stop(self) {
        self.server.shutdown();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "simulator server task ended abnormally");
        }
    }
}

/// A `hyper` timer on tokio, so the HTTP/1 server can close idle connections.
#[derive(Clone, Debug)]
struct TokioTimer;

struct TokioSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for TokioSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for TokioSleep {}

impl hyper::rt::Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep_until(
            deadline.into(),
        ))))
    }
}

/// Makes one [`ConnectionService`] per accepted connection.
#[derive(Clone)]
struct MakeConnection {
    sim: Sim,
    control: Router,
}

impl tower_service::Service<SocketAddr> for MakeConnection {
    type Response = ConnectionService;
    type Error = Infallible;
    type Future = std::future::Ready<Result<ConnectionService, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _peer: SocketAddr) -> Self::Future {
        std::future::ready(Ok(ConnectionService {
            sim: self.sim.clone(),
            control: self.control.clone(),
            served: Arc::new(AtomicU32::new(0)),
        }))
    }
}

/// Serves one connection: `/_sim` to the control router, the rest to the Proxmox API.
/// Its error type lets a `drop` fault abort the connection without a response.
#[derive(Clone)]
struct ConnectionService {
    sim: Sim,
    control: Router,
    /// Requests answered on this connection, for the 100-per-connection limit.
    served: Arc<AtomicU32>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = api::DropConnection;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, api::DropConnection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let sim = self.sim.clone();
        let mut control = self.control.clone();
        let served = Arc::clone(&self.served);
        Box::pin(async move {
            let request = request.map(Body::new);
            let mut response = if request.uri().path().starts_with("/_sim") {
                std::future::poll_fn(|cx| {
                    tower_service::Service::<Request<Body>>::poll_ready(&mut control, cx)
                })
                .await
                .unwrap_or_else(|never| match never {});
                control
                    .call(request)
                    .await
                    .unwrap_or_else(|never| match never {})
            } else {
                api::handle(&sim, request).await?
            };
            if served.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION {
                respond::close_after(&mut response);
            }
            Ok(response)
        })
    }
}

fn build_state(opts: &SimOptions, fingerprint: &str) -> anyhow::Result<State> {
    let version = PveVersion::parse(&opts.pve_version)
        .with_context(|| format!("invalid Proxmox VE version '{}'", opts.pve_version))?;
    let (full_id, secret) = Token::parse(&opts.token)
        .map_err(|error| anyhow::anyhow!("invalid token '{}': {error}", opts.token))?;
    let now = world::now();
    let world = match (opts.nodes, opts.guests) {
        (None, None) => World::seed(now, version, fingerprint),
        (nodes, guests) => {
            let nodes = nodes.unwrap_or(3);
            World::generate(
                (nodes, guests.unwrap_or(nodes * 10)),
                opts.running_percent,
                now,
                version,
                fingerprint,
            )
        }
    };
    let config = RuntimeConfig {
        auth_failure_delay: opts.auth_failure_delay,
        proxy_offline_delay: opts.proxy_offline_delay,
        task_duration: opts.task_duration,
        stats: {
            // The first broadcast came at a random point before the start, so broadcasts
            // fall anywhere within a client's poll cycle.
            let interval = opts.stats_interval;
            let offset = fastrand::f64() * interval.as_secs_f64();
            let mut clock = clock::StatsClock::moving(interval, now, offset, fastrand::u64(..));
            clock.set_frozen(opts.frozen, now);
            clock
        },
    };
    Ok(State::new(
        world,
        version,
        config,
        Token {
            full_id,
            secret,
            privileges: None,
        },
    ))
}

/// Binds, spawns the server and returns at once.
///
/// Accepted connections get `TCP_NODELAY`: otherwise Nagle's algorithm can hold the last
/// small segment of a response until the client's delayed ACK (~40 ms on Linux), and
/// commands measured against the simulator would pay a delay that is the simulator's.
pub async fn start(opts: SimOptions) -> anyhow::Result<SimHandle> {
    let certs = if opts.tls {
        Some(tls::SimCerts::generate()?)
    } else {
        None
    };
    let fingerprint = certs.as_ref().map(tls::SimCerts::fingerprint);
    let node_fingerprint = fingerprint
        .clone()
        .unwrap_or_else(|| tls::fingerprint_of(b"pve2mqtt simulator without TLS"));
    let sim = Sim::new(build_state(&opts, &node_fingerprint)?);

    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("binding the simulator to {}", opts.listen))?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let make = MakeConnection {
        sim: sim.clone(),
        control: control::router(sim.clone()),
    };
    let server = axum_server::Handle::new();
    let task = match &certs {
        Some(certs) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(certs.server_config()?);
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            let mut builder = axum_server::from_tcp(listener)
                .acceptor(acceptor)
                .handle(server.clone());
            builder
                .http_builder()
                .http1()
                .timer(TokioTimer)
                .header_read_timeout(IDLE_TIMEOUT);
            tokio::spawn(builder.serve(make))
        }
        None => {
            let mut builder = axum_server::from_tcp(listener)
                .acceptor(axum_server::accept::NoDelayAcceptor::new())
                .handle(server.clone());
            builder
                .http_builder()
                .http1()
                .timer(TokioTimer)
                .header_read_timeout(IDLE_TIMEOUT);
            tokio::spawn(builder.serve(make))
        }
    };
    Ok(SimHandle {
        addr,
        tls: opts.tls,
        ca_pem: certs.as_ref().map(|c| c.ca_pem.clone()),
        fingerprint,
        sim,
        server,
        task,
    })
}

/// Runs the simulator until `shutdown` completes (the CLI). Prints where it listens, the
/// token and, with TLS, the certificate fingerprint; writes nothing else.
pub async fn run(opts: SimOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let token = opts.token.clone();
    let handle = start(opts).await?;
    let base = handle.base_url();
    println!("PVE simulator listening on {base} (API {base}/api2/json, control {base}/_sim)");
    println!("token: {token}");
    if let Some(fingerprint) = handle.fingerprint() {
        println!("fingerprint: {fingerprint}");
    }
    shutdown.await;
    handle.stop().await;
    Ok(())
}
