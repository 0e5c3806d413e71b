use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// `pve2mqtt run` (the real binary) on the config at `path`, its output discarded.
fn spawn_quiet(path: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pve2mqtt")
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the bridge did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_bridge_process_leaves_bridge_state_offline() {
    // Given the real binary running against the simulator and a broker
    let stage = World::builder().probe(&["pve2mqtt/#"]).prepare().await;
    let (broker, probe) = (&stage.broker, &stage.probe);
    let mut child = spawn_quiet(&stage.cfg.write());
    probe
        .wait_topic("pve2mqtt/bridge/state", 20 * SECS, |m| m.text() == "online")
        .await;
    probe.wait_state("pve2mqtt/pve/qemu/100").await;

    // When it is killed without a chance to clean up
    signal(&child, "KILL");
    wait_exit(&mut child, 10 * SECS);

    // Then the broker publishes its Last Will, and keeps it for later subscribers
    probe
        .wait_topic("pve2mqtt/bridge/state", 20 * SECS, |m| {
            m.text() == "offline"
        })
        .await;
    let late = Probe::connect(broker.port, &["pve2mqtt/bridge/state"]).await;
    let state = late
        .wait_topic("pve2mqtt/bridge/state", 5 * SECS, |_| true)
        .await;
    assert_eq!(state.text(), "offline");
    assert!(state.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_offline_and_exits_zero() {
    let stage = World::builder().probe(&["pve2mqtt/#"]).prepare().await;
    let probe = &stage.probe;
    let mut child = spawn_quiet(&stage.cfg.write());
    probe
        .wait_topic("pve2mqtt/bridge/state", 20 * SECS, |m| m.text() == "online")
        .await;

    signal(&child, "TERM");
    let status = wait_exit(&mut child, 15 * SECS);

    assert_eq!(status.code(), Some(0), "clean stop exits 0");
    let offline = probe
        .wait_topic("pve2mqtt/bridge/state", 5 * SECS, |m| m.text() == "offline")
        .await;
    // The bridge said it itself (a clean disconnect suppresses the Last Will).
    assert_eq!(offline.text(), "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_proxmox_and_broker_and_exits_zero() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let path = cfg.write();
    let output = run_check(&path).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("result: ok"), "{stdout}");
    assert!(stdout.contains("Proxmox VE"), "{stdout}");
    assert!(stdout.contains("read state: yes"), "{stdout}");
    // The token secret is never printed.
    let secret = pve_sim::DEFAULT_TOKEN.split('=').nth(1).unwrap();
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tries_every_broker_of_mqtt_urls_and_passes_while_one_answers() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let dead = format!("mqtt://127.0.0.1:{}", free_port());
    let live = format!("mqtt://127.0.0.1:{}", broker.port);
    let run = |urls: Vec<String>| {
        let cfg = TestConfig::with_urls(&sim, &urls, "");
        async move {
            let path = cfg.write();
            let output = run_check(&path).await;
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        }
    };

    // The first broker is down and the second answers: the bridge would work, so check
    // passes, and says which member of the list is down.
    let (code, stdout) = run(vec![dead.clone(), live.clone()]).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("mqtt: FAILED to connect to {dead}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("mqtt: ok, connected to {live}")),
        "{stdout}"
    );
    assert!(stdout.contains("result: ok"), "{stdout}");

    // No broker answers: check fails.
    let other_dead = format!("mqtt://127.0.0.1:{}", free_port());
    let (code, stdout) = run(vec![dead.clone(), other_dead.clone()]).await;
    assert_ne!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("mqtt: FAILED to connect to {other_dead}")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_wrong_token_exits_2_with_one_line_reason() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let wrong = cfg.toml.replace(
        pve_sim::DEFAULT_TOKEN,
        "root@pam!pve2mqtt=11111111-2222-3333-4444-555555555555",
    );
    let path = cfg.dir.path().join("wrong.toml");
    std::fs::write(&path, wrong).unwrap();
    for command in ["check", "run"] {
        let output = tokio::process::Command::new(BIN)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains("401"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("11111111-2222"), "secret leaked: {stderr}");
    }
}

#[test]
fn an_unknown_config_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[proxmox]\nurl = \"https://127.0.0.1:8006\"\ntoken = \"a@pve!b=c\"\n[mqtt]\npasword = \"x\"\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mqtt.pasword"), "{stderr}");
}
