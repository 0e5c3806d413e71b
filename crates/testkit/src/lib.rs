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

/// A TCP port on 127.0.0.1 that was free a moment ago, and that no outgoing connection
/// will take before a server binds it.
///
/// The port is picked at random below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), checked free by binding it, and never
/// handed out twice by one process. A port the OS picks (`bind` to port 0) is *in* that
/// range: between the check and the server's own `bind`, any test's outgoing connection
/// could be given it as its local port, and two picks in a row can be the same port. A
/// three-node NATS cluster takes twelve ports, and a node once failed to start with
/// "address already in use" that way. Below the range only another test's pick can
/// collide, at odds of one in ~16,000 per pair.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(2048);
    let low = high.saturating_sub(16384).max(1024);
    // A seed per process (std's hasher keys are random) and a counter per pick.
    let seed = std::collections::hash_map::RandomState::new();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let port = low + (seed.hash_one(attempt) % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    // Everything below the range is taken: let the OS pick.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_never_repeat_and_lie_below_the_ephemeral_range() {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for port in ports {
            assert!(port < low, "{port} is in the ephemeral range from {low}");
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}
