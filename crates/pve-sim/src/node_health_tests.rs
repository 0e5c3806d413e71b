//! The node-health endpoints over real HTTPS: shapes, privileges and errors as on a real
//! Proxmox (reference round 2 §1, §3–§6).
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::*;

async fn start_sim(opts: SimOptions) -> (SimHandle, reqwest::Client) {
    let sim = start(SimOptions {
        auth_failure_delay: Duration::from_millis(50),
        proxy_offline_delay: Duration::from_millis(100),
        ..opts
    })
    .await
    .expect("simulator starts");
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("TLS CA").as_bytes())
        .expect("CA parses");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    (sim, client)
}

async fn get(
    sim: &SimHandle,
    client: &reqwest::Client,
    token: &str,
    path: &str,
) -> (StatusCode, Value) {
    let response = client
        .get(format!("{}/api2/json{path}", sim.base_url()))
        .header("Authorization", format!("PVEAPIToken={token}"))
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_seed_node_answers_every_health_endpoint_with_the_real_shapes() {
    let (sim, client) = start_sim(SimOptions::default()).await;
    let get = |path: &'static str| get(&sim, &client, DEFAULT_TOKEN, path);
    let (status, disks) = get("/nodes/pve/disks/list").await;
    assert_eq!(status, StatusCode::OK);
    let sdb = &disks["data"][2];
    assert_eq!(sdb["devpath"], "/dev/sdb");
    assert_eq!(sdb["health"], "FAILED!");
    assert_eq!(sdb["wearout"], "N/A");
    assert_eq!(sdb["osdid"], -1);
    assert!(sdb["osdid-list"].is_null());
    assert_eq!(disks["data"][0]["wearout"], 97);
    let (_, zfs) = get("/nodes/pve/disks/zfs").await;
    assert_eq!(zfs["data"][1]["health"], "DEGRADED");
    assert!(zfs["data"][1]["size"].is_u64());
    let (_, versions) = get("/nodes/pve/apt/versions").await;
    assert_eq!(versions["data"][0]["RunningKernel"], "6.17.4-1-pve");
    let (_, updates) = get("/nodes/pve/apt/update").await;
    assert_eq!(updates["data"].as_array().unwrap().len(), 3);
    let (_, certs) = get("/nodes/pve/certificates/info").await;
    assert_eq!(certs["data"][1]["filename"], "pve-ssl.pem");
    assert!(certs["data"][1]["notafter"].is_u64());
    let (_, resources) = get("/cluster/resources?type=node").await;
    assert_eq!(resources["data"][0]["level"], "");
    let (status, _) = get("/nodes/pve/disks/list?type=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    sim.stop().await;
}

#[tokio::test]
async fn health_endpoints_check_privileges_like_proxmox() {
    let (sim, client) = start_sim(SimOptions::default()).await;
    let node_audit = "node@pve!audit=secret";
    sim.world()
        .add_token(
            node_audit,
            [("/nodes/pve".to_string(), vec!["Sys.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .expect("token");
    let nothing = "none@pve!none=secret";
    sim.world()
        .add_token(nothing, Default::default())
        .expect("token");
    // disks/list: `or` of `/` and the node, and its 403 names no path.
    let (status, _) = get(&sim, &client, node_audit, "/nodes/pve/disks/list").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&sim, &client, nothing, "/nodes/pve/disks/list").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"data": null, "message": "Permission check failed\n"})
    );
    // disks/zfs: Sys.Audit on `/` only.
    let (status, body) = get(&sim, &client, node_audit, "/nodes/pve/disks/zfs").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["message"], "Permission check failed (/, Sys.Audit)\n");
    // apt/update: Sys.Modify on the node; apt/versions: Sys.Audit.
    let (status, body) = get(&sim, &client, node_audit, "/nodes/pve/apt/update").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "Permission check failed (/nodes/pve, Sys.Modify)\n"
    );
    let (status, _) = get(&sim, &client, node_audit, "/nodes/pve/apt/versions").await;
    assert_eq!(status, StatusCode::OK);
    // certificates/info: any token.
    let (status, _) = get(&sim, &client, nothing, "/nodes/pve/certificates/info").await;
    assert_eq!(status, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn a_node_without_zfs_answers_500_and_an_offline_node_595() {
    let (sim, client) = start_sim(SimOptions {
        nodes: Some(3),
        guests: Some(3),
        ..SimOptions::default()
    })
    .await;
    let (status, body) = get(&sim, &client, DEFAULT_TOKEN, "/nodes/pve2/disks/zfs").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["message"], "zfsutils-linux not installed\n");
    let (status, body) = get(&sim, &client, DEFAULT_TOKEN, "/nodes/pve1/disks/zfs").await;
    assert_eq!(
        (status, &body["data"][0]["health"]),
        (StatusCode::OK, &json!("ONLINE"))
    );
    sim.world().set_node_online("pve3", false).expect("node");
    let (status, _) = get(&sim, &client, DEFAULT_TOKEN, "/nodes/pve3/disks/list").await;
    assert_eq!(status.as_u16(), 595);
    // The control API flips a disk and a pool.
    sim.world()
        .patch_disk(
            "pve1",
            "sda",
            node_health::DiskPatch {
                health: Some("FAILED!".into()),
                wearout: None,
            },
        )
        .expect("disk");
    let (_, disks) = get(&sim, &client, DEFAULT_TOKEN, "/nodes/pve1/disks/list").await;
    assert_eq!(disks["data"][1]["health"], "FAILED!");
    assert!(sim
        .world()
        .patch_pool("pve2", "rpool", node_health::PoolPatch::default())
        .is_err());
    sim.stop().await;
}
