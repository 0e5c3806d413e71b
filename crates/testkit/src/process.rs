//! Child processes stopped like a service manager stops them: SIGTERM by PID, a wait,
//! SIGKILL after it. One implementation for the integration tests (tokio children whose
//! output they read) and the harnesses (std children they measure in /proc).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// A child process the kit can stop: std's and tokio's.
pub trait ChildProcess {
    /// Its PID while it has not been reaped.
    fn pid(&self) -> Option<u32>;
    /// Its exit status if it has exited, without waiting.
    fn exit_status(&mut self) -> Option<ExitStatus>;
    /// SIGKILL, and reap it.
    fn kill_now(&mut self);
}

impl ChildProcess for std::process::Child {
    fn pid(&self) -> Option<u32> {
        Some(self.id())
    }
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_wait().ok().flatten()
    }
    fn kill_now(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

impl ChildProcess for tokio::process::Child {
    fn pid(&self) -> Option<u32> {
        self.id()
    }
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_wait().ok().flatten()
    }
    fn kill_now(&mut self) {
        // Reaped by tokio in the background.
        let _ = self.start_kill();
    }
}

/// Sends `signal` to the process `pid`, one we started (by its PID, never by name).
/// False if it could not be sent (the process is gone).
pub fn signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory preconditions; the PID is our own child's.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The exit status once the child has exited, or `None` after `timeout`; it does not
/// block the runtime.
pub async fn wait_exit(child: &mut impl ChildProcess, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.exit_status() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then up to `timeout` for the exit; SIGKILL after that. The exit status, or
/// `None` if it had to be killed.
pub async fn stop(child: &mut impl ChildProcess, timeout: Duration) -> Option<ExitStatus> {
    if let Some(status) = child.exit_status() {
        return Some(status);
    }
    if let Some(pid) = child.pid() {
        signal(pid, libc::SIGTERM);
    }
    let status = wait_exit(child, timeout).await;
    if status.is_none() {
        child.kill_now();
    }
    status
}

/// SIGTERM, then the exit status and everything it printed; panics unless it exits
/// within 15 s. The child must have been spawned with piped stdout/stderr to capture
/// them (read while it runs, so a chatty child never blocks on a full pipe).
pub async fn terminate(mut child: tokio::process::Child) -> std::process::Output {
    assert!(child.id().is_some(), "the child is still running");
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let status = stop(&mut child, Duration::from_secs(15))
        .await
        .expect("the child exited within 15 s of SIGTERM");
    std::process::Output {
        status,
        stdout: stdout.await.expect("read stdout"),
        stderr: stderr.await.expect("read stderr"),
    }
}

fn read_all(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[tokio::test]
    async fn a_child_that_honours_sigterm_exits_with_what_it_printed() {
        let child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "trap 'echo bye; exit 3' TERM; echo hi; while :; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let output = terminate(child).await;
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\nbye\n");
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed_after_the_timeout() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stop(&mut child, Duration::from_millis(300)).await, None);
        assert!(child.try_wait().unwrap().is_some(), "killed and reaped");
    }
}
