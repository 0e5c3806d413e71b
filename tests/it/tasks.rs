//! Tasks of any origin (issue 12): `/cluster/tasks` on the fast lane, `…/last_task`, the
//! refresh after a task someone else started, failed tasks per node, and what happens
//! without `Sys.Audit` on `/`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const TASKS: &str = "GET /cluster/tasks";

/// The Proxmox API of the simulator, as another client (the GUI) uses it.
async fn pve(sim: &pve_sim::SimHandle, method: &str, path: &str, token: &str) -> Value {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("{}/api2/json{path}", sim.base_url());
    let request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    let response = request
        .header("Authorization", format!("PVEAPIToken={token}"))
        .send()
        .await
        .expect("Proxmox API request");
    assert!(
        response.status().is_success(),
        "{method} {path}: {}",
        response.status()
    );
    response.json().await.expect("JSON")
}

fn tasks_requests(sim: &pve_sim::SimHandle) -> u64 {
    sim.world().counters().get(TASKS).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_started_from_the_proxmox_gui_shows_running_within_a_poll_with_its_last_task() {
    // Given VM 100 stopped, live task lists, and a bridge polling every 2 s
    let stage = World::builder()
        .replace(
            "interval = \"1s\"\n",
            "interval = \"2s\"\ntasks_interval = \"2s\"\n",
        )
        .prepare()
        .await;
    let sim = &stage.sim;
    sim_send(
        sim,
        "PATCH",
        "/_sim/guests/100",
        json!({"status": "stopped"}),
    )
    .await;
    sim_send(sim, "POST", "/_sim/config", json!({"stats_interval_ms": 0})).await;
    sim.world()
        .add_token(
            "root@pam!gui=gui-secret",
            [("/".to_string(), vec!["VM.PowerMgmt".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let w = stage.start().await;
    let (broker, sim, probe) = (&w.broker, &w.sim, &w.probe);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["status"] == "stopped"
        })
        .await;

    // When someone starts it in the Proxmox GUI
    let upid = pve(
        sim,
        "POST",
        "/nodes/pve/qemu/100/status/start",
        "root@pam!gui=gui-secret",
    )
    .await["data"]
        .as_str()
        .unwrap()
        .to_string();
    let ended = loop {
        let status = pve(
            sim,
            "GET",
            &format!("/nodes/pve/tasks/{upid}/status"),
            pve_sim::DEFAULT_TOKEN,
        )
        .await;
        if status["data"]["status"] == "stopped" {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Then within one poll interval plus a second: running, and its last task
    let budget = Duration::from_secs(3);
    probe
        .wait_topic("pve2mqtt/pve/qemu/100", budget, |m| {
            m.json()["status"] == "running"
        })
        .await;
    let left = budget.saturating_sub(ended.elapsed());
    let last = probe
        .wait_topic("pve2mqtt/pve/qemu/100/last_task", left, |m| {
            m.json()["upid"] == upid.as_str() && m.json()["status"] == "ok"
        })
        .await;
    // Retained: a client connecting later gets it at once.
    let late = Probe::connect(broker.port, &["pve2mqtt/pve/qemu/100/last_task"]).await;
    late.wait_for("the retained last_task", 5 * SECS, |m| {
        m.retain && !m.payload.is_empty()
    })
    .await;
    let task = last.json();
    assert_eq!(task["type"], "qmstart");
    assert_eq!(task["user"], "root@pam!gui");
    assert_eq!(task["exitstatus"], "OK");
    assert!(task["start"].as_u64().unwrap() <= task["end"].as_u64().unwrap());
    // The node tells its failed tasks of the last 24 h (none here).
    let node = probe.latest("pve2mqtt/pve/node/pve").unwrap().json();
    assert_eq!(node["failed_tasks_24h"], 0);

    // And when the VM is gone, its last_task is cleared
    sim_send(sim, "DELETE", "/_sim/guests/100", json!({})).await;
    probe
        .wait_topic("pve2mqtt/pve/qemu/100/last_task", 20 * SECS, |m| {
            m.payload.is_empty()
        })
        .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_list_is_read_at_most_once_per_tasks_interval_and_failures_count_per_node() {
    let stage = World::builder()
        .replace(
            "slow_interval = \"2s\"\n",
            "slow_interval = \"2s\"\ntasks_interval = \"3s\"\n",
        )
        .prepare()
        .await;
    let sim = &stage.sim;
    sim_send(sim, "POST", "/_sim/config", json!({"stats_interval_ms": 0})).await;
    // A failed task of another origin on node pve.
    sim_send(
        sim,
        "POST",
        "/_sim/tasks/next",
        json!({"vmid": 101, "action": "stop", "outcome": "fail"}),
    )
    .await;
    pve(
        sim,
        "POST",
        "/nodes/pve/lxc/101/status/stop",
        pve_sim::DEFAULT_TOKEN,
    )
    .await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);

    // Every change of the request count, timed: polls every 1 s, the task list every 3 s.
    let started = Instant::now();
    let mut reads: Vec<Instant> = Vec::new();
    let mut seen = tasks_requests(sim);
    while started.elapsed() < Duration::from_millis(7_500) {
        let now = tasks_requests(sim);
        for _ in seen..now {
            reads.push(Instant::now());
        }
        seen = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((2..=3).contains(&reads.len()), "{} reads", reads.len());
    for pair in reads.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(2_800), "reads {gap:?} apart");
    }
    let resources = sim.world().counters()["GET /cluster/resources"];
    assert!(resources >= 5, "the fast lane kept polling: {resources}");
    let node = probe
        .wait_topic("pve2mqtt/pve/node/pve", 5 * SECS, |m| {
            m.json()["failed_tasks_24h"] == 1
        })
        .await;
    assert_eq!(node.json()["failed_tasks_24h"], 1);
    let last = probe
        .latest("pve2mqtt/pve/lxc/101/last_task")
        .expect("last task")
        .json();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["type"], "vzstop");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sys_audit_on_root_tasks_are_not_read_and_nothing_breaks() {
    let token = "pve2mqtt@pve!nosys=nosys-secret";
    let stage = World::builder()
        .replace(pve_sim::DEFAULT_TOKEN, token)
        .prepare()
        .await;
    let sim = &stage.sim;
    let privileges = [
        ("/vms", vec!["VM.Audit", "VM.PowerMgmt"]),
        ("/nodes", vec!["Sys.Audit"]),
        ("/storage", vec!["Datastore.Audit"]),
    ]
    .into_iter()
    .map(|(path, privs)| {
        (
            path.to_string(),
            privs.into_iter().map(str::to_string).collect(),
        )
    })
    .collect();
    sim.world().add_token(token, privileges).unwrap();
    let path = stage.cfg.write();

    // `check` says what is missing, and for what.
    let output = run_check(&path).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("tasks of any origin, backup health: no — missing Sys.Audit on /"),
        "{stdout}"
    );

    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let state = probe
        .wait_topic("pve2mqtt/pve/qemu/100", 20 * SECS, |m| {
            m.json()["status"] == "running"
        })
        .await;
    assert_eq!(state.json()["vmid"], 100);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tasks_requests(sim),
        0,
        "no request that can only return nothing"
    );
    let node = probe
        .latest("pve2mqtt/pve/node/pve")
        .expect("node state")
        .json();
    assert_eq!(node["failed_tasks_24h"], Value::Null);
    assert!(probe.latest("pve2mqtt/pve/qemu/100/last_task").is_none());
    w.stop().await;
}
