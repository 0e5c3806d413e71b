//! A private Mosquitto broker, started and stopped by PID.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Set to `1` (or `true`) to start every broker whose persistence was not chosen
/// explicitly with persistence on, as the Home Assistant Mosquitto add-on runs it.
/// Not `PVE2MQTT_…`: the bridge refuses unknown variables with its own prefix, and the
/// tests' child processes inherit this one.
pub const PERSISTENCE_ENV: &str = "TESTKIT_MOSQUITTO_PERSISTENCE";

/// How long a broker gets to listen after its start, and to exit after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of a broker to start; see [`Mosquitto::builder`].
#[derive(Debug, Clone, Default)]
pub struct MosquittoBuilder {
    port: Option<u16>,
    extra: String,
    persistence: Option<bool>,
    log: Option<PathBuf>,
}

impl MosquittoBuilder {
    /// The port of the default listener (default: a free one). Ignored when the extra
    /// config declares its own `listener`.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Appended to the config file (TLS listeners, passwords). When it declares a TCP
    /// `listener` (any port but 0), the default anonymous listener is left out; a Unix
    /// socket listener (`listener 0 <path>`) comes in addition to it.
    pub fn extra_config(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    /// Persistence on keeps retained messages (and sessions) in a file in the broker's
    /// temporary directory, saved when the broker stops, so a [`Mosquitto::restart`]
    /// keeps them, like the Home Assistant add-on. Default: off, unless
    /// [`PERSISTENCE_ENV`] says `1`.
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = Some(on);
        self
    }

    /// Appends the broker's stdout and stderr to this file (default: discarded), for
    /// harnesses that keep its log beside their own.
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    /// Writes the config, starts the broker and waits until it listens.
    pub fn spawn(self) -> io::Result<Mosquitto> {
        let port = self.port.unwrap_or_else(free_port);
        let persistence = self.persistence.unwrap_or_else(persistence_from_env);
        let dir = tempfile::tempdir()?;
        let mut text = String::new();
        if !declares_tcp_listener(&self.extra) {
            text.push_str(&format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n"
            ));
        }
        if persistence {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\npersistence_file mosquitto.db\n",
                dir.path().display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        // Started as root, Mosquitto drops to the `mosquitto` user, which can neither
        // write the database into our private temporary directory nor bind a Unix socket
        // in a harness's run directory: stay the user we are.
        if is_root() {
            text.push_str("user root\n");
        }
        text.push_str(&self.extra);
        std::fs::write(dir.path().join("mosquitto.conf"), text)?;
        let mut broker = Mosquitto {
            port,
            persistence,
            dir,
            log: self.log,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }
}

/// A `listener <port> …` line with a port other than 0 (0 is a Unix socket).
fn declares_tcp_listener(extra: &str) -> bool {
    extra.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("listener") && words.next().is_some_and(|port| port != "0")
    })
}

fn persistence_from_env() -> bool {
    persistence_wanted(std::env::var(PERSISTENCE_ENV).ok().as_deref())
}

/// `1`, `true`, `yes` or `on` turn persistence on; anything else, or no value, leaves it off.
fn persistence_wanted(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn mosquitto_binary() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}

/// A private Mosquitto broker on 127.0.0.1, with its config (and, with persistence, its
/// database) in a temporary directory. Dropping it kills the broker.
#[derive(Debug)]
pub struct Mosquitto {
    /// The port of the default listener (or the one given to the builder).
    pub port: u16,
    persistence: bool,
    dir: tempfile::TempDir,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl Mosquitto {
    /// Options for a broker; `.spawn()` starts it.
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// A broker on a free port, anonymous, persistence as [`PERSISTENCE_ENV`] says.
    /// Panics when Mosquitto cannot start.
    pub fn start() -> Mosquitto {
        Self::builder().spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A broker with `extra` appended to its config (TLS, passwords); `port` is the
    /// default listener's, or the one `extra` declares. Panics when it cannot start.
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        Self::builder()
            .port(port)
            .extra_config(extra)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether retained messages survive [`Mosquitto::restart`].
    pub fn persistence(&self) -> bool {
        self.persistence
    }

    /// The PID of the running broker, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's temporary directory (config, persistence file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let binary = mosquitto_binary();
        let (stdout, stderr) = match &self.log {
            Some(path) => {
                let file = std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(&binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "start {} (is the mosquitto package installed?): {e}",
                        binary.display()
                    ),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(io::Error::other(format!(
                    "mosquitto exited ({status}) before listening on {}",
                    self.port
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("mosquitto did not listen on {} within 10 s", self.port),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the broker by its PID the way a service manager does: SIGTERM, so that with
    /// persistence it saves its database, then SIGKILL if it has not exited in 10 s.
    /// Without persistence, retained messages are lost.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The PID is our own child's, not yet reaped (we hold the `Child`).
        if crate::process::signal(child.id(), libc::SIGTERM) {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker by its PID (SIGKILL): a crash. Even with persistence, what was
    /// not saved yet is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker (SIGTERM) and starts it again on the same port with the same
    /// config and, with persistence, the same database. Panics when it cannot start.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a stopped or killed broker again, on the same port with the same config
    /// and database; the half of a restart that a harness times apart from the stop.
    /// Does nothing when it is running.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// Where its output goes, if [`MosquittoBuilder::log_to`] said.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// [`Mosquitto::restart`], returning the error instead of panicking.
    pub fn try_restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::{declares_tcp_listener, persistence_wanted};

    #[test]
    fn only_a_tcp_listener_replaces_the_default_one() {
        assert!(declares_tcp_listener("listener 8883 127.0.0.1\ncafile x"));
        assert!(!declares_tcp_listener(
            "listener 0 /tmp/m.sock\nmax_queued_messages 0"
        ));
        assert!(!declares_tcp_listener("persistence false"));
    }

    #[test]
    fn only_an_explicit_yes_in_the_environment_turns_persistence_on() {
        for on in ["1", "true", "TRUE", " yes ", "on"] {
            assert!(persistence_wanted(Some(on)), "{on:?}");
        }
        for off in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("off"),
            Some("2"),
        ] {
            assert!(!persistence_wanted(off), "{off:?}");
        }
    }
}
