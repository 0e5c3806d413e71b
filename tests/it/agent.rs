//! The guest agent (issue 12): what a running VM's agent and a container's interfaces
//! publish, whom the agent lane asks, how often, and how it copes with agents that are
//! missing, hung or forbidden.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const VM: &str = "pve2mqtt/pve/qemu/100";
const CT: &str = "pve2mqtt/pve/lxc/101";
const VM_DEVICE: &str = "homeassistant/device/pve2mqtt_pve_100/config";
const AGENT_PATH: &str = "/nodes/pve/qemu/100/agent/";

/// A world whose agent lane asks every guest every second, in 1 s rounds.
fn agent_world() -> WorldBuilder {
    World::builder().replace(
        "slow_interval = \"2s\"",
        "slow_interval = \"1s\"\nagent_interval = \"1s\"",
    )
}

/// The simulator's recorded requests whose path starts with `prefix`.
fn requests_to(sim: &pve_sim::SimHandle, prefix: &str) -> Vec<pve_sim::RecordedRequest> {
    sim.world()
        .requests(0)
        .into_iter()
        .filter(|r| r.path.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_with_the_agent_publishes_its_addresses_os_and_disk_used() {
    // Given the seed world: VM 100 with a running agent, CT 101 running
    let w = agent_world().start().await;
    let probe = &w.probe;

    // Then the VM's state carries the agent's data: no loopback, no link-local, IPv4 first
    let vm = probe
        .wait_topic(VM, 20 * SECS, |m| m.json()["agent"] == true)
        .await
        .json();
    assert_eq!(vm["ip_addresses"], json!(["192.168.1.50", "fd00:20::64"]));
    assert_eq!(vm["os"], "Home Assistant OS 14.2");
    // The root filesystem (counted once despite its bind mount) and the EFI partition;
    // tmpfs left out. The simulator's root: 97 % of 32 GiB, 20 % of it used.
    let root = 34_359_738_368u64 / 100 * 97 / 100 * 20;
    assert_eq!(vm["disk"], root + 6_291_456);
    // The container's addresses come from its interfaces; it has no agent
    let ct = probe
        .wait_topic(CT, 20 * SECS, |m| {
            m.json()["ip_addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await
        .json();
    assert_eq!(ct["ip_addresses"], json!(["192.168.1.51"]));
    assert!(ct["agent"].is_null());

    // And Home Assistant gets the VM's agent entities and, now, its "Disk used"
    let device = probe
        .wait_topic(VM_DEVICE, 20 * SECS, |m| {
            !m.payload.is_empty() && m.json()["cmps"].get("disk_used").is_some()
        })
        .await
        .json();
    let cmps = &device["cmps"];
    assert_eq!(cmps["agent"]["p"], "binary_sensor");
    assert_eq!(cmps["agent"]["dev_cla"], "connectivity");
    assert_eq!(cmps["ip_address"]["json_attr_t"], VM);
    assert_eq!(cmps["os"]["ent_cat"], "diagnostic");
    assert_eq!(cmps["disk_used"]["uniq_id"], "pve2mqtt_pve_100_disk_used");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_the_agent_configured_is_not_asked_again_every_round() {
    // Given VM 100 without an `agent` key in its config
    let stage = agent_world().prepare().await;
    let sim = &stage.sim;
    sim_send(sim, "POST", "/_sim/agents/100", json!({"config": "absent"})).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);

    // When the bridge runs for several agent intervals
    probe
        .wait_topic(CT, 20 * SECS, |m| {
            m.json()["ip_addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Then the VM was asked once, and its state says nothing about an agent
    let asked = requests_to(sim, AGENT_PATH);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].status, Some(500));
    let vm = probe.latest(VM).unwrap().json();
    assert!(vm["agent"].is_null(), "{vm}");
    assert_eq!(vm["ip_addresses"], json!([]));
    assert!(vm["os"].is_null());
    // …while the container was asked every round
    assert!(requests_to(sim, "/nodes/pve/lxc/101/interfaces").len() >= 3);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_times_out_is_backed_off_and_never_delays_the_other_lanes() {
    // Given VM 100 whose agent hangs: each call takes 2.5 s before Proxmox's timeout
    let stage = agent_world().prepare().await;
    let sim = &stage.sim;
    sim_send(
        sim,
        "POST",
        "/_sim/agents",
        json!({"command_wait_ms": 2500}),
    )
    .await;
    sim_send(sim, "POST", "/_sim/agents/100", json!({"mode": "timeout"})).await;
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    let agent_route = "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces";
    let counters = || sim.world().counters();

    // When the first agent call is in flight (counted on arrival, recorded at its end)
    let deadline = Instant::now() + 20 * SECS;
    while counters().get(agent_route).copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the agent was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = counters();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = counters();

    // Then the fast and slow lanes went on while it hung
    let moved = |route: &str| during.get(route).unwrap_or(&0) - before.get(route).unwrap_or(&0);
    assert!(
        moved("GET /cluster/resources") >= 1,
        "{before:?} → {during:?}"
    );
    assert!(
        moved("GET /nodes/{node}/status") >= 1,
        "{before:?} → {during:?}"
    );

    // And the VM reports its agent down, and is asked again only after growing waits
    // (2 s, then 4 s: in ~11 s two or three calls, not one per 1 s round)
    probe
        .wait_topic(VM, 20 * SECS, |m| m.json()["agent"] == false)
        .await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let asked = requests_to(sim, AGENT_PATH);
    assert!(
        (2..=3).contains(&asked.len()),
        "{} agent calls: {asked:?}",
        asked.len()
    );
    assert!(asked.iter().all(|r| r.status == Some(500)));
    // The other calls of a visit are not made once the first one failed
    assert!(asked
        .iter()
        .all(|r| r.path.ends_with("network-get-interfaces")));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_guests_are_not_asked() {
    // Given VM 100 and CT 101 stopped
    let stage = agent_world().prepare().await;
    for vmid in [100, 101] {
        sim_send(
            &stage.sim,
            "PATCH",
            &format!("/_sim/guests/{vmid}"),
            json!({"status": "stopped"}),
        )
        .await;
    }
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic(VM, 20 * SECS, |m| m.json()["status"] == "stopped")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Then neither was asked, and their states carry no agent data
    assert!(requests_to(sim, AGENT_PATH).is_empty());
    assert!(requests_to(sim, "/nodes/pve/lxc/101/interfaces").is_empty());
    let vm: Value = probe.latest(VM).unwrap().json();
    assert!(vm["agent"].is_null());
    assert_eq!(vm["ip_addresses"], json!([]));
    // And the VM's "Disk used" stays unannounced (Proxmox's 0 would be false)
    let device = probe.latest(VM_DEVICE).unwrap().json();
    assert!(device["cmps"].get("disk_used").is_none());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_agent_privilege_is_skipped_quietly_and_check_says_so() {
    // Given a token that may read state but not the guest agent (PVE 9)
    let token = "reader@pve!bridge=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let stage = agent_world()
        .replace(pve_sim::DEFAULT_TOKEN, token)
        .prepare()
        .await;
    sim_send(
        &stage.sim,
        "POST",
        "/_sim/tokens",
        json!({"token": token, "privileges": {"/": ["Sys.Audit", "VM.Audit", "Datastore.Audit"]}}),
    )
    .await;

    // Then `check` names the privilege that applies, and still passes
    let output = run_check(stage.cfg.write()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("guest agent: no — missing VM.GuestAgent.Audit on /vms (PVE 9 asks it; VM.Monitor on PVE 8)"),
        "{stdout}"
    );

    // And the bridge asks once, gets its 403, and does not ask again
    let w = stage.start().await;
    let (sim, probe) = (&w.sim, &w.probe);
    probe
        .wait_topic(CT, 20 * SECS, |m| {
            m.json()["ip_addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = requests_to(sim, AGENT_PATH);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].status, Some(403));
    let vm = probe.latest(VM).unwrap().json();
    assert!(vm["agent"].is_null(), "{vm}");
    // The bridge stays healthy: still online
    let state = probe.latest("pve2mqtt/bridge/state").unwrap();
    assert_eq!(state.text(), "online");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_vm_monitor_on_pve8() {
    let broker = Mosquitto::start();
    let sim = start_sim(pve_sim::SimOptions {
        pve_version: "8.4.1".into(),
        ..sim_options()
    })
    .await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let output = run_check(cfg.write()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("guest agent: yes (VM.Monitor on /vms, as PVE 8 asks)"),
        "{stdout}"
    );
    sim.stop().await;
}
