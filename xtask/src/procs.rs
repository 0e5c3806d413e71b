//! Processes for the harnesses: RSS and CPU time from /proc. Stopping a child (SIGTERM,
//! a timeout, SIGKILL), free ports and the private Mosquitto (by PID, persistence
//! optional) come from the shared `crates/testkit`, as in the integration tests.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use anyhow::Context;
use testkit::ChildProcess;
pub use testkit::{free_port, Mosquitto};

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`), if the process exists.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&text, field)
}

/// The resident set size of a process in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time of a process in clock ticks (`/proc/<pid>/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 is index 0, so utime (14) is index 11 and stime (15) index 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second, for [`cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// SIGTERM, then wait up to `timeout`; SIGKILL after that (the test kit's
/// [`testkit::stop`]). Returns the exit code, or `None` if it had to be killed (or died
/// by a signal).
pub async fn terminate(child: &mut Child, timeout: Duration) -> Option<i32> {
    testkit::stop(child, timeout).await?.code()
}

/// The exit code if the child has exited, without waiting.
pub fn exited(child: &mut Child) -> Option<Option<i32>> {
    child.exit_status().map(|status| status.code())
}

/// A private Mosquitto from the shared test kit, its output appended to
/// `dir/mosquitto.log` (kept with the run's other logs).
pub fn mosquitto(dir: &Path, persistence: bool, extra: &str) -> anyhow::Result<Mosquitto> {
    let mut builder = Mosquitto::builder()
        .persistence(persistence)
        .log_to(&dir.join("mosquitto.log"));
    if !extra.is_empty() {
        builder = builder.extra_config(extra);
    }
    builder
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_is_read_in_kilobytes() {
        let text = "Name:\tpve2mqtt\nVmHWM:\t   14336 kB\nVmRSS:\t   13516 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(13516));
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(14336));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_add_user_and_system_time_even_with_spaces_in_the_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_ticks(stat), Some(12));
    }

    #[test]
    fn a_harness_broker_logs_to_its_run_directory_and_starts_again_on_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = mosquitto(dir.path(), true, "").unwrap();
        broker.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_err());
        broker.start_again().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_ok());
        assert_eq!(
            broker.log_path(),
            Some(dir.path().join("mosquitto.log").as_path())
        );
        assert!(dir.path().join("mosquitto.log").is_file());
    }
}
