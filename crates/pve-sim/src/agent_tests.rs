//! The agent endpoints over real HTTPS: shapes, the error texts in Proxmox's order,
//! the waits, the privileges per release and the container interfaces.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::{AgentConfig, AgentMode, AgentSetup};
use crate::state::GuestPatch;
use crate::world::PowerState;
use crate::{start, SimHandle, SimOptions, DEFAULT_TOKEN};

struct Api {
    sim: SimHandle,
    client: reqwest::Client,
}

impl Api {
    async fn start(version: &str) -> Api {
        let sim = start(SimOptions {
            pve_version: version.to_string(),
            ..SimOptions::default()
        })
        .await
        .expect("simulator");
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("CA").as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        {
            let world = sim.world();
            let mut state = world.lock();
            state.agents.ping_wait = Duration::from_millis(300);
            state.agents.command_wait = Duration::from_millis(400);
        }
        Api { sim, client }
    }

    async fn get_as(&self, token: &str, path: &str) -> (StatusCode, String, Value) {
        let response = self
            .client
            .get(format!("{}/api2/json{path}", self.sim.base_url()))
            .header("Authorization", format!("PVEAPIToken={token}"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reason = status.canonical_reason().unwrap_or("").to_string();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .unwrap_or(reason);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, reason, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, String, Value) {
        self.get_as(DEFAULT_TOKEN, path).await
    }

    fn set(&self, vmid: u32, config: AgentConfig, mode: AgentMode) {
        let world = self.sim.world();
        let mut state = world.lock();
        state
            .agents
            .overrides
            .insert(vmid, AgentSetup { config, mode });
    }
}

#[tokio::test]
async fn a_running_agent_answers_with_qgas_result_including_loopback_and_pseudo_filesystems() {
    let api = Api::start("9.1.5").await;
    let (status, _, body) = api
        .get("/nodes/pve/qemu/100/agent/network-get-interfaces")
        .await;
    assert_eq!(status, StatusCode::OK);
    let interfaces = body["data"]["result"].as_array().expect("result list");
    assert_eq!(interfaces[0]["name"], "lo");
    assert_eq!(interfaces[0]["ip-addresses"][0]["ip-address"], "127.0.0.1");
    let eth0 = &interfaces[1]["ip-addresses"];
    assert_eq!(eth0[0]["ip-address"], "192.168.1.50");
    assert_eq!(eth0[0]["ip-address-type"], "ipv4");
    assert!(eth0[2]["ip-address"]
        .as_str()
        .unwrap()
        .starts_with("fe80::"));

    let (_, _, body) = api.get("/nodes/pve/qemu/100/agent/get-osinfo").await;
    assert_eq!(
        body["data"]["result"]["pretty-name"],
        "Home Assistant OS 14.2"
    );

    let (_, _, body) = api.get("/nodes/pve/qemu/100/agent/get-fsinfo").await;
    let types: Vec<&str> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|fs| fs["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"ext4") && types.contains(&"tmpfs"),
        "{types:?}"
    );
    api.sim.stop().await;
}

#[tokio::test]
async fn the_agent_errors_come_in_proxmoxs_order_with_its_texts_and_waits() {
    let api = Api::start("9.1.5").await;
    let path = "/nodes/pve/qemu/100/agent/get-fsinfo";
    api.set(100, AgentConfig::Absent, AgentMode::Running);
    let (status, reason, _) = api.get(path).await;
    assert_eq!(
        (status.as_u16(), reason.as_str()),
        (500, "No QEMU guest agent configured")
    );

    api.set(100, AgentConfig::Enabled, AgentMode::NotRunning);
    let started = Instant::now();
    let (status, reason, _) = api.get(path).await;
    assert_eq!(
        (status.as_u16(), reason.as_str()),
        (500, "QEMU guest agent is not running")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the ping's wait"
    );

    // `agent: 0` passes the config check and fails at the ping.
    api.set(100, AgentConfig::Disabled, AgentMode::Running);
    let (_, reason, _) = api.get(path).await;
    assert_eq!(reason, "QEMU guest agent is not running");

    api.set(100, AgentConfig::Enabled, AgentMode::Timeout);
    let started = Instant::now();
    let (status, reason, _) = api.get(path).await;
    assert_eq!(
        (status.as_u16(), reason.as_str()),
        (
            500,
            "VM 100 qga command 'guest-get-fsinfo' failed - got timeout"
        )
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "QGA's timeout"
    );

    api.sim
        .world()
        .patch_guest(
            100,
            GuestPatch {
                status: Some(PowerState::Stopped),
                ..GuestPatch::default()
            },
        )
        .unwrap();
    let (_, reason, _) = api.get(path).await;
    assert_eq!(reason, "VM 100 is not running");
    let (_, reason, _) = api.get("/nodes/pve/qemu/999/agent/get-fsinfo").await;
    assert_eq!(
        reason,
        "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist"
    );
    api.sim.stop().await;
}

#[tokio::test]
async fn the_agent_privilege_is_vm_monitor_on_pve8_and_guest_agent_audit_on_pve9() {
    for (version, granted, denied_text) in [
        (
            "9.1.5",
            "VM.GuestAgent.Audit",
            "Permission check failed (/vms/100, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)",
        ),
        (
            "8.4.1",
            "VM.Monitor",
            "Permission check failed (/vms/100, VM.Monitor)",
        ),
    ] {
        let api = Api::start(version).await;
        let world = api.sim.world();
        let audit = "ro@pve!audit=11111111-2222-3333-4444-555555555555";
        world
            .add_token(
                audit,
                [("/".to_string(), vec!["VM.Audit".to_string()])].into(),
            )
            .unwrap();
        let agent = "ag@pve!agent=11111111-2222-3333-4444-555555555555";
        world
            .add_token(
                agent,
                [(
                    "/".to_string(),
                    vec!["VM.Audit".to_string(), granted.to_string()],
                )]
                .into(),
            )
            .unwrap();
        let path = "/nodes/pve/qemu/100/agent/get-osinfo";
        let (status, reason, _) = api.get_as(audit, path).await;
        assert_eq!(
            (status.as_u16(), reason.as_str()),
            (403, denied_text),
            "{version}"
        );
        let (status, _, _) = api.get_as(agent, path).await;
        assert_eq!(status, StatusCode::OK, "{version}");
        // The unrestricted token lists the release's own privilege.
        let (_, _, body) = api.get("/access/permissions").await;
        assert_eq!(body["data"]["/"][granted], 1, "{version}");
        api.sim.stop().await;
    }
}

#[tokio::test]
async fn container_interfaces_use_inet_types_and_a_stopped_one_answers_null() {
    let api = Api::start("9.1.5").await;
    let (status, _, body) = api.get("/nodes/pve/lxc/101/interfaces").await;
    assert_eq!(status, StatusCode::OK);
    let rows = body["data"].as_array().expect("rows");
    assert_eq!(rows[0]["name"], "lo");
    assert_eq!(rows[1]["inet"], "192.168.1.51/24");
    assert_eq!(rows[1]["ip-addresses"][0]["ip-address-type"], "inet");
    assert_eq!(rows[1]["ip-addresses"][1]["ip-address-type"], "inet6");
    api.sim
        .world()
        .patch_guest(
            101,
            GuestPatch {
                status: Some(PowerState::Stopped),
                ..GuestPatch::default()
            },
        )
        .unwrap();
    let (status, _, body) = api.get("/nodes/pve/lxc/101/interfaces").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["data"].is_null(), "{body}");
    api.sim.stop().await;

    // Before 8.4 only the deprecated fields; before 8.1 no such method.
    let api = Api::start("8.2.4").await;
    let (_, _, body) = api.get("/nodes/pve/lxc/101/interfaces").await;
    assert!(body["data"][1].get("ip-addresses").is_none());
    assert_eq!(body["data"][1]["inet"], "192.168.1.51/24");
    api.sim.stop().await;
    let api = Api::start("8.0.4").await;
    let (status, _, _) = api.get("/nodes/pve/lxc/101/interfaces").await;
    assert_eq!(status.as_u16(), 501);
    api.sim.stop().await;
}
