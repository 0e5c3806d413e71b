//! The cluster-health endpoints against reference `pve-api-round2.md` §7–§9.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::DEFAULT_TOKEN;
use super::{start, CephPatch, NewReplicationJob, ReplicationPatch, SimHandle, SimOptions};

struct Api {
    sim: SimHandle,
    client: reqwest::Client,
}

impl Api {
    async fn start(nodes: Option<usize>) -> Api {
        let sim = start(SimOptions {
            nodes,
            guests: nodes.map(|_| 6),
            proxy_offline_delay: Duration::from_millis(50),
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("CA").as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        Api { sim, client }
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, String, Value) {
        let response = self
            .client
            .get(format!("{}/api2/json{path}", self.sim.base_url()))
            .header("Authorization", format!("PVEAPIToken={token}"))
            .send()
            .await
            .expect("request");
        let status = response.status();
        let reason = status.canonical_reason().unwrap_or("").to_string();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, reason, body)
    }
}

#[tokio::test]
async fn ceph_status_is_the_raw_ceph_json_and_absent_ceph_is_a_500() {
    let api = Api::start(None).await;
    let (status, _, body) = api.get("/cluster/ceph/status", DEFAULT_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let data = &body["data"];
    assert_eq!(data["health"]["status"], "HEALTH_WARN");
    let check = &data["health"]["checks"]["POOL_NO_REDUNDANCY"];
    assert_eq!(check["severity"], "HEALTH_WARN");
    assert_eq!(
        check["summary"]["message"],
        "1 pool(s) have no replicas configured"
    );
    assert_eq!(check["muted"], json!(false), "Ceph JSON booleans are real");
    assert_eq!(data["quorum_names"], json!(["pve"]));
    assert!(data["pgmap"]["bytes_total"].as_u64().unwrap() > 0);
    assert_eq!(data["osdmap"]["num_osds"], 2);

    // Without Ceph: the synchronous 500 of check_ceph_inited, not a 404
    api.sim
        .world()
        .patch_ceph(CephPatch {
            installed: Some(false),
            ..CephPatch::default()
        })
        .unwrap();
    let (status, _, body) = api.get("/cluster/ceph/status", DEFAULT_TOKEN).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["data"], Value::Null);
    assert_eq!(
        body["message"].as_str().map(str::trim),
        Some("binary not installed: /usr/bin/ceph-mon")
    );
}

#[tokio::test]
async fn ceph_needs_sys_audit_or_datastore_audit_on_root() {
    let api = Api::start(None).await;
    let world = api.sim.world();
    world
        .add_token(
            "ro@pve!vms=s1",
            [("/vms".to_string(), vec!["VM.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    world
        .add_token(
            "ro@pve!ds=s2",
            [("/".to_string(), vec!["Datastore.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let (status, _, body) = api.get("/cluster/ceph/status", "ro@pve!vms=s1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"].as_str().map(str::trim),
        Some("Permission check failed (/, Sys.Audit|Datastore.Audit)")
    );
    let (status, _, _) = api.get("/cluster/ceph/status", "ro@pve!ds=s2").await;
    assert_eq!(status, StatusCode::OK);
    // HA status needs Sys.Audit on `/`.
    let (status, _, _) = api.get("/cluster/ha/status/current", "ro@pve!ds=s2").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn replication_lists_config_and_per_node_state_filtered_by_vm_audit() {
    let api = Api::start(Some(2)).await;
    let world = api.sim.world();
    world
        .add_replication_job(NewReplicationJob {
            guest: 100,
            target: "pve2".into(),
            jobnum: 0,
            every_minutes: None,
            comment: None,
        })
        .unwrap();
    // Config: no state fields, no `schedule` when it is the default.
    let (_, _, body) = api.get("/cluster/replication", DEFAULT_TOKEN).await;
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "100-0");
    assert_eq!(rows[0]["guest"], 100);
    assert_eq!(rows[0]["type"], "local");
    assert!(rows[0].get("schedule").is_none());
    assert!(rows[0].get("last_sync").is_none());
    // Per node: only the node the guest lives on lists it, with its state.
    let (_, _, body) = api.get("/nodes/pve2/replication", DEFAULT_TOKEN).await;
    assert_eq!(body["data"], json!([]));
    let (_, _, body) = api.get("/nodes/pve1/replication", DEFAULT_TOKEN).await;
    let job = &body["data"][0];
    assert_eq!(job["vmtype"], "qemu");
    assert_eq!(job["fail_count"], 0);
    assert!(job["last_sync"].as_u64().unwrap() > 0);
    assert!(job["next_sync"].as_u64().unwrap() > job["last_sync"].as_u64().unwrap());
    assert!(job.get("error").is_none(), "error only while failing");
    assert!(job.get("state").is_none(), "no state field");

    world
        .patch_replication_job(
            "100-0",
            ReplicationPatch {
                failing: true,
                error: None,
            },
        )
        .unwrap();
    let (_, _, body) = api.get("/nodes/pve1/replication", DEFAULT_TOKEN).await;
    let job = &body["data"][0];
    assert_eq!(job["fail_count"], 1);
    assert!(job["error"]
        .as_str()
        .unwrap()
        .starts_with("command 'zfs snapshot"));
    // The retry: 5 minutes after the failed try.
    assert_eq!(
        job["next_sync"].as_u64().unwrap(),
        job["last_try"].as_u64().unwrap() + 300
    );

    // A token without VM.Audit on the guest sees no job (user=all, filtered).
    world
        .add_token(
            "ro@pve!none=s3",
            [("/nodes".to_string(), vec!["Sys.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let (status, _, body) = api.get("/cluster/replication", "ro@pve!none=s3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], json!([]));
    // The per-node list is proxied: an offline node answers 595.
    world.set_node_online("pve1", false).unwrap();
    let (status, _, _) = api.get("/nodes/pve1/replication", DEFAULT_TOKEN).await;
    assert_eq!(status.as_u16(), 595);
}

#[tokio::test]
async fn the_ha_status_lists_quorum_master_and_services() {
    let api = Api::start(Some(3)).await;
    let world = api.sim.world();
    // Without HA resources only the quorum row.
    let (_, _, body) = api.get("/cluster/ha/status/current", DEFAULT_TOKEN).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["type"], "quorum");
    assert_eq!(body["data"][0]["quorate"], 1);
    world
        .patch_guest(
            100,
            super::GuestPatch {
                hastate: Some(Some("started".into())),
                ..super::GuestPatch::default()
            },
        )
        .unwrap();
    let (_, _, body) = api.get("/cluster/ha/status/current", DEFAULT_TOKEN).await;
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows[0]["type"], "quorum");
    assert_eq!(rows[1]["type"], "master");
    let service = rows.iter().find(|r| r["type"] == "service").unwrap();
    assert_eq!(service["sid"], "vm:100");
    assert_eq!(service["state"], "started");
    assert_eq!(service["request_state"], "started");
    // Two of three nodes down: no quorum, said the real way.
    world.set_node_online("pve2", false).unwrap();
    world.set_node_online("pve3", false).unwrap();
    let (_, _, body) = api.get("/cluster/ha/status/current", DEFAULT_TOKEN).await;
    assert_eq!(body["data"][0]["quorate"], 0);
    assert_eq!(body["data"][0]["status"], "No quorum on node 'pve1'!");
}
