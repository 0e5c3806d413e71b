//! Snapshots over HTTPS: the list, create, rollback and delete with their tasks, locks,
//! errors and privileges (round-2 reference §13).

use super::*;

async fn list(harness: &Harness, path: &str) -> Vec<Value> {
    harness.data(path).await.as_array().expect("rows").clone()
}

fn names(rows: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_seed_world_lists_snapshots_with_current_last() {
    let harness = Harness::start(test_options()).await;
    let rows = list(&harness, "/nodes/pve/qemu/100/snapshot").await;
    assert_eq!(rows.len(), 3);
    let current = rows.last().expect("current");
    assert_eq!(current["name"], "current");
    assert_eq!(current["description"], "You are here!");
    assert_eq!(current["running"], 1);
    assert_eq!(current["parent"], "ha-2026-11");
    assert!(current.get("snaptime").is_none() && current.get("vmstate").is_none());
    let newest = rows
        .iter()
        .find(|r| r["name"] == "ha-2026-11")
        .expect("row");
    assert_eq!(newest["parent"], "before-upgrade");
    assert_eq!(newest["vmstate"], 1);
    assert!(newest["snaptime"].is_u64());
    let ct = list(&harness, "/nodes/pve/lxc/101/snapshot").await;
    assert!(ct.iter().all(|r| r.get("vmstate").is_none()), "{ct:?}");
}

#[tokio::test]
async fn create_rollback_delete_run_as_tasks_that_lock_the_guest() {
    let harness = Harness::start(test_options()).await;
    let upid = harness
        .post_form(
            "/nodes/pve/qemu/100/snapshot",
            &[
                ("snapname", "pre-test"),
                ("description", "x"),
                ("vmstate", "0"),
            ],
        )
        .await;
    assert!(upid.contains(":qmsnapshot:100:"), "{upid}");
    let row = harness.resource("qemu/100").await;
    assert_eq!(row["lock"], "snapshot");
    let rows = list(&harness, "/nodes/pve/qemu/100/snapshot").await;
    let new = rows
        .iter()
        .find(|r| r["name"] == "pre-test")
        .expect("new row");
    assert_eq!(new["snapstate"], "prepare");
    assert_eq!(harness.wait_task("pve", &upid).await["exitstatus"], "OK");
    let rows = list(&harness, "/nodes/pve/qemu/100/snapshot").await;
    assert_eq!(rows.last().unwrap()["parent"], "pre-test");
    assert!(rows.iter().all(|r| r.get("snapstate").is_none()));

    // A duplicate fails inside the task.
    let dup = harness
        .post_form("/nodes/pve/qemu/100/snapshot", &[("snapname", "pre-test")])
        .await;
    assert_eq!(
        harness.wait_task("pve", &dup).await["exitstatus"],
        "snapshot name 'pre-test' already used"
    );

    // Rollback stops the running VM first, then starts it with start=1.
    let upid = harness
        .post_form(
            "/nodes/pve/qemu/100/snapshot/before-upgrade/rollback",
            &[("start", "1")],
        )
        .await;
    assert!(upid.contains(":qmrollback:100:"), "{upid}");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(harness.resource("qemu/100").await["status"], "stopped");
    assert_eq!(harness.wait_task("pve", &upid).await["exitstatus"], "OK");
    assert_eq!(harness.resource("qemu/100").await["status"], "running");
    let rows = list(&harness, "/nodes/pve/qemu/100/snapshot").await;
    assert_eq!(rows.last().unwrap()["parent"], "before-upgrade");

    // Delete re-parents the children.
    let response = harness
        .client
        .delete(harness.url("/nodes/pve/qemu/100/snapshot/before-upgrade"))
        .header("Authorization", format!("PVEAPIToken={DEFAULT_TOKEN}"))
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json");
    let upid = body["data"].as_str().expect("upid").to_string();
    assert!(upid.contains(":qmdelsnapshot:100:"), "{upid}");
    assert_eq!(harness.wait_task("pve", &upid).await["exitstatus"], "OK");
    let rows = list(&harness, "/nodes/pve/qemu/100/snapshot").await;
    assert_eq!(names(&rows), ["current", "ha-2026-11", "pre-test"]);
    let parent = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["parent"].clone();
    assert_eq!(parent("ha-2026-11"), Value::Null, "re-parented: {rows:?}");
    assert_eq!(parent("pre-test"), "ha-2026-11");
    assert_eq!(
        parent("current"),
        Value::Null,
        "current descended from the deleted one"
    );

    // Not found inside the task.
    let gone = harness
        .post_form("/nodes/pve/lxc/101/snapshot/nope/rollback", &[])
        .await;
    assert_eq!(
        harness.wait_task("pve", &gone).await["exitstatus"],
        "snapshot 'nope' does not exist"
    );
}

#[tokio::test]
async fn bad_and_reserved_names_fail_before_any_task() {
    let harness = Harness::start(test_options()).await;
    let response = harness
        .post("/nodes/pve/qemu/100/snapshot")
        .form(&[("snapname", "Bad Name")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["errors"]["snapname"],
        "invalid format - invalid configuration ID 'Bad Name'\n"
    );
    let long = "a".repeat(41);
    let response = harness
        .post("/nodes/pve/qemu/100/snapshot")
        .form(&[("snapname", long.as_str())])
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["errors"]["snapname"],
        "value may only be 40 characters long"
    );
    for (kind, name) in [
        ("qemu/100", "current"),
        ("qemu/100", "pending"),
        ("lxc/101", "vzdump"),
    ] {
        let response = harness
            .post(&format!("/nodes/pve/{kind}/snapshot"))
            .form(&[("snapname", name)])
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{kind} {name}"
        );
        let body: Value = response.json().await.expect("json");
        assert!(body["data"].is_null());
    }
    // lxc has no vmstate.
    let response = harness
        .post("/nodes/pve/lxc/101/snapshot")
        .form(&[("snapname", "ok-name"), ("vmstate", "1")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn snapshot_privileges_have_the_real_403_text() {
    let harness = Harness::start(test_options()).await;
    harness
        .sim
        .world()
        .add_token(
            "bridge@pve!snap=secret",
            [(
                "/vms".to_string(),
                vec!["VM.Audit".to_string(), "VM.Snapshot".to_string()],
            )]
            .into_iter()
            .collect(),
        )
        .expect("token");
    let auth = "PVEAPIToken=bridge@pve!snap=secret";
    let response = harness
        .client
        .post(harness.url("/nodes/pve/qemu/100/snapshot/ha-2026-11/rollback"))
        .header("Authorization", auth)
        .form(&[("start", "1")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["message"],
        "Permission check failed (/vms/100, VM.PowerMgmt)\n"
    );
    harness
        .sim
        .world()
        .add_token(
            "bridge@pve!ro=secret",
            [("/vms".to_string(), vec!["VM.Audit".to_string()])]
                .into_iter()
                .collect(),
        )
        .expect("token");
    let response = harness
        .client
        .post(harness.url("/nodes/pve/qemu/100/snapshot/ha-2026-11/rollback"))
        .header("Authorization", "PVEAPIToken=bridge@pve!ro=secret")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["message"],
        "Permission check failed (/vms/100, VM.Snapshot|VM.Snapshot.Rollback)\n"
    );
}
