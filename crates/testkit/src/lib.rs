//! Test kit for pve2mqtt's integration tests and harnesses: a private Mosquitto on a free
//! port (started and stopped by PID, optionally with persistence), a private NATS cluster
//! with its MQTT gateway (nodes killed and restarted by PID), free ports, and an
//! MQTT probe that records what a subscriber really receives (topics, payloads, retain
//! flags), and child processes stopped by PID like a service manager does.
//!
//! Nothing here knows the bridge or the simulator, and nothing assumes the test harness:
//! the fallible steps return `Result` (`Mosquitto::builder().spawn()`), and the
//! convenience forms that tests use panic with a message that says what failed.

mod mosquitto;
mod nats;
mod probe;
mod process;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use mosquitto::{Mosquitto, MosquittoBuilder, PERSISTENCE_ENV};
pub use nats::{NatsCluster, NatsClusterBuilder};
pub use probe::{Msg, Probe};
pub use process::{signal, stop, terminate, wait_exit, ChildProcess};

/// One second, for readable timeouts (`20 * SECS`).
pub const SECS: Duration = Duration::from_secs(1);

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    listener.local_addr().expect("local addr").port()
}

/// A string unique within this machine for the life of the process (PID + counter),
/// for MQTT client ids.
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
