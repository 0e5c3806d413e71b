//! `GET /cluster/tasks`, backup jobs and `not-backed-up` over real HTTPS.

use std::time::Duration;

use serde_json::Value;

use super::*;

/// A simulator with live figures and short tasks, and a client that trusts its CA.
struct Sim2 {
    sim: SimHandle,
    client: reqwest::Client,
}

impl Sim2 {
    async fn start() -> Self {
        let sim = start(SimOptions {
            task_duration: Duration::from_millis(50),
            ..SimOptions::default()
        })
        .await
        .expect("simulator starts");
        sim.world().set_config(ConfigPatch {
            stats_interval_ms: Some(0),
            ..ConfigPatch::default()
        });
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().expect("TLS CA").as_bytes())
            .expect("CA parses");
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("client");
        Sim2 { sim, client }
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let url = format!("{}/api2/json{path}", self.sim.base_url());
        let request = match method {
            "POST" => self.client.post(url),
            _ => self.client.get(url),
        };
        let response = request
            .header("Authorization", format!("PVEAPIToken={token}"))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn tasks(&self, token: &str) -> Vec<Value> {
        let (status, body) = self.call("GET", "/cluster/tasks", token).await;
        assert_eq!(status, 200);
        body["data"].as_array().expect("rows").clone()
    }
}

#[tokio::test]
async fn cluster_tasks_split_token_users_and_show_running_tasks_without_status() {
    let sim = Sim2::start().await;
    // A VM start as a GUI user's token would do it.
    sim.sim
        .world()
        .add_token("root@pam!gui=secret", [("/".to_string(), vec!["Sys.Audit".to_string(), "VM.PowerMgmt".to_string()])].into_iter().collect())
        .unwrap();
    sim.sim.world().set_config(ConfigPatch {
        task_duration_ms: Some(60_000),
        ..ConfigPatch::default()
    });
    let (status, body) = sim
        .call("POST", "/nodes/pve/qemu/100/status/stop", "root@pam!gui=secret")
        .await;
    assert_eq!(status, 200, "{body}");
    let upid = body["data"].as_str().unwrap().to_string();
    let rows = sim.tasks(DEFAULT_TOKEN).await;
    let row = rows.iter().find(|r| r["upid"] == upid.as_str()).expect("listed");
    assert_eq!(row["user"], "root@pam");
    assert_eq!(row["tokenid"], "gui");
    assert_eq!(row["type"], "qmstop");
    assert_eq!(row["id"], "100");
    assert!(row["pid"].is_u64());
    assert!(row.get("status").is_none() && row.get("endtime").is_none());
    assert!(row.get("pstart").is_none());
    sim.sim.stop().await;
}

#[tokio::test]
async fn cluster_tasks_keep_25_per_node_and_need_sys_audit_on_root() {
    let sim = Sim2::start().await;
    // VM 100 stopping while stopped: a task that ends OK at once, again and again.
    for _ in 0..30 {
        let (status, _) = sim
            .call("POST", "/nodes/pve/qemu/100/status/stop", DEFAULT_TOKEN)
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = sim.tasks(DEFAULT_TOKEN).await;
    assert_eq!(rows.len(), 25, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["status"], "OK");
    assert!(row["endtime"].as_u64().unwrap() >= row["starttime"].as_u64().unwrap());
    assert!(row.get("pid").is_none());
    // Sys.Audit on /nodes/pve is not enough, and the token's own tasks are not its own
    // once the user is split.
    sim.sim
        .world()
        .add_token(
            "bridge@pve!nosys=secret",
            [("/".to_string(), vec!["VM.Audit".to_string(), "VM.PowerMgmt".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let (status, _) = sim
        .call("POST", "/nodes/pve/qemu/100/status/stop", "bridge@pve!nosys=secret")
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.tasks("bridge@pve!nosys=secret").await.is_empty());
    sim.sim.stop().await;
}

#[tokio::test]
async fn cluster_tasks_show_the_last_broadcast() {
    let sim = Sim2::start().await;
    sim.sim.world().set_config(ConfigPatch {
        stats_interval_ms: Some(3_600_000),
        ..ConfigPatch::default()
    });
    let before = sim.tasks(DEFAULT_TOKEN).await.len();
    let (status, _) = sim
        .call("POST", "/nodes/pve/qemu/100/status/stop", DEFAULT_TOKEN)
        .await;
    assert_eq!(status, 200);
    assert_eq!(sim.tasks(DEFAULT_TOKEN).await.len(), before, "not broadcast yet");
    sim.sim.stop().await;
}
