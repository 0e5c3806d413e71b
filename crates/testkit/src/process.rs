//! Child processes stopped like a service manager stops them.

use std::process::Command;
use std::time::Duration;

/// SIGTERM, then the exit status and everything it printed (at most 15 s). The child must
/// have been spawned with piped stdout/stderr to capture them.
pub async fn terminate(child: tokio::process::Child) -> std::process::Output {
    let pid = child.id().expect("the child is still running");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
    tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("the child exited within 15 s of SIGTERM")
        .expect("wait for the child")
}
