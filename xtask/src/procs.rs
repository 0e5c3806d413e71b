//! Processes and ports for the harnesses: free ports, a private Mosquitto started and
//! stopped by PID, waiting for a listener, RSS and CPU time from /proc, and stopping a
//! child by SIGTERM with a timeout.
//!
//! Kept behind this narrow API on purpose: it is the part that moves to the shared
//! `crates/testkit` crate (`testkit::free_port()`, its `Mosquitto` with a `persistence`
//! option), so the harnesses should not reach past it.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A loopback port nobody listens on right now (the OS picks it; the socket is closed
/// again, so there is a small window in which someone else could take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// True once something accepts TCP connections on the loopback port.
pub async fn wait_listening(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

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

/// Sends a signal to a child we started (by its PID, never by name).
fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the PID is our own child's.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// SIGTERM, then wait up to `timeout`; SIGKILL after that. Returns the exit code, or
/// `None` if it had to be killed (or died by a signal).
pub async fn terminate(child: &mut Child, timeout: Duration) -> Option<i32> {
    if let Ok(Some(status)) = child.try_wait() {
        return status.code();
    }
    signal(child, libc::SIGTERM);
    match wait_timeout(child, timeout).await {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Waits for the child's exit without blocking the runtime.
pub async fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The exit code if the child has exited, without waiting.
pub fn exited(child: &mut Child) -> Option<Option<i32>> {
    child.try_wait().ok().flatten().map(|status| status.code())
}

fn mosquitto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}

/// A private Mosquitto on a free loopback port, started, stopped and restarted by PID.
/// With `persistence`, its database lives in its own directory and survives a
/// [`Mosquitto::stop`]/[`Mosquitto::start`] (Mosquitto saves it on SIGTERM), as in the
/// Home Assistant add-on; [`Mosquitto::kill`] is a crash and saves nothing.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes its config under `dir` and starts it.
    pub async fn start_in(dir: &Path, persistence: bool) -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with(dir, persistence, "").await
    }

    /// Like [`Mosquitto::start_in`], with `extra` config lines.
    pub async fn start_with(
        dir: &Path,
        persistence: bool,
        extra: &str,
    ) -> anyhow::Result<Mosquitto> {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        // Started as root, Mosquitto drops to the `mosquitto` user, which could not write
        // the persistence db into our directory (it logs "Permission denied" on SIGTERM
        // and the retained messages are lost): stay the user we are.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            text += "user root\n";
        }
        if persistence {
            let db = dir.join("mosquitto-db");
            std::fs::create_dir_all(&db)?;
            text += &format!("persistence true\npersistence_location {}/\n", db.display());
        } else {
            text += "persistence false\n";
        }
        text += extra;
        std::fs::write(&conf, text)?;
        let mut broker = Mosquitto {
            port,
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        broker.start().await?;
        Ok(broker)
    }

    /// Starts it again on the same port (after [`Mosquitto::kill`] or [`Mosquitto::stop`]).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        self.child = Some(child);
        if !wait_listening(self.port, Duration::from_secs(10)).await {
            bail!(
                "mosquitto did not listen on {} (see {})",
                self.port,
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGKILL, like a crash: no Last Will handling, no clean disconnects, no saved db.
    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (a persistent broker writes its database on the way out).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
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
    fn a_free_port_is_bindable() {
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[tokio::test]
    async fn a_persistent_broker_keeps_listening_on_its_port_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Mosquitto::start_in(dir.path(), true).await.unwrap();
        broker.stop().await;
        assert!(!wait_listening(broker.port, Duration::from_millis(200)).await);
        broker.start().await.unwrap();
        assert!(wait_listening(broker.port, Duration::from_secs(1)).await);
    }
}
