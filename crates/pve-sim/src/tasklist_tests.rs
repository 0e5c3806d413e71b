//! `GET /cluster/tasks`, backup jobs and `not-backed-up` over real HTTPS.

use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::jobs;

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
        .add_token(
            "root@pam!gui=secret",
            [(
                "/".to_string(),
                vec!["Sys.Audit".to_string(), "VM.PowerMgmt".to_string()],
            )]
            .into_iter()
            .collect(),
        )
        .unwrap();
    sim.sim.world().set_config(ConfigPatch {
        task_duration_ms: Some(60_000),
        ..ConfigPatch::default()
    });
    let (status, body) = sim
        .call(
            "POST",
            "/nodes/pve/qemu/100/status/stop",
            "root@pam!gui=secret",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let upid = body["data"].as_str().unwrap().to_string();
    let rows = sim.tasks(DEFAULT_TOKEN).await;
    let row = rows
        .iter()
        .find(|r| r["upid"] == upid.as_str())
        .expect("listed");
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
            [(
                "/".to_string(),
                vec!["VM.Audit".to_string(), "VM.PowerMgmt".to_string()],
            )]
            .into_iter()
            .collect(),
        )
        .unwrap();
    let (status, _) = sim
        .call(
            "POST",
            "/nodes/pve/qemu/100/status/stop",
            "bridge@pve!nosys=secret",
        )
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
    assert_eq!(
        sim.tasks(DEFAULT_TOKEN).await.len(),
        before,
        "not broadcast yet"
    );
    sim.sim.stop().await;
}

#[tokio::test]
async fn not_backed_up_lists_guests_in_no_job_and_needs_sys_audit() {
    let sim = Sim2::start().await;
    let (status, body) = sim
        .call("GET", "/cluster/backup-info/not-backed-up", DEFAULT_TOKEN)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        serde_json::json!([{"vmid": 101, "type": "lxc", "name": "mqtt"}])
    );
    let (_, jobs) = sim.call("GET", "/cluster/backup", DEFAULT_TOKEN).await;
    assert_eq!(jobs["data"][0]["type"], "vzdump");
    assert_eq!(jobs["data"][0]["all"], 1);
    assert_eq!(jobs["data"][0]["exclude"], "101");
    assert!(jobs["data"][0]["next-run"].is_u64());
    sim.sim
        .world()
        .add_token(
            "bridge@pve!vm=secret",
            [("/vms".to_string(), vec!["VM.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .unwrap();
    let (status, body) = sim
        .call(
            "GET",
            "/cluster/backup-info/not-backed-up",
            "bridge@pve!vm=secret",
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body.to_string()
            .contains("Permission check failed (/, Sys.Audit)")
            || body.is_null()
    );
    sim.sim.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_runs_as_root_with_one_task_per_node_and_fails_one_guest() {
    let sim = Sim2::start().await;
    let world = sim.sim.world();
    world.put_backup_job(jobs::BackupJob {
        id: "backup-5d7a9f1c-1a2b".into(),
        schedule: "03:00".into(),
        enabled: true,
        all: true,
        vmid: None,
        exclude: None,
        node: None,
        storage: "local".into(),
        mode: "snapshot".into(),
    });
    world.next_task(TaskOverride {
        vmid: Some(101),
        action: Some("backup".into()),
        outcome: OverrideOutcome::Fail,
        error: None,
    });
    let upids = world.run_backup_job("backup-5d7a9f1c-1a2b").unwrap();
    assert_eq!(upids.len(), 1);
    assert!(upids[0].ends_with(":vzdump::root@pam:"), "{}", upids[0]);
    let upid = &upids[0];
    let log = loop {
        let (_, status) = sim
            .call(
                "GET",
                &format!("/nodes/pve/tasks/{upid}/status"),
                DEFAULT_TOKEN,
            )
            .await;
        if status["data"]["status"] == "stopped" {
            assert_eq!(status["data"]["exitstatus"], "job errors");
            let (_, log) = sim
                .call(
                    "GET",
                    &format!("/nodes/pve/tasks/{upid}/log?limit=0"),
                    DEFAULT_TOKEN,
                )
                .await;
            break log["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["t"].as_str().unwrap())
        .collect();
    assert!(
        lines[0].contains("--job-id backup-5d7a9f1c-1a2b"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("--quiet 1"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("INFO: Finished Backup of VM 100 (")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ERROR: Backup of VM 101 failed - ")));
    assert_eq!(lines.last().copied(), Some("TASK ERROR: job errors"));
    sim.sim.stop().await;
}

#[tokio::test]
async fn a_dir_storage_reports_avail_without_its_reserved_blocks() {
    let sim = Sim2::start().await;
    let (status, body) = sim.call("GET", "/nodes/pve/storage", DEFAULT_TOKEN).await;
    assert_eq!(status, 200);
    let rows = body["data"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["storage"] == id).unwrap().clone();
    let local = row("local");
    let (total, used, avail) = (
        local["total"].as_u64().unwrap(),
        local["used"].as_u64().unwrap(),
        local["avail"].as_u64().unwrap(),
    );
    assert_eq!(avail, total - used - total / 20);
    let thin = row("local-lvm");
    assert_eq!(
        thin["avail"].as_u64().unwrap(),
        thin["total"].as_u64().unwrap() - thin["used"].as_u64().unwrap()
    );
    sim.sim.stop().await;
}
